#!/usr/bin/env python
"""Fit post-hoc class Gaussians (shared covariance) to the box features of the ID training set.

    python tools/fit_mahalanobis.py --config digits_vos_tiny.yaml \\
        --weights output/digits_vos_tiny/model_final.pth

Every ground-truth box of DATASETS.TRAIN (or --dataset) is pooled through the trained box
head; the class means, the shared covariance and the priors are written next to the weights
as ``mahalanobis_stats.pth`` (or --output). With ``MODEL.VOS.MAHALANOBIS_STATS <file>``
every detection gets ``ood_scores_mahalanobis`` (the minimum Mahalanobis distance; larger =
more OOD); ``MODEL.VOS.OOD_SCORE mahalanobis`` makes it the score behind ``is_ood``.

``--add-class NAME=DATASET`` adds a class from the boxes of another dataset alone, without
retraining: the means, the shared covariance and the priors are updated as a refit would.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, check_writable_dir, load_config, run_tool

import os

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vos_det.data.availability import check_dataset_files
from vos_det.engine.checkpoint import check_checkpoint_matches_model, check_weights_file
from vos_det.engine.feature_extraction import build_annotated_test_loader, ground_truth_box_features
from vos_det.errors import UserError


STATISTICS_FILE = "mahalanobis_stats.pth"


def argument_parser():
    parser = ToolParser(description=__doc__)
    parser.add_argument("--weights", required=True, help="trained model (.pth)")
    parser.add_argument("--dataset", action="append", help="ID dataset(s) to fit on (default: DATASETS.TRAIN)")
    parser.add_argument(
        "--add-class", action="append", default=[], metavar="NAME=DATASET",
        help="add a class from all boxes of DATASET (any annotated dataset), without retraining",
    )
    parser.add_argument("--output", help=f"statistics file (default: {STATISTICS_FILE} next to the weights)")
    return parser


def _parse_add_class(spec):
    class_name, _, dataset_name = spec.partition("=")
    if not class_name or not dataset_name:
        raise UserError(f"--add-class expects NAME=DATASET, got {spec!r}")
    return class_name, dataset_name


def main(args):
    check_weights_file(args.weights, "--weights")
    cfg = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts])
    cfg.freeze()
    new_classes = [_parse_add_class(spec) for spec in args.add_class]
    check_dataset_files(list(args.dataset or cfg.DATASETS.TRAIN) + [name for _, name in new_classes])
    output = args.output or os.path.join(os.path.dirname(args.weights), STATISTICS_FILE)
    check_writable_dir(os.path.dirname(os.path.abspath(output)), "folder of the statistics file")
    model = build_model(cfg)
    check_checkpoint_matches_model(args.weights, model)
    DetectionCheckpointer(model).load(args.weights)
    model.eval()
    discriminant = model.roi_heads.box_predictor.mahalanobis

    features, labels = [], []
    for name in args.dataset or cfg.DATASETS.TRAIN:
        dataset_features, dataset_labels = ground_truth_box_features(
            model, build_annotated_test_loader(cfg, name), description=name
        )
        features.append(dataset_features)
        labels.append(dataset_labels)
    discriminant.fit(torch.cat(features), torch.cat(labels), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    print(f"fitted {discriminant.num_classes} class Gaussians on {int(discriminant.counts.sum())} boxes")
    for class_name, dataset_name in new_classes:
        new_features, _ = ground_truth_box_features(
            model, build_annotated_test_loader(cfg, dataset_name), description=dataset_name
        )
        index = discriminant.add_class(new_features)
        print(f"added class {class_name!r} as index {index} from {len(new_features)} boxes of {dataset_name}")

    discriminant.save_statistics(output)
    print(f"saved {output}; use it with MODEL.VOS.MAHALANOBIS_STATS {output}")
    return output


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    run()
