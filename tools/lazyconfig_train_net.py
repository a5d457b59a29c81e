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
import copy
import logging

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import print_csv_format
from detectron2.utils import comm

from vos_det.config import resolve_config_file
from vos_det.engine.launch import create_ddp_model, launch
from vos_det.evaluation.protocol import evaluate_ood_protocol
from vos_det.lazyconfig import build_checkpointer, ood_evaluation_config

logger = logging.getLogger("vos_det")


def load_lazy_config(config_file, overrides):
    """The LazyConfig of ``config_file`` (a path or a name under configs/) with overrides."""
    cfg = LazyConfig.load(resolve_config_file(config_file))
    return LazyConfig.apply_overrides(cfg, overrides)


def do_test(cfg, model):
    """The OOD protocol of the yacs tools on ``cfg.ood_evaluation``, with ``dataloader.test``
    re-targeted at each ID, OOD and calibration set. Returns the results dict."""
    ood_cfg = ood_evaluation_config(cfg.ood_evaluation, cfg.train.init_checkpoint)

    def build_test_loader(_, dataset_name):
        loader = copy.deepcopy(cfg.dataloader.test)
        loader.dataset.names = dataset_name
        return instantiate(loader)

    results, _ = evaluate_ood_protocol(
        ood_cfg, model, output_dir=cfg.train.output_dir, build_test_loader=build_test_loader
    )
    if comm.is_main_process():
        for name in ood_cfg.DATASETS.TEST:
            if results.get(name):
                logger.info("Detection results on %s:", name)
                print_csv_format(results[name])
    return results


def do_train(args, cfg):
    """detectron2's LazyConfig training loop, with CPU-aware DDP and vos_det's checkpoints
    (atomic, with the random state for --resume)."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = build_checkpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def main(args):
    # default_setup copies args.config_file into the output folder, so resolve it in place.
    args.config_file = resolve_config_file(args.config_file)
    cfg = load_lazy_config(args.config_file, args.overrides)
    check_writable_dir(cfg.train.output_dir, "train.output_dir")
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        build_checkpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(args, cfg)


def launch_main(args):
    """``main`` on the processes the command line asks for (device: ``train.device``)."""
    device = load_lazy_config(args.config_file, args.overrides).train.device
    launch(
        main,
        args.num_gpus,
        device=device,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


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
