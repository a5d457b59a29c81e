#!/usr/bin/env python
"""Diagnose the uncertainty head of a trained VOS model (detector or image classifier).

    python tools/vos_diagnostics.py --config digits_vos_r18.yaml \\
        MODEL.WEIGHTS output/digits_vos_r18/model_final.pth \\
        --id-dataset digits_det_val --ood-dataset digits_det_ood_val

Writes to ``--output-dir`` (default ``OUTPUT_DIR/vos_diagnostics``):

* ``energy_histogram.png``: the weighted energy (eq. 6) of the ID boxes, the OOD boxes, the
  queued ID training features and the virtual outliers drawn from the checkpoint's queues
  with the model's own synthesis rule (``--synthesis-steps`` steps);
* ``random_weights_control.png``: the AUROC (ID vs OOD boxes) of the weighted energy over
  ``--num-draws`` random energy weights w ~ U[0, 1)^K (VOS's initialisation) against the
  trained weights;
* ``vos_diagnostics.json``: the numbers (mean energies, the fraction of each set the
  uncertainty classifier calls ID, the AUROCs, the fraction of random draws beaten, the
  outliers' and ID features' Mahalanobis radius over sqrt(D), the energy weights), and the
  energy and radius of outliers drawn by other rules (OUTLIER_TAIL, OUTLIER_RADIUS_SCALE,
  npos) from the same queues with the same classifier.

Detections are kept when their class score is >= ``--score-threshold`` (default
``TEST.OOD.SCORE_THRESHOLD``): a fixed threshold, not the optimal-F1 protocol of ood_eval.
Use validation splits (as above): this is a diagnostic for choosing methods.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, check_writable_dir, load_config, run_tool

import os

from vos_det.data.availability import check_dataset_files
from vos_det.engine.trained_model import check_weights_file
from vos_det.engine.checkpoint_diagnostics import diagnose_checkpoint, format_diagnostics
from vos_det.errors import ConfigError

DEFAULT_OUTPUT_SUBDIR = "vos_diagnostics"


def argument_parser():
    parser = ToolParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id-dataset", default=None, help="ID set (default: the first of DATASETS.TEST)")
    parser.add_argument("--ood-dataset", default=None, help="OOD set (default: the first of DATASETS.OOD_TEST)")
    parser.add_argument("--num-draws", type=int, default=200, help="random energy-weight draws (default 200)")
    parser.add_argument("--synthesis-steps", type=int, default=200,
                        help="synthesis steps whose outliers are drawn (default 200)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="class-score threshold of the detections (default TEST.OOD.SCORE_THRESHOLD)")
    parser.add_argument("--output-dir", default=None, help=f"default OUTPUT_DIR/{DEFAULT_OUTPUT_SUBDIR}")
    return parser


def main(args):
    cfg = load_config(args.config_file, args.opts)
    id_dataset = args.id_dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    ood_dataset = args.ood_dataset or (cfg.DATASETS.OOD_TEST[0] if cfg.DATASETS.OOD_TEST else "")
    if not id_dataset or not ood_dataset:
        raise ConfigError("need an ID and an OOD set: --id-dataset NAME --ood-dataset NAME")
    if args.num_draws < 2 or args.synthesis_steps < 1:
        raise ConfigError(f"--num-draws must be >= 2 and --synthesis-steps >= 1, got {args.num_draws}, "
                          f"{args.synthesis_steps}")
    if not cfg.MODEL.VOS.ENABLED:
        raise ConfigError("MODEL.VOS.ENABLED is False: the diagnostics need a model trained with VOS")
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("no weights: pass MODEL.WEIGHTS path/to/model_final.pth")
    output_dir = args.output_dir or os.path.join(cfg.OUTPUT_DIR, DEFAULT_OUTPUT_SUBDIR)
    check_weights_file(cfg.MODEL.WEIGHTS)
    check_dataset_files([id_dataset, ood_dataset])
    check_writable_dir(output_dir)

    report = diagnose_checkpoint(
        cfg, id_dataset=id_dataset, ood_dataset=ood_dataset, output_dir=output_dir, num_draws=args.num_draws,
        synthesis_steps=args.synthesis_steps, score_threshold=args.score_threshold,
    )
    print(format_diagnostics(report))
    print(f"written to {output_dir}")
    return report


if __name__ == "__main__":
    run_tool(main, argument_parser())
