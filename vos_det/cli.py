"""The command line shared by vos_det's tools.

Every tool takes argparse options and detectron2-style ``KEY VALUE`` config overrides, in any
order: options may come before, between or after the overrides, and after ``--``. Overrides
are checked against the config before anything runs (an unknown key is named with the
closest existing keys; a wrong type names the key, the value and what is allowed), and a
user's mistake ends the tool with one ``error: ...`` line instead of a traceback
(``--debug`` or ``VOS_DET_DEBUG=1`` shows it).

A tool::

    from vos_det.cli import ToolParser, load_config, run_tool

    def argument_parser():
        parser = ToolParser(description=__doc__)      # adds --config, --debug, --verbose, opts
        parser.add_argument("--weights", required=True)
        return parser

    def main(args):
        cfg = load_config(args.config_file, args.opts)  # checked, validated, not frozen
        ...

    if __name__ == "__main__":
        run_tool(main, argument_parser())
"""
import argparse
import difflib
import logging
import os
import re
import sys

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .config import add_vos_config, resolve_config_file
from .config_validation import validate_config
from .errors import ConfigError, UserError
from .utils.log_noise import filter_known_warnings, strip_ansi

__all__ = [
    "ConfigError",
    "DEBUG_ENV",
    "ToolParser",
    "UserError",
    "add_launch_arguments",
    "check_writable_dir",
    "load_config",
    "merge_overrides",
    "run_tool",
    "setup_tool_logging",
    "split_overrides",
]

# Environment variable that makes run_tool show the traceback of a user's mistake.
DEBUG_ENV = "VOS_DET_DEBUG"

# A config key on the command line: upper-case names joined by dots (MODEL.VOS.SELECT, SEED).
_OVERRIDE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")


def split_overrides(argv):
    """Separate argparse options from ``KEY VALUE`` config overrides, wherever they are.

    A token that looks like a config key (upper-case names joined by dots, e.g.
    ``MODEL.VOS.SELECT`` or ``SEED``) and is not an existing file starts an override and
    takes the next token as its value, whatever it looks like (``-1.0`` included). ``--`` is
    dropped: options after it are still options.

    Args:
        argv (list[str]): the command line without the program name.

    Returns:
        tuple[list[str], list[str]]: (options for argparse, overrides KEY VALUE ...).

    Raises:
        ConfigError: the last key has no value.
    """
    options, overrides = [], []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            continue
        if _OVERRIDE_KEY.match(token) and not os.path.exists(token):
            value = next(tokens, None)
            if value is None:
                raise ConfigError(f"config override {token} has no value (overrides are KEY VALUE pairs)")
            overrides += [token, value]
        else:
            options.append(token)
    return options, overrides


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose options may appear anywhere among ``KEY VALUE`` overrides.

    ``parse_args`` returns the options as usual and the overrides as ``args.opts`` (a flat
    list ``[KEY, VALUE, ...]``). Every parser gets ``--debug`` (tracebacks for user errors)
    and ``--verbose`` (more output, e.g. the model); with ``config=True`` also
    ``--config-file`` / ``--config`` (``args.config_file``; a bare name is looked up under
    configs/, see :func:`vos_det.config.resolve_config_file`).

    Args:
        config (bool): add the required ``--config-file`` option.
        overrides (bool): accept ``KEY VALUE`` overrides (else they are an error).
        **kwargs: for :class:`argparse.ArgumentParser`.
    """

    def __init__(self, *args, config=True, overrides=True, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if overrides:
            kwargs.setdefault(
                "epilog",
                "Config overrides: KEY VALUE pairs (e.g. SOLVER.MAX_ITER 300), before, between or "
                "after the options. Errors are one line; --debug or VOS_DET_DEBUG=1 shows tracebacks.",
            )
        super().__init__(*args, **kwargs)
        self._accepts_overrides = overrides
        if config:
            self.add_argument(
                "--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                help="config file: a path or a name under configs/ (e.g. digits_vos_tiny.yaml)",
            )
        self.add_argument("--debug", action="store_true", help=f"show tracebacks of errors (or {DEBUG_ENV}=1)")
        self.add_argument("--verbose", action="store_true", help="more output (the model, ...)")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, with the ``KEY VALUE`` overrides taken out first into ``opts``."""
        argv = sys.argv[1:] if args is None else list(args)
        try:
            options, overrides = split_overrides(argv)
        except ConfigError as e:
            self.error(str(e))
        if overrides and not self._accepts_overrides:
            self.error(f"takes no KEY VALUE config overrides, got: {' '.join(overrides)}")
        namespace, extras = super().parse_known_args(options, namespace)
        namespace.opts = overrides
        return namespace, extras


def add_launch_arguments(parser):
    """Add detectron2's ``launch`` options: --num-gpus, --num-machines, --machine-rank, --dist-url."""
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine (default 1)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine")
    parser.add_argument(
        "--dist-url", default="auto", help="URL of the process group, reachable from every machine (tcp://HOST:PORT)"
    )
    return parser


def _flat_keys(node, prefix=""):
    """Every leaf key of a CfgNode, as dotted paths."""
    keys = []
    for name, value in node.items():
        path = f"{prefix}{name}"
        keys += _flat_keys(value, path + ".") if isinstance(value, CfgNode) else [path]
    return keys


def unknown_key_message(cfg, key):
    """The message for a key the config does not have, with the closest existing keys."""
    keys = _flat_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.85) or difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close][:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else " (no similar key)"
    return f"unknown config key {key}{hint}"


def _type_name(value):
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string",
            list: "a list, e.g. [1, 2]", tuple: "a tuple, e.g. (1, 2)"}.get(type(value), type(value).__name__)


def _coerce(key, raw, value, original):
    """``value`` (decoded from ``raw``) converted to the type of ``original``, or ConfigError."""
    if original is None or value is None or type(value) is type(original):
        return value
    if isinstance(original, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(original)(value)
    if type(original) is float and type(value) is int:
        return float(value)
    if isinstance(original, (list, tuple)) and isinstance(value, str) and all(isinstance(v, str) for v in original):
        return type(original)([value])  # DATASETS.TEST name: one name for a list of names
    hint = ""
    if isinstance(original, (list, tuple)) and not raw.strip().startswith(("(", "[")):
        hint = f" (write a list as \"[{raw}]\")"
    raise ConfigError(
        f"config key {key}: value {raw!r} is not allowed, it must be {_type_name(original)} "
        f"(the config has {original!r}){hint}"
    )


def merge_overrides(cfg, overrides):
    """Merge ``KEY VALUE`` overrides into ``cfg`` after checking each key and value type.

    Args:
        cfg (CfgNode): an unfrozen config holding every key of the tool.
        overrides (list[str]): ``[KEY, VALUE, ...]`` as on the command line.

    Raises:
        ConfigError: an odd list, an unknown key (with the closest existing keys), a key
            naming a group of keys, or a value of the wrong type (with what is allowed).
    """
    if len(overrides) % 2:
        raise ConfigError(f"config override {overrides[-1]} has no value (overrides are KEY VALUE pairs)")
    for key, raw in zip(overrides[0::2], overrides[1::2]):
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name) if isinstance(node, CfgNode) else None
        if not isinstance(node, CfgNode) or leaf not in node:
            raise ConfigError(unknown_key_message(cfg, key))
        original = node[leaf]
        if isinstance(original, CfgNode):
            raise ConfigError(
                f"config key {key} is a group of keys, set one of them: "
                + ", ".join(_flat_keys(original, key + "."))
            )
        node[leaf] = _coerce(key, raw, CfgNode._decode_cfg_value(raw), original)


def load_config(config_file, overrides=(), *, training=False):
    """The config of a tool: defaults + vos_det keys + the file + checked overrides, validated.

    Args:
        config_file (str): a path or a name under configs/.
        overrides (list[str]): ``[KEY, VALUE, ...]``.
        training (bool): also warn about settings that only matter for training
            (synthesis that cannot start within SOLVER.MAX_ITER).

    Returns:
        CfgNode: the config, not frozen (the tool may set more keys, then freeze it).

    Raises:
        ConfigError: an unknown key or a value of the wrong type (file or overrides), or a
            value out of its range (:func:`vos_det.config_validation.validate_config`).
        FileNotFoundError: no such config file.
    """
    path = resolve_config_file(config_file)
    cfg = get_cfg()
    add_vos_config(cfg)
    try:
        cfg.merge_from_file(path)
    except KeyError as e:
        match = re.search(r"Non-existent config key: ([A-Za-z0-9_.]+)", str(e))
        message = unknown_key_message(cfg, match.group(1)) if match else str(e)
        raise ConfigError(f"{path}: {message}") from e
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e
    merge_overrides(cfg, list(overrides))
    validate_config(cfg, training=training)
    return cfg


def check_writable_dir(path, what="output folder"):
    """Create ``path`` if needed and check that a file can be written in it, before any work.

    Raises:
        UserError: naming the folder and the reason (not writable, a file, no space...).
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".vos_det_write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{what} {path} is not writable: {e.strerror or e}") from e
    return path


def setup_tool_logging(cfg, args, *, name="vos_det"):
    """detectron2's ``default_setup`` without the console noise: loggers to the console and
    ``OUTPUT_DIR/log.txt``, while the environment, the command line and the full config go
    to the log file only, without colour codes; ``config.yaml`` is written; seeds are set.

    Args:
        cfg (CfgNode): the frozen config (``OUTPUT_DIR`` is created).
        args (argparse.Namespace): the parsed command line (logged).
        name (str): the tool's logger (also set up, beside ``detectron2`` and ``vos_det``).
    """
    filter_known_warnings()  # again: launch's worker processes start fresh
    if not getattr(args, "verbose", False):
        _quiet_model_printout()
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    for logger_name in dict.fromkeys(("fvcore", "detectron2", "vos_det", name)):
        setup_logger(output_dir, distributed_rank=rank, name=logger_name, abbrev_name="d2" if logger_name == "detectron2" else None)
    file_log = setup_logger(output_dir, distributed_rank=rank, name=_FILE_ONLY_LOGGER, configure_stdout=False)
    file_log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    file_log.info("Environment info:\n%s", strip_ansi(collect_env_info()))
    file_log.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        config_file = resolve_config_file(args.config_file)
        with open(config_file) as f:
            file_log.info("Contents of %s:\n%s", config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        file_log.info("Running with full config:\n%s", cfg.dump())
        with open(path, "w") as f:
            f.write(cfg.dump())
        logging.getLogger(name).info("Full config saved to %s (environment and config in %s)", path, os.path.join(output_dir, "log.txt"))
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


# Logger whose records go to OUTPUT_DIR/log.txt only (environment, full config, the model).
_FILE_ONLY_LOGGER = "vos_det.log_file"


class _ModelToLogFile(logging.Filter):
    """Sends detectron2's "Model:\n..." record to the log file only (the console gets it with --verbose)."""

    def filter(self, record):
        if str(record.msg).startswith("Model:\n"):
            logging.getLogger(_FILE_ONLY_LOGGER).info(record.getMessage())
            return False
        return True


def _quiet_model_printout():
    logging.getLogger(_FILE_ONLY_LOGGER).propagate = False  # never to the console
    log = logging.getLogger("detectron2.engine.defaults")
    if not any(isinstance(f, _ModelToLogFile) for f in log.filters):
        log.addFilter(_ModelToLogFile())


# Exceptions that carry a message meant for the user: shown as one line by run_tool.
_USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, KeyError)


def _message(error):
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
        return f"{error} ({error.filename})"
    return str(error)


def run_tool(main, parser, argv=None):
    """Parse the command line, quiet known warnings, run ``main(args)``; a user's mistake
    exits with ``error: <message>`` and status 1, no traceback (unless ``--debug`` or
    ``VOS_DET_DEBUG=1``).

    Args:
        main (callable): ``main(args)``; its return value is returned.
        parser (ToolParser): the tool's parser.
        argv (list[str], optional): the command line without the program name (default
            ``sys.argv[1:]``).
    """
    filter_known_warnings()
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        _quiet_model_printout()
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return main(args)
    except _USER_ERRORS as e:
        if debug:
            raise
        hint = "" if isinstance(e, ConfigError) else f" (--debug or {DEBUG_ENV}=1 for the traceback)"
        sys.exit(f"error: {_message(e)}{hint}")
    except OSError as e:  # a full disk or a broken filesystem, named with its path
        if debug:
            raise
        sys.exit(f"error: {_message(e)} (--debug or {DEBUG_ENV}=1 for the traceback)")
