#!/usr/bin/env python
"""Train or evaluate a VOS detector with detectron2.

    python tools/train_net.py --config vos_rcnn.yaml --num-gpus 8
    python tools/train_net.py --config digits_vos_tiny.yaml
    python tools/train_net.py --config digits_vos_classifier.yaml      # image classification
    python tools/train_net.py --config vos_rcnn.yaml --eval-only MODEL.WEIGHTS model_final.pth

``--config`` is an alias of ``--config-file``; a bare file name is looked up under configs/.
The trainer follows MODEL.META_ARCHITECTURE: ClassificationTrainer for VOSImageClassifier,
else the detection Trainer.
"""
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vos_det import add_vos_config
from vos_det.classification import ClassificationTrainer, is_image_classifier
from vos_det.config import resolve_config_file
from vos_det.engine import Trainer
from vos_det.engine.checkpoint import check_checkpoint_matches_model


def setup(args):
    """Build the frozen config from the file and the command-line overrides."""
    # default_setup copies args.config_file into OUTPUT_DIR, so resolve it in place.
    args.config_file = resolve_config_file(args.config_file)
    cfg = get_cfg()
    add_vos_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vos_det")
    return cfg


def trainer_class(cfg):
    """The trainer of the model named by MODEL.META_ARCHITECTURE (classifier or detector)."""
    return ClassificationTrainer if is_image_classifier(cfg) else Trainer


def main(args):
    cfg = setup(args)
    trainer_cls = trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        check_checkpoint_matches_model(cfg.MODEL.WEIGHTS, model)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--config", dest="config_file", metavar="FILE", help="alias of --config-file"
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
