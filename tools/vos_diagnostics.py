#!/usr/bin/env python
"""Diagnose the uncertainty head of a trained VOS model (detector or image classifier).

    python tools/vos_diagnostics.py --config digits_vos_tiny.yaml \\
        MODEL.WEIGHTS output/digits_vos_tiny/model_final.pth \\
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

import json
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

from vos_det.classification import is_image_classifier
from vos_det.classification.trainer import ClassificationTrainer
from vos_det.data.availability import check_dataset_files
from vos_det.engine import Trainer
from vos_det.engine.checkpoint import check_checkpoint_matches_model, check_weights_file
from vos_det.errors import ConfigError
from vos_det.evaluation.uncertainty_diagnostics import (
    classification_logits,
    detection_logits,
    plot_energy_histograms,
    plot_random_weight_control,
    synthesis_rule_energies,
    uncertainty_report,
    virtual_outlier_logits,
)
from vos_det.modeling.ood_scores.energy import weighted_energy

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

    classifier = is_image_classifier(cfg)
    trainer = ClassificationTrainer if classifier else Trainer
    model = trainer.build_model(cfg)
    check_checkpoint_matches_model(cfg.MODEL.WEIGHTS, model)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    predictor = model.predictor if classifier else model.roi_heads.box_predictor
    threshold = cfg.TEST.OOD.SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold

    def logits_of(name):
        loader = trainer.build_test_loader(cfg, name)
        return classification_logits(model, loader) if classifier else detection_logits(model, loader, threshold)

    unit = "images" if classifier else "boxes"
    id_name, ood_name = f"ID {unit} ({id_dataset})", f"OOD {unit} ({ood_dataset})"
    outlier_logits, queue_logits, radii = virtual_outlier_logits(predictor, args.synthesis_steps)
    id_logits, ood_logits = logits_of(id_dataset), logits_of(ood_dataset)
    for name, values in ((id_dataset, id_logits), (ood_dataset, ood_logits)):
        if not len(values):
            raise ConfigError(f"no detection of {name} has a class score >= {threshold}: lower --score-threshold")
    logits = {
        id_name: id_logits,
        ood_name: ood_logits,
        "queued ID training features": queue_logits,
        "virtual outliers": outlier_logits,
    }
    report = uncertainty_report(predictor, logits, id_set=id_name, ood_set=ood_name, num_draws=args.num_draws)
    report.update(
        weights=cfg.MODEL.WEIGHTS, id_dataset=id_dataset, ood_dataset=ood_dataset,
        selection="all images" if classifier else f"detections with class score >= {threshold}",
        outlier_radius_ratio=float(radii[0]), id_queue_radius_ratio=float(radii[1]),
        synthesis_rules=synthesis_rule_energies(predictor),
    )
    with torch.no_grad():
        weights = predictor.energy_class_weights().detach().double().cpu()
        energies = {name: weighted_energy(values.double(), weights).numpy() for name, values in logits.items()}
    plot_energy_histograms(energies, os.path.join(output_dir, "energy_histogram.png"),
                           title=f"{os.path.basename(cfg.MODEL.WEIGHTS)}: weighted energies")
    plot_random_weight_control(report["random_aurocs"], report["auroc_trained_weights"],
                               os.path.join(output_dir, "random_weights_control.png"),
                               title=f"{id_dataset} vs {ood_dataset}")
    with open(os.path.join(output_dir, "vos_diagnostics.json"), "w") as f:
        json.dump(report, f, indent=2)

    for name, values in report["sets"].items():
        print(f"{name:45s} mean energy {values['weighted_energy']['mean']:8.3f}   "
              f"called ID {100 * values['fraction_called_id']:5.1f}%   (n={values['weighted_energy']['num']})")
    random = report["auroc_random_weights"]
    print(f"AUROC trained w {report['auroc_trained_weights']:.2f}; random w {random['mean']:.2f} +- {random['std']:.2f} "
          f"({random['min']:.2f}-{random['max']:.2f}, {random['num_draws']} draws); trained beats "
          f"{100 * report['fraction_random_beaten']:.1f}% of them")
    print(f"Mahalanobis radius / sqrt(D): outliers {report['outlier_radius_ratio']:.3f}, "
          f"queued ID features {report['id_queue_radius_ratio']:.3f}")
    print("Outlier rules on the same queues and classifier (weighted energy; ID features first):")
    for name, row in report["synthesis_rules"].items():
        print(f"  {name:30s} E {row['energy_mean']:8.3f} +- {row['energy_std']:6.3f}   above ID median "
              f"{100 * row['fraction_above_id_median']:5.1f}%   radius / sqrt(D) {row['radius_ratio']:.2f}")
    print(f"written to {output_dir}")
    return report


if __name__ == "__main__":
    run_tool(main, argument_parser())
