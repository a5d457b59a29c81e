#!/usr/bin/env python
"""Evaluate a trained VOS detector: ID detection quality and per-box OOD detection.

    python tools/ood_eval.py --config digits_vos_r18.yaml \\
        MODEL.WEIGHTS output/digits_vos_r18/model_final.pth --calibrate digits_det_val

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
from vos_det.cli import ToolParser, add_launch_arguments, load_config, run_tool, setup_tool_logging

import os
import sys

from detectron2.utils import comm

from vos_det.data import CLI_SPEC_FORMAT
from vos_det.engine import Trainer, load_trained_model
from vos_det.engine.ood_evaluation import DEFAULT_OUTPUT_SUBDIR, ood_eval_config
from vos_det.engine.launch import launch_from_args
from vos_det.evaluation import format_ood_report


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
    return ood_eval_config(
        load_config(args.config_file, args.opts, freeze=False),
        ood_datasets=args.ood_dataset,
        calibrate=args.calibrate,
        output_dir=args.output_dir,
    )


def main(args):
    """Build the model, load MODEL.WEIGHTS, run the protocol; returns (results, report)."""
    cfg = setup(args)
    setup_tool_logging(cfg, args, name="vos_det.ood_eval")
    results, report = Trainer.evaluate_ood_of(cfg, load_trained_model(cfg), log_report=False)
    if comm.is_main_process():
        print(format_ood_report(report), flush=True)
        print(f"Report written to {os.path.join(cfg.OUTPUT_DIR, 'ood_results.json')}", flush=True)
    return results, report


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(lambda args: launch_from_args(main, args), argument_parser(), argv)


if __name__ == "__main__":
    run(sys.argv[1:])
