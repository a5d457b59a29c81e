"""The back half of every OOD evaluation, shared by boxes (detection) and images (classification).

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
   text (:func:`vos_det.evaluation.report.format_ood_report`), written by the main process.
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from detectron2.utils import comm

from ..metrics.ood_metrics import ood_metrics
from .plots import plot_comparisons
from .records import numbers_only
from .report import format_ood_report, write_json

__all__ = ["OOD_RESULTS_FILE", "PLOTS_DIR", "Comparison", "ScoredSet", "fpr95_convention", "summarize_ood_evaluation"]

logger = logging.getLogger(__name__)

# Written in the output folder by summarize_ood_evaluation.
OOD_RESULTS_FILE = "ood_results.json"
PLOTS_DIR = "ood_plots"
_FPR_METHOD_TEXT = {
    "first_at_least": "read at the first ROC point keeping >= 95% of ID {unit}",
    "official_closest": "read at the ROC point whose ID recall is closest to 95% (official VOS code)",
}


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
