#!/usr/bin/env python
"""Train or evaluate a VOS detector with detectron2.

    python tools/train_net.py --config VOC-Detection/vos_rcnn.yaml --num-gpus 8
    python tools/train_net.py --config digits_vos_r18.yaml
    python tools/train_net.py --config digits_vos_classifier.yaml      # image classification
    python tools/train_net.py --config VOC-Detection/vos_rcnn.yaml --eval-only MODEL.WEIGHTS output/voc_vos_rcnn/model_final.pth

``--config`` is an alias of ``--config-file``; a bare file name is looked up under configs/.
Options and ``KEY VALUE`` overrides may come in any order. The trainer follows
MODEL.META_ARCHITECTURE: ClassificationTrainer for VOSImageClassifier, else the detection
Trainer.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, add_launch_arguments, check_writable_dir, load_config, run_tool, setup_tool_logging

import os

from vos_det.classification import is_image_classifier, register_image_folders_from_config
from vos_det.config import resolve_config_file
from vos_det.data.availability import check_dataset_files, load_datasets_now
from vos_det.engine import load_trained_model, trainer_for
from vos_det.engine.checkpoint import SaveCalibratedFinalModel
from vos_det.engine.trained_model import check_weights_file
from vos_det.engine.launch import launch_from_args


def setup(args):
    """The frozen config from the file and the checked overrides; inputs checked, logs set up."""
    # Resolved in place: the log and the worker processes name the file itself.
    args.config_file = resolve_config_file(args.config_file)
    cfg = load_config(args.config_file, args.opts, training=not args.eval_only)
    check_inputs(cfg, args)
    check_writable_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    setup_tool_logging(cfg, args, name="vos_det")
    return cfg


def check_inputs(cfg, args):
    """Weights, dataset files and the OOD jsons, checked before the model is built."""
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if args.eval_only and not cfg.MODEL.WEIGHTS:
        raise FileNotFoundError("--eval-only needs weights: MODEL.WEIGHTS path/to/model_final.pth")
    if not resuming:
        check_weights_file(cfg.MODEL.WEIGHTS)
    if is_image_classifier(cfg):
        register_image_folders_from_config(cfg)
    names = list(cfg.DATASETS.TEST)
    if not args.eval_only:
        names += list(cfg.DATASETS.TRAIN)
    check_dataset_files(names)
    # The OOD and calibration sets are read now: a broken json fails before hours of training.
    load_datasets_now(list(cfg.DATASETS.OOD_TEST) + [cfg.TEST.OOD.CALIBRATION_DATASET])


def weights_to_evaluate(cfg, resume: bool) -> str:
    """MODEL.WEIGHTS, or with --resume the last checkpoint of OUTPUT_DIR when there is one (the
    file detectron2's ``resume_or_load`` would load)."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if not (resume and os.path.isfile(last)):
        return cfg.MODEL.WEIGHTS
    with open(last) as f:
        return os.path.join(cfg.OUTPUT_DIR, f.read().strip())


def main(args):
    cfg = setup(args)
    trainer_cls = trainer_for(cfg)
    if args.eval_only:
        return trainer_cls.test(cfg, load_trained_model(cfg, weights_to_evaluate(cfg, args.resume)))
    trainer = trainer_cls(cfg)
    # After the final evaluation: model_final.pth gets the threshold it calibrated, if any.
    trainer.register_hooks([SaveCalibratedFinalModel()])
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = ToolParser(description=__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS, no training")
    return add_launch_arguments(parser)


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    # One process per GPU, or CPU processes (gloo) with MODEL.DEVICE cpu: vos_det.engine.launch.
    return run_tool(lambda args: launch_from_args(main, args), argument_parser(), argv)


if __name__ == "__main__":
    run()
