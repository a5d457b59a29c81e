"""Exceptions for mistakes in what the user gave: tools report them as one line, no traceback."""

__all__ = ["ConfigError", "TrainingDivergedError", "UserError"]


class UserError(Exception):
    """A mistake in what the user gave (argument, config key or value, file, folder):
    :func:`vos_det.cli.run_tool` reports it as ``error: <message>``, without traceback."""


class ConfigError(UserError, ValueError):
    """A config key or value that does not exist or is not allowed; the message names the key,
    the value and what is allowed."""


class TrainingDivergedError(UserError):
    """Training produced a non-finite loss or prediction; the message names the iteration,
    what went non-finite, the last checkpoint (kept) and the settings to change."""
