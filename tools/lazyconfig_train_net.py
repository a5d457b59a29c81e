#!/usr/bin/env python
"""Train or evaluate a VOS detector written as a detectron2 LazyConfig (a Python config).

    python tools/lazyconfig_train_net.py --config digits_vos_tiny.py
    python tools/lazyconfig_train_net.py --config vos_rcnn.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config digits_vos_tiny.py --eval-only \\
        train.init_checkpoint=output/digits_vos_tiny_lazy/model_final.pth

Overrides are detectron2's ``path.key=value`` pairs after the options (``train.max_iter=300``).
The config holds ``model``, ``dataloader.train`` / ``dataloader.test``, ``optimizer``,
``lr_multiplier``, ``train`` (detectron2's common/train.py keys) and ``ood_evaluation``
(the ID and OOD sets and TEST.OOD keys in lower case, see
:func:`vos_det.lazyconfig.ood_evaluation_config`). Evaluation is the yacs tools' OOD
protocol: ID detection metrics, then FPR95 / AUROC / AUPR of every OOD score, written to
``train.output_dir/ood_results.json``. Several processes as tools/train_net.py: GPUs (NCCL)
or, with ``train.device=cpu`` or without CUDA, CPU processes (gloo).
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, add_launch_arguments, check_writable_dir, run_tool

import argparse

from detectron2.engine import default_setup

from vos_det.config import resolve_config_file
from vos_det.engine.launch import launch_from_args
from vos_det.lazyconfig import evaluate_lazy_checkpoint, load_lazy_config, train_lazy_config


def main(args):
    # default_setup copies args.config_file into the output folder, so resolve it in place.
    args.config_file = resolve_config_file(args.config_file)
    cfg = load_lazy_config(args.config_file, args.overrides)
    check_writable_dir(cfg.train.output_dir, "train.output_dir")
    default_setup(cfg, args)
    if args.eval_only:
        return evaluate_lazy_checkpoint(cfg)
    return train_lazy_config(cfg, resume=args.resume)


def launch_main(args):
    """``main`` on the processes the command line asks for (device: ``train.device``)."""
    launch_from_args(main, args, device=load_lazy_config(args.config_file, args.overrides).train.device)


def argument_parser():
    parser = ToolParser(description=__doc__, overrides=False)
    parser.add_argument("--resume", action="store_true", help="continue from train.output_dir/last_checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate train.init_checkpoint, no training")
    add_launch_arguments(parser)
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
        help="LazyConfig overrides, e.g. train.max_iter=300 (after the options)",
    )
    return parser


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(launch_main, argument_parser(), argv)


if __name__ == "__main__":
    run()
