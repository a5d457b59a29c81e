"""Diagnose the uncertainty head of a trained checkpoint (what ``tools/vos_diagnostics.py`` runs).

    cfg = load_config("digits_vos_r18.yaml", ["MODEL.WEIGHTS", "model_final.pth"])
    report = diagnose_checkpoint(cfg, id_dataset="digits_det_val", ood_dataset="digits_det_ood_val",
                                 output_dir="out")
    print(format_diagnostics(report))
"""
import json
import os

import torch

from ..modeling.vos.uncertainty_report import (
    classification_logits,
    detection_logits,
    plot_energy_histograms,
    plot_random_weight_control,
    synthesis_rule_energies,
    uncertainty_report,
    virtual_outlier_logits,
)
from ..errors import ConfigError
from ..modeling.ood_scores.energy import weighted_energy
from .trained_model import load_trained_model
from .trainer_registry import trainer_for

__all__ = ["DIAGNOSTICS_FILE", "diagnose_checkpoint", "format_diagnostics"]

# Written in the output folder by diagnose_checkpoint, beside energy_histogram.png and
# random_weights_control.png.
DIAGNOSTICS_FILE = "vos_diagnostics.json"


def diagnose_checkpoint(cfg, *, id_dataset, ood_dataset, output_dir, num_draws=200, synthesis_steps=200,
                        score_threshold=None):
    """Energies of ID / OOD samples and virtual outliers, and the random-energy-weights control.

    Args:
        cfg (CfgNode): a VOS model's config with MODEL.WEIGHTS (checked by the caller).
        id_dataset, ood_dataset (str): registered ID and OOD sets (validation splits: this
            is a diagnostic for choosing methods).
        output_dir (str): where the JSON report and the two plots are written.
        num_draws (int): random energy-weight draws w ~ U[0, 1)^K.
        synthesis_steps (int): synthesis steps whose outliers are drawn from the queues.
        score_threshold (float, optional): detections are kept when their class score
            reaches it (default TEST.OOD.SCORE_THRESHOLD); an image classifier keeps every image.

    Returns:
        dict: the report written to ``DIAGNOSTICS_FILE`` (see
        :func:`vos_det.modeling.vos.uncertainty_report.uncertainty_report`, plus the
        datasets, the selection, the Mahalanobis radius ratios and the synthesis rules' energies).

    Raises:
        ConfigError: a set has no detection at the threshold.
    """
    trainer = trainer_for(cfg)
    model = load_trained_model(cfg)
    # An image classifier (whole image as the box) has no ROI heads: its predictor is its own.
    classifier = not hasattr(model, "roi_heads")
    predictor = model.predictor if classifier else model.roi_heads.box_predictor
    threshold = cfg.TEST.OOD.SCORE_THRESHOLD if score_threshold is None else score_threshold

    def logits_of(name):
        loader = trainer.build_test_loader(cfg, name)
        return classification_logits(model, loader) if classifier else detection_logits(model, loader, threshold)

    unit = "images" if classifier else "boxes"
    id_name, ood_name = f"ID {unit} ({id_dataset})", f"OOD {unit} ({ood_dataset})"
    outlier_logits, queue_logits, radii = virtual_outlier_logits(predictor, synthesis_steps)
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
    report = uncertainty_report(predictor, logits, id_set=id_name, ood_set=ood_name, num_draws=num_draws)
    report.update(
        weights=cfg.MODEL.WEIGHTS, id_dataset=id_dataset, ood_dataset=ood_dataset,
        selection="all images" if classifier else f"detections with class score >= {threshold}",
        outlier_radius_ratio=float(radii[0]), id_queue_radius_ratio=float(radii[1]),
        synthesis_rules=synthesis_rule_energies(predictor),
    )
    with torch.no_grad():
        weights = predictor.energy_class_weights().detach().double().cpu()
        energies = {name: weighted_energy(values.double(), weights).numpy() for name, values in logits.items()}
    os.makedirs(output_dir, exist_ok=True)
    plot_energy_histograms(energies, os.path.join(output_dir, "energy_histogram.png"),
                           title=f"{os.path.basename(cfg.MODEL.WEIGHTS)}: weighted energies")
    plot_random_weight_control(report["random_aurocs"], report["auroc_trained_weights"],
                               os.path.join(output_dir, "random_weights_control.png"),
                               title=f"{id_dataset} vs {ood_dataset}")
    with open(os.path.join(output_dir, DIAGNOSTICS_FILE), "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_diagnostics(report):
    """The text summary of a :func:`diagnose_checkpoint` report."""
    lines = [
        f"{name:45s} mean energy {values['weighted_energy']['mean']:8.3f}   "
        f"called ID {100 * values['fraction_called_id']:5.1f}%   (n={values['weighted_energy']['num']})"
        for name, values in report["sets"].items()
    ]
    random = report["auroc_random_weights"]
    lines.append(
        f"AUROC trained w {report['auroc_trained_weights']:.2f}; random w {random['mean']:.2f} +- {random['std']:.2f} "
        f"({random['min']:.2f}-{random['max']:.2f}, {random['num_draws']} draws); trained beats "
        f"{100 * report['fraction_random_beaten']:.1f}% of them"
    )
    lines.append(
        f"Mahalanobis radius / sqrt(D): outliers {report['outlier_radius_ratio']:.3f}, "
        f"queued ID features {report['id_queue_radius_ratio']:.3f}"
    )
    lines.append("Outlier rules on the same queues and classifier (weighted energy; ID features first):")
    lines += [
        f"  {name:30s} E {row['energy_mean']:8.3f} +- {row['energy_std']:6.3f}   above ID median "
        f"{100 * row['fraction_above_id_median']:5.1f}%   radius / sqrt(D) {row['radius_ratio']:.2f}"
        for name, row in report["synthesis_rules"].items()
    ]
    return "\n".join(lines)
