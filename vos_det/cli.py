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
        cfg = load_config(args.config_file, args.opts)  # checked, validated, frozen
        ...

    if __name__ == "__main__":
        run_tool(main, argument_parser())
"""
import argparse
import logging
import os
import re
import sys

import torch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .config import load_config, merge_overrides, resolve_config_file
from .errors import ConfigError, UserError
from .utils.file_io import check_writable_dir
from .utils.log_noise import filter_known_warnings, strip_ansi

__all__ = [
    "ConfigError",
    "DEBUG_ENV",
    "ToolParser",
    "UserError",
    "add_fitting_arguments",
    "add_launch_arguments",
    "check_writable_dir",
    "load_config",
    "merge_overrides",
    "parse_add_class",
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


def add_fitting_arguments(parser, *, add_class_help, output_help):
    """Add the options of the tools that fit post-hoc statistics to a trained detector:
    --weights, --dataset (repeatable), --add-class NAME=DATASET (repeatable), --output.

    Args:
        parser (ToolParser): the tool's parser.
        add_class_help (str): what --add-class adds to.
        output_help (str): what --output is, with its default.
    """
    parser.add_argument("--weights", required=True, help="trained model (.pth)")
    parser.add_argument("--dataset", action="append", help="ID dataset(s) to fit on (default: DATASETS.TRAIN)")
    parser.add_argument("--add-class", action="append", default=[], metavar="NAME=DATASET", help=add_class_help)
    parser.add_argument("--output", help=output_help)
    return parser


def parse_add_class(spec):
    """An ``--add-class NAME=DATASET`` value as (name, dataset).

    Raises:
        UserError: no name or no dataset.
    """
    class_name, _, dataset_name = spec.partition("=")
    if not class_name or not dataset_name:
        raise UserError(f"--add-class expects NAME=DATASET, got {spec!r}")
    return class_name, dataset_name


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
