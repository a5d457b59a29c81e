#!/usr/bin/env python
"""Fit the post-hoc OOD scores of a trained detector on the boxes of its ID training set.

    python tools/fit_ood_scores.py --config digits_vos_r18.yaml \\
        --weights output/digits_vos_r18/model_final.pth \\
        --val-id digits_det_val --val-ood digits_det_ood_val

Every ground-truth box of DATASETS.TRAIN (or --dataset) is pooled through the trained
detector, and what the scores of vos_det/modeling/ood_scores/ need is fitted: the k-NN memory
bank, ReAct's clipping percentile, ViM's principal subspace, the multi-layer class Gaussians,
and SAFE as released (an MLP on the residual shortcuts' features of the boxes the detector
predicts on the training images, clean vs after one FGSM step; skipped on a backbone without
shortcuts unless --scores names it). The states are written next to the
weights as ``post_hoc_scores.pth`` (or --output), a file ``torch.load(weights_only=True)``
reads. With ``MODEL.OOD.POST_HOC.STATE <file>`` the evaluation records ``ood_scores_<name>``
of each for every detection (larger = more OOD), and ``MODEL.OOD.SCORE <name>`` makes one
the score behind ``is_ood``, which every inference computes.

k of the k-NN score and SAFE's FGSM step are chosen on --val-id vs --val-ood boxes (lowest
FPR95) when both are given, else MODEL.OOD.POST_HOC.KNN.K or the paper's 50 and
MODEL.OOD.POST_HOC.SAFE.FGSM_EPSILON (8). The fused score (a logit score and k-NN or the
multi-layer Mahalanobis, scaled on the detections of --val-id and combined by max, sum or a
logistic regression against VOS virtual outliers) is fitted only with both: its parts,
scaling and rule are the candidate of MODEL.OOD.POST_HOC.FUSED with the lowest FPR95 of the
--val-id against the --val-ood detections (boxes selected as TEST.OOD selects test boxes,
the threshold found on --val-id), recorded in the state. ``--update --scores fused`` refits
it alone in an existing state file, keeping the other scores. A test split (``test_split``
in its metadata, e.g. digits_det_test or digits_det_ood) is refused there unless
--allow-test-split, which the state records. The state also records a hash of the weights:
used with other weights, it is refused. ``--add-class NAME=DATASET`` adds a class to the
multi-layer Gaussians from the boxes of another dataset alone, without retraining.
(tools/fit_mahalanobis.py still fits the penultimate-layer Mahalanobis score.)
"""
from vos_det.cli import ToolParser, add_fitting_arguments, load_config, parse_add_class, run_tool
from vos_det.engine.post_hoc_fitting import fit_post_hoc_scores
from vos_det.modeling.ood_scores import POST_HOC_SCORES, POST_HOC_STATE_FILE


def argument_parser():
    parser = ToolParser(description=__doc__)
    add_fitting_arguments(
        parser,
        add_class_help="add a class to mahalanobis_multilayer from all boxes of DATASET, without retraining",
        output_help=f"state file (default: {POST_HOC_STATE_FILE} next to the weights)",
    )
    parser.add_argument(
        "--val-id", help="ID validation dataset for choosing k of k-NN, SAFE's eps and the fused score (e.g. digits_det_val)"
    )
    parser.add_argument(
        "--val-ood",
        help="OOD validation dataset for choosing k of k-NN, SAFE's eps and the fused score (e.g. digits_det_ood_val)",
    )
    parser.add_argument(
        "--allow-test-split", action="store_true",
        help="accept a test split as --val-id / --val-ood (refused otherwise; recorded in the state)",
    )
    parser.add_argument(
        "--scores", nargs="+", choices=POST_HOC_SCORES, help="scores to fit (default: all that need fitting)"
    )
    parser.add_argument(
        "--update", action="store_true",
        help="refit only --scores in the existing state file (--output or the default), keeping the others",
    )
    return parser


def main(args):
    if bool(args.val_id) != bool(args.val_ood):
        raise ValueError(
            "--val-id and --val-ood go together (k of k-NN, SAFE's eps and the fused score are chosen on both)"
        )
    output = fit_post_hoc_scores(
        load_config(args.config_file, args.opts),
        args.weights,
        output=args.output,
        datasets=args.dataset,
        val_id=args.val_id,
        val_ood=args.val_ood,
        scores=args.scores,
        add_classes=[parse_add_class(spec) for spec in args.add_class],
        allow_test_split=args.allow_test_split,
        update=args.update,
    )
    print(f"saved {output}; use it with MODEL.OOD.POST_HOC.STATE {output}")
    return output


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    run()
