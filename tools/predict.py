#!/usr/bin/env python
"""Run a VOS detector on images and write detections with their OOD verdicts.

    python tools/predict.py --config digits_vos_r18.yaml \\
        --weights output/digits_vos_r18/model_final.pth \\
        --input datasets/digits_det/ood/images --output output/predictions --draw

``--input`` takes image files, folders and glob patterns (quote them). Options and ``KEY
VALUE`` config overrides may come in any order (an upper-case token such as
``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` starts an override, also after ``--input``). The output
folder is checked to be writable before any image runs; it gets ``predictions.json``
(COCO-results style, plus id_score, ood_score and is_ood per box; larger ood_score = more
OOD; ``category_id`` is the training set's own category id when its metadata has one (COCO
json sets), else the 0-based class index, which is always in ``class_index``) and, with
``--draw``, one PNG per image: ID boxes solid green with class and score, OOD boxes dashed red
with "OOD (class?) score". Unreadable files are reported, listed in the JSON under "errors",
and skipped.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, run_tool

import logging
import os

from vos_det.engine.predictor import PREDICTIONS_FILE, predict_images


def argument_parser():
    parser = ToolParser(description=__doc__)
    parser.add_argument("--weights", required=True, help="model checkpoint (.pth)")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--draw", action="store_true", help="also write one PNG per image with the boxes drawn")
    parser.add_argument(
        "--min-score", type=float, default=0.5, help="keep detections with class score >= this (default 0.5)"
    )
    parser.add_argument(
        "--ood-threshold",
        type=float,
        help="flag boxes with ood_score above this, instead of the checkpoint's calibrated threshold",
    )
    return parser


def main(args):
    report = predict_images(
        args.config_file,
        args.weights,
        args.input,
        args.output,
        draw=args.draw,
        min_score=args.min_score,
        ood_threshold=args.ood_threshold,
        opts=args.opts,
    )
    num_ood = sum(d["is_ood"] for d in report["detections"])
    print(
        f"{len(report['images'])} images, {len(report['detections'])} detections ({num_ood} OOD), "
        f"{len(report['errors'])} unreadable -> {os.path.join(args.output, PREDICTIONS_FILE)}"
    )
    return report


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run()
