#!/usr/bin/env python
"""Evaluate a trained VOS detector: ID detection quality and per-box OOD detection.

    python tools/ood_eval.py --config digits_vos_tiny.yaml \\
        MODEL.WEIGHTS output/digits_vos_tiny/model_final.pth --calibrate digits_det_val

    python tools/ood_eval.py --config VOC-Detection/vos_rcnn.yaml MODEL.WEIGHTS output/voc_vos_rcnn/model_final.pth \\
        --ood-dataset coco_ood_val --ood-dataset my_ood=/data/ood.json:/data/ood_images

The model runs once over every ID test set (``DATASETS.TEST``), every OOD set
(``--ood-dataset``, or ``DATASETS.OOD_TEST`` when none is given) and the calibration set. It
prints the ID detection metrics (COCO-style AP / AP50 / AP75, VOC AP), the box-selection rule
and its score threshold (``TEST.OOD.BOX_SELECTION``: optimal F1 on the ID test set by
default), and a table of FPR95 / AUROC / AUPR-In / AUPR-Out for every OOD score (ID is the
positive class of FPR95; larger OOD score = more OOD). The output folder (``--output-dir``,
default ``OUTPUT_DIR/ood_eval``) gets ``ood_results.json``, ``ood_plots/`` (ROC curves and
ID-vs-OOD histograms, PNG) and, with ``--calibrate``, ``model_calibrated.pth`` (the model
with the OOD threshold that keeps 95% of the ID validation boxes) and ``ood_threshold.json``.
Options and ``KEY VALUE`` overrides may come in any order. Every dataset's files, the OOD
jsons, the weights and the output folder are checked before any inference.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, add_launch_arguments, check_writable_dir, load_config, run_tool, setup_tool_logging

import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import launch
from detectron2.utils import comm

from vos_det.data import CLI_SPEC_FORMAT, check_class_names, register_from_cli
from vos_det.data.availability import check_dataset_files, load_datasets_now
from vos_det.engine import Trainer
from vos_det.engine.checkpoint import check_checkpoint_matches_model, check_weights_file
from vos_det.errors import ConfigError
from vos_det.evaluation import evaluate_ood_protocol, format_ood_report

DEFAULT_OUTPUT_SUBDIR = "ood_eval"


def argument_parser():
    parser = ToolParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ood-dataset", action="append", default=[], metavar="SPEC",
        help=f"an OOD test set: a registered name or {CLI_SPEC_FORMAT} (COCO json); repeat for "
        "several. Replaces DATASETS.OOD_TEST when given.",
    )
    parser.add_argument(
        "--calibrate", nargs="?", const="", default=None, metavar="DATASET",
        help="calibrate the OOD threshold on this ID validation set (default: "
        "TEST.OOD.CALIBRATION_DATASET) and save model_calibrated.pth in the output folder",
    )
    parser.add_argument(
        "--output-dir", default=None, metavar="DIR",
        help=f"output folder (default: OUTPUT_DIR/{DEFAULT_OUTPUT_SUBDIR})",
    )
    return add_launch_arguments(parser)


def setup(args):
    """The frozen config, the OOD sets, the calibration set and the output folder, all
    checked before any inference (datasets' files and jsons, weights, writable output)."""
    cfg = load_config(args.config_file, args.opts)
    id_dataset = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    ood_datasets = [
        spec if "=" not in spec else register_from_cli(spec, id_dataset=id_dataset)
        for spec in args.ood_dataset
    ]
    if ood_datasets:
        cfg.DATASETS.OOD_TEST = tuple(ood_datasets)
    calibration_dataset = ""
    if args.calibrate is not None:
        calibration_dataset = args.calibrate or cfg.TEST.OOD.CALIBRATION_DATASET
        if not calibration_dataset:
            raise ConfigError(
                "--calibrate needs an ID validation set: --calibrate DATASET or "
                "TEST.OOD.CALIBRATION_DATASET DATASET"
            )
    cfg.TEST.OOD.CALIBRATION_DATASET = calibration_dataset
    cfg.OUTPUT_DIR = args.output_dir or os.path.join(cfg.OUTPUT_DIR, DEFAULT_OUTPUT_SUBDIR)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("no weights to evaluate: pass MODEL.WEIGHTS path/to/model_final.pth")
    check_weights_file(cfg.MODEL.WEIGHTS)
    check_dataset_files(cfg.DATASETS.TEST)
    # The OOD and calibration sets are loaded now: a broken json fails before the ID sets run.
    load_datasets_now(list(cfg.DATASETS.OOD_TEST) + [calibration_dataset])
    if id_dataset is not None:
        class_names = MetadataCatalog.get(id_dataset).get("thing_classes", None)
        if class_names is not None:
            for name in list(cfg.DATASETS.TEST) + ([calibration_dataset] if calibration_dataset else []):
                check_class_names(name, class_names)
    check_writable_dir(cfg.OUTPUT_DIR, "output folder")
    return cfg


def main(args):
    """Build the model, load MODEL.WEIGHTS, run the protocol; returns (results, report)."""
    cfg = setup(args)
    setup_tool_logging(cfg, args, name="vos_det.ood_eval")
    model = Trainer.build_model(cfg)
    check_checkpoint_matches_model(cfg.MODEL.WEIGHTS, model)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    results, report = evaluate_ood_protocol(
        cfg,
        model,
        output_dir=cfg.OUTPUT_DIR,
        build_test_loader=Trainer.build_test_loader,
        build_evaluator=lambda name: Trainer.build_evaluator(cfg, name),
        log_report=False,
    )
    if comm.is_main_process():
        print(format_ood_report(report), flush=True)
        print(f"Report written to {os.path.join(cfg.OUTPUT_DIR, 'ood_results.json')}", flush=True)
    return results, report


def _launch(args):
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(_launch, argument_parser(), argv)


if __name__ == "__main__":
    run(sys.argv[1:])
