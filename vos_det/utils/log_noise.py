"""Known third-party warnings that say nothing to a vos_det user, filtered at tool start.

Each entry is one exact message of torch / detectron2 / runpy (deprecations inside code we do
not control); every other warning still shows. ``python -W default`` does not bring them
back, ``VOS_DET_DEBUG=1`` set before the import does.
"""
import logging
import os
import re
import warnings

__all__ = ["KNOWN_LOG_MESSAGES", "KNOWN_WARNINGS", "filter_known_warnings", "strip_ansi"]

# (category, message regex): Python warnings filtered out.
KNOWN_WARNINGS = (
    # fvcore / detectron2 script a few functions at import time (printed twice per process).
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (FutureWarning, r"`torch\.jit\.script_method` is deprecated"),
    # tools/export_model.py traces, saves and loads TorchScript (deprecated by torch).
    (FutureWarning, r"`torch\.jit\.(trace|trace_method|save|load)` is deprecated"),
    # detectron2's anchor generator calls torch.meshgrid without `indexing`.
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"),
    # `python -m vos_det.data.digits_det`: the package imports the module before runpy runs it.
    (RuntimeWarning, r"'vos_det\.[\w.]+' found in sys\.modules after import of package"),
)

# (logger name, message prefix): log records of third-party loggers dropped.
KNOWN_LOG_MESSAGES = (
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true for both fx.symbolic_trace"),
    ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME"),
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record):
        return not str(record.msg).startswith(self.prefixes)


def filter_known_warnings():
    """Install the filters of :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_MESSAGES`.

    Idempotent; does nothing when ``VOS_DET_DEBUG`` is set to anything but "" or "0".
    """
    if os.environ.get("VOS_DET_DEBUG", "") not in ("", "0"):
        return
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in KNOWN_LOG_MESSAGES:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and prefix in f.prefixes for f in log.filters):
            log.addFilter(_DropMessages([prefix]))


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour codes (for log files)."""
    return _ANSI_ESCAPE.sub("", text)
