#!/usr/bin/env python
"""Fit post-hoc class Gaussians (shared covariance) to the box features of the ID training set.

    python tools/fit_mahalanobis.py --config digits_vos_r18.yaml \\
        --weights output/digits_vos_r18/model_final.pth

Every ground-truth box of DATASETS.TRAIN (or --dataset) is pooled through the trained box
head; the class means, the shared covariance and the priors are written next to the weights
as ``mahalanobis_stats.pth`` (or --output). With ``MODEL.OOD.MAHALANOBIS_STATS <file>``
the evaluation records ``ood_scores_mahalanobis`` of every detection (the minimum Mahalanobis
distance; larger = more OOD); ``MODEL.OOD.SCORE mahalanobis`` makes it the score behind
``is_ood``, which every inference computes.

``--add-class NAME=DATASET`` adds a class from the boxes of another dataset alone, without
retraining: the means, the shared covariance and the priors are updated as a refit would.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, add_fitting_arguments, load_config, parse_add_class, run_tool

from detectron2.utils.logger import setup_logger

from vos_det.engine.post_hoc_fitting import MAHALANOBIS_STATISTICS_FILE, fit_mahalanobis


def argument_parser():
    parser = ToolParser(description=__doc__)
    return add_fitting_arguments(
        parser,
        add_class_help="add a class from all boxes of DATASET (any annotated dataset), without retraining",
        output_help=f"statistics file (default: {MAHALANOBIS_STATISTICS_FILE} next to the weights)",
    )


def main(args):
    setup_logger(name="vos_det")  # the fit's summary lines
    add_classes = [parse_add_class(spec) for spec in args.add_class]
    cfg = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts])
    output = fit_mahalanobis(cfg, args.weights, output=args.output, datasets=args.dataset, add_classes=add_classes)
    print(f"saved {output}; use it with MODEL.OOD.MAHALANOBIS_STATS {output}")
    return output


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    run()
