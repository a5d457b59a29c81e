"""The report of every OOD evaluation: the back half shared by boxes (detection) and images
(classification), and the text and JSON of its results.

A task-specific front (:func:`vos_det.evaluation.protocol.evaluate_ood`,
``ClassificationTrainer.test``) hands it, per ID set, one :class:`Comparison` of
:class:`ScoredSet` records: detection keeps, for each ID set, the boxes its box selection
keeps on that set and on every OOD set; classification keeps every image (the whole image is
the one box). From them:

1. FPR95 / AUROC / AUPR-In / AUPR-Out / OOD-positive FPR95 of every OOD score, ID set against
   each OOD set; NaN scores are left out with a warning, and a pair without any score left is
   listed under ``skipped``;
2. with a calibration, the share of each set's kept samples its threshold accepts as ID or
   flags as OOD, and the share each score flags at its own threshold (the false-alarm rate
   of every score on an ID set such as a covariate-shifted one);
3. the ROC curves and score histograms (PNG), the JSON report (``ood_results.json``) and its
   text (:func:`format_ood_report`; the ID detection and classification tables beside it),
   written by the main process.
"""
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
from tabulate import tabulate

from detectron2.utils import comm

from ..metrics.ood_metrics import ood_metrics
from .plots import plot_comparisons
from .records import numbers_only

__all__ = [
    "OOD_RESULTS_FILE",
    "PLOTS_DIR",
    "Comparison",
    "ScoredSet",
    "format_classification_table",
    "format_detection_table",
    "format_ood_report",
    "format_ood_table",
    "fpr95_convention",
    "summarize_ood_evaluation",
    "write_json",
]

logger = logging.getLogger(__name__)

# Written in the output folder by summarize_ood_evaluation.
OOD_RESULTS_FILE = "ood_results.json"
PLOTS_DIR = "ood_plots"
_FPR_METHOD_TEXT = {
    "first_at_least": "read at the first ROC point keeping >= 95% of ID {unit}",
    "official_closest": "read at the ROC point whose ID recall is closest to 95% (official VOS code)",
}
# How the report names the rule that kept the samples of an ID set, by unit.
_SELECTION_NAMES = {"boxes": "box selection", "images": "sample selection"}
# (metrics key, column header) of the OOD table; FPR95 and AUROC/AUPR are percentages.
_COLUMNS = (
    ("FPR95", "FPR95"),
    ("AUROC", "AUROC"),
    ("AUPR-In", "AUPR-In"),
    ("AUPR-Out", "AUPR-Out"),
    ("FPR95-OOD-positive", "FPR95 (OOD pos.)"),
    ("num_id", "#ID"),
    ("num_ood", "#OOD"),
)


@dataclass
class ScoredSet:
    """The samples of one dataset that enter the OOD metrics, with their OOD scores.

    Attributes:
        ood_score_table (dict[str, np.ndarray]): all OOD scores of the kept samples: score
            name -> (N,) float64 OOD scores (larger = more OOD); a NaN is left out of the
            metrics with a warning.
        num_kept (int): N, the kept samples.
        num_candidates (int): samples before the selection (every detection; for images,
            the images).
        num_images (int): images of the dataset.
    """

    ood_score_table: Dict[str, np.ndarray]
    num_kept: int
    num_candidates: int
    num_images: int


@dataclass
class Comparison:
    """One ID set against every OOD set, their samples kept by the same rule.

    Attributes:
        id_name (str): the ID set.
        sets (dict[str, ScoredSet]): the ID set first, then the OOD sets (a set listed
            both as ID and OOD appears once).
        ood_names (list[str]): the OOD sets, in order; each is paired with the ID set.
        selection (str): one sentence saying how the samples were kept (plots' subtitle).
    """

    id_name: str
    sets: Dict[str, ScoredSet]
    ood_names: List[str]
    selection: str

    @property
    def others(self) -> List[str]:
        """The sets other than the ID set itself (those whose samples may be flagged OOD)."""
        return [name for name in self.sets if name != self.id_name]


def fpr95_convention(unit: str, fpr_method: str) -> str:
    """The report's sentence stating both FPR95 conventions, for samples named ``unit``.

    Args:
        unit: "boxes" or "images".
        fpr_method: one of ``FPR_METHODS``, how the ID-positive FPR95 is read.
    """
    return (
        f"FPR95: ID is the positive class, the percentage of OOD {unit} accepted as ID at the "
        f"threshold that keeps 95% of ID {unit}; larger OOD score = more OOD "
        f"({_FPR_METHOD_TEXT[fpr_method].format(unit=unit)}). FPR95 (OOD pos.): OOD is the "
        f"positive class (OpenOOD convention), the percentage of ID {unit} flagged OOD at the "
        f"threshold that catches 95% of OOD {unit}."
    )


def _pair_metrics(id_set, ood_set, fpr_method, unit, skipped, pair):
    """OOD metrics per score of one pair; records why a score could not be evaluated."""
    metrics = {}
    for name in sorted(set(id_set.ood_score_table) & set(ood_set.ood_score_table)):
        id_all, ood_all = id_set.ood_score_table[name], ood_set.ood_score_table[name]
        id_values, ood_values = id_all[~np.isnan(id_all)], ood_all[~np.isnan(ood_all)]
        dropped = (id_all.size - id_values.size) + (ood_all.size - ood_values.size)
        if dropped:
            logger.warning("%s, score %s: %d NaN score(s) left out", pair, name, dropped)
        if not id_values.size or not ood_values.size:
            skipped.append(f"{pair}, score {name}: {id_values.size} ID and {ood_values.size} OOD {unit} kept")
            continue
        metrics[name] = numbers_only(ood_metrics(id_values, ood_values, fpr_method=fpr_method))
    return metrics


def _flagged_shares(scored_set, thresholds):
    """score -> the share of a set's kept samples whose score is > that score's threshold
    (a score the set has no sample of is left out)."""
    shares = {}
    for score, threshold in thresholds.items():
        values = scored_set.ood_score_table.get(score, ())
        if len(values):
            shares[score] = float(np.mean(values > threshold))
    return shares


def _calibration_summary(calibration, comparisons, unit):
    """The calibration; the share of each set's kept samples its threshold accepts / flags;
    and the share each score flags at its own threshold (``flagged_by_score``)."""
    summary = calibration.to_dict()
    summary["description"] = calibration.describe(unit)
    score, threshold = calibration.ood_score, calibration.threshold
    summary["id_kept"] = {
        c.id_name: float(np.mean(c.sets[c.id_name].ood_score_table[score] <= threshold))
        for c in comparisons
        if len(c.sets[c.id_name].ood_score_table.get(score, ()))
    }
    summary["ood_flagged"], summary["flagged_by_score"] = {}, {}
    for c in comparisons:
        flagged = summary["ood_flagged"][c.id_name] = {}
        by_score = summary["flagged_by_score"][c.id_name] = {}
        for name in c.others:
            shares = _flagged_shares(c.sets[name], {score: threshold})
            if score in shares:
                flagged[name] = shares[score]
            by_score[name] = _flagged_shares(c.sets[name], calibration.score_thresholds)
    return summary


def _plotted_threshold(ood_rule, calibration):
    """(score name, threshold) marked on the histograms: the new calibration or the stored one."""
    if calibration is not None:
        return calibration.ood_score, calibration.threshold
    if ood_rule is None or not np.isfinite(ood_rule.calibrated_threshold):
        return None
    return ood_rule.ood_score, ood_rule.calibrated_threshold


def summarize_ood_evaluation(
    comparisons, *, unit, fpr_method, ood_rule, output_dir, results, results_tail=None, report_head=None,
    selection_report=None, calibration=None, draw_plots=False, log_report=True,
):
    """Pair metrics, calibration summary, plots, JSON and text of an OOD evaluation.

    Args:
        comparisons (list[Comparison]): one per ID set.
        unit (str): what a sample is, in the report's words: "boxes" or "images".
        fpr_method (str): one of ``FPR_METHODS``.
        ood_rule (OODRule or None): the evaluated model's ``is_ood`` rule (its stored
            calibrated threshold is marked on the histograms when nothing was calibrated now).
        output_dir (str): where ``ood_results.json`` and ``ood_plots/`` go.
        results (dict): the task's figures per set (detection AP, accuracy), first in
            ``results``; ``"ood"`` follows, then ``results_tail`` and ``"calibration"``.
        results_tail (dict, optional): more task entries of ``results`` (the box selections).
        report_head (dict, optional): report entries before ``results`` (the protocol).
        selection_report (dict, optional): report entries after the convention saying how
            samples were kept (box selections and box counts; the image rule).
        calibration (Calibration, optional): the OOD threshold calibrated for this evaluation.
        draw_plots (bool): write the ROC and histogram PNGs (main process).
        log_report (bool): log the text report (main process).

    Returns:
        tuple[OrderedDict, dict]: ``results`` (nested dicts of floats, EvalHook-safe) and
        ``report``, everything written to ``ood_results.json``.
    """
    results = OrderedDict(results)
    skipped = []
    if any(c.ood_names for c in comparisons):
        results["ood"] = {
            c.id_name: {
                ood_name: _pair_metrics(
                    c.sets[c.id_name], c.sets[ood_name], fpr_method, unit, skipped, f"ID {c.id_name} vs OOD {ood_name}"
                )
                for ood_name in c.ood_names
            }
            for c in comparisons
        }
    results.update(results_tail or {})
    report = {**(report_head or {}), "results": results, "convention": fpr95_convention(unit, fpr_method)}
    report.update(selection_report or {})
    report["skipped"] = skipped
    if calibration is not None:
        report["calibration"] = _calibration_summary(calibration, comparisons, unit)
        results["calibration"] = {
            "threshold": float(calibration.threshold),
            "kept_percent": 100.0 * calibration.kept_fraction,
        }
    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        if draw_plots and any(c.ood_names for c in comparisons):
            report["plots"] = plot_comparisons(
                os.path.join(output_dir, PLOTS_DIR), comparisons, _plotted_threshold(ood_rule, calibration)
            )
        write_json(report, os.path.join(output_dir, OOD_RESULTS_FILE))
        if log_report:
            logger.info("OOD evaluation:\n%s", format_ood_report(report, unit))
    return results, report


def format_ood_table(ood_results, convention=None):
    """A table with one row per (ID set, OOD set, score).

    Args:
        ood_results (dict): ``{id_set: {ood_set: {score_name: metrics}}}`` where metrics is
            the dict of :func:`vos_det.metrics.ood_metrics.ood_metrics`.
        convention (str, optional): a line stating the FPR95 convention, printed under the
            table.

    Returns:
        str: the table (FPR95 and AUROC/AUPR in percent).
    """
    rows = []
    for id_name, per_ood in ood_results.items():
        for ood_name, per_score in per_ood.items():
            for score_name, metrics in per_score.items():
                values = [
                    int(metrics[key]) if key.startswith("num_") else metrics.get(key, math.nan)
                    for key, _ in _COLUMNS
                ]
                rows.append([id_name, ood_name, score_name] + values)
    headers = ["ID set", "OOD set", "score"] + [header for _, header in _COLUMNS]
    table = tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="pipe")
    return table if convention is None else f"{table}\n{convention}"


def format_detection_table(detection_results):
    """One row per ID set: COCO-style AP / AP50 / AP75 ("bbox") and VOC AP ("voc").

    Args:
        detection_results (dict): ``{id_set: {"bbox": {...}, "voc": {...}}}``.

    Returns:
        str: the table, or "" if there is nothing to show.
    """
    columns = [("bbox", "AP", "AP"), ("bbox", "AP50", "AP50"), ("bbox", "AP75", "AP75")]
    columns += [("voc", "AP", "VOC AP"), ("voc", "AP50", "VOC AP50"), ("voc", "AP75", "VOC AP75")]
    present = [
        c for c in columns if any(c[1] in r.get(c[0], {}) for r in detection_results.values())
    ]
    if not present:
        return ""
    rows = [
        [name] + [r.get(task, {}).get(key, math.nan) for task, key, _ in present]
        for name, r in detection_results.items()
    ]
    headers = ["ID set"] + [
        ("COCO-style " if task == "bbox" and key == "AP" else "") + header
        for task, key, header in present
    ]
    return tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="pipe")


def format_classification_table(results):
    """One row per set: accuracy (ID sets), share of images flagged OOD, number of images.

    Args:
        results (dict): ``{id_set: {"classification": {...}}, "ood_sets": {ood_set: {...}}}``
            (the figures of :class:`vos_det.classification.ClassificationOODEvaluator`).

    Returns:
        str: the table, or "" if there is nothing to show.
    """
    rows = [
        [name, value["classification"].get("accuracy", math.nan),
         value["classification"].get("is_ood_rate", math.nan), int(value["classification"]["num_images"])]
        for name, value in results.items()
        if isinstance(value, dict) and "classification" in value
    ]
    if not rows:
        return ""
    rows += [
        [name, math.nan, metrics.get("is_ood_rate", math.nan), int(metrics["num_images"])]
        for name, metrics in results.get("ood_sets", {}).items()
    ]
    return tabulate(rows, headers=["set", "accuracy", "is_ood", "#images"], floatfmt=".2f", tablefmt="pipe")


def _selection_lines(report):
    """How the samples were kept: each ID set's box selection and counts, or the image rule."""
    lines = []
    if report.get("sample_selection"):
        lines.append(f"Sample selection: {report['sample_selection']}")
    for id_name, selection in report.get("box_selection", {}).items():
        lines.append(f"Box selection for ID set {id_name}: {selection['description']}")
        per_class = [
            f"{name} {info['threshold']:.3f} " + (f"(F1 {info['f1']:.3f})" if "f1" in info else "(no ground truth)")
            if "threshold" in info
            else f"{name}: {info['skipped']}"
            for name, info in selection.get("per_class", {}).items()
        ]
        if per_class:
            lines.append("  per-class optimal-F1 thresholds: " + ", ".join(per_class))
        counts = report.get("boxes", {}).get(id_name, {})
        if counts:
            lines.append(
                "  boxes kept: "
                + "; ".join(
                    f"{name} {c['selected']} of {c['detections']} detections ({c['images']} images)"
                    for name, c in counts.items()
                )
            )
    return lines


def _calibration_lines(calibration, unit):
    """The calibration and the share of each set's kept samples it accepts / flags."""
    lines = ["", "Calibration: " + calibration["description"]]
    for name, fraction in calibration.get("id_kept", {}).items():
        lines.append(f"  {100 * fraction:.2f}% of the kept {unit} of ID set {name} are accepted as ID (is_ood False)")
    selection = _SELECTION_NAMES.get(unit, "selection")
    for id_name, per_ood in calibration.get("ood_flagged", {}).items():
        for ood_name, fraction in per_ood.items():
            lines.append(
                f"  {100 * fraction:.2f}% of the kept {unit} of {ood_name} are flagged OOD "
                f"(is_ood True; {selection} of {id_name})"
            )
    lines += [f"  written: {path}" for path in calibration.get("files", {}).values()]
    return lines


def format_ood_report(report, unit="boxes"):
    """The text of an OOD evaluation report (see :func:`summarize_ood_evaluation`).

    Args:
        report (dict): with ``results`` and ``convention`` and optionally ``protocol``,
            ``box_selection``, ``boxes``, ``sample_selection``, ``calibration``, ``skipped``,
            ``plots``, ``pictures``; each section is printed when its entries are present.
        unit (str): what a sample is: "boxes" (detection) or "images" (classification).

    Returns:
        str
    """
    results = report["results"]
    lines = []
    if report.get("protocol"):
        lines += [f"OOD protocol: {report['protocol']['description']}", ""]
    detection = format_detection_table({k: v for k, v in results.items() if k in report.get("box_selection", {})})
    if detection:
        lines += [
            "ID detection quality (COCO-style AP = mean over IoU .50:.95; VOC AP from the VOC "
            "devkit rule):",
            detection,
            "",
        ]
    classification = format_classification_table(results)
    if classification:
        lines += ["Classification (percent; is_ood: images flagged OOD at the model's threshold):", classification, ""]
    lines += _selection_lines(report)
    if results.get("ood"):
        protocol = f", protocol {report['protocol']['name']}" if report.get("protocol") else ""
        lines += ["", f"OOD detection over the kept {unit} (percent{protocol}):"]
        lines.append(format_ood_table(results["ood"], "Convention: " + report["convention"]))
    lines += [f"Not computed: {skipped}" for skipped in report.get("skipped", [])]
    if report.get("calibration"):
        lines += _calibration_lines(report["calibration"], unit)
    plots = report.get("plots", []) + report.get("pictures", [])
    if plots:
        lines += ["", "Plots:"] + [f"  {path}" for path in plots]
    return "\n".join(lines)


def _json_safe(value):
    """Replace NaN / inf floats (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(data, path):
    """Write ``data`` as strict JSON (non-finite floats become null)."""
    with open(path, "w") as f:
        json.dump(_json_safe(data), f, indent=2)
