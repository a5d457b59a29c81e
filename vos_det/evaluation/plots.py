"""PNG figures of an OOD evaluation: ROC curves and ID-vs-OOD score histograms.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
backend change). Every figure states the convention: ID is the positive class, a box is
accepted as ID when its OOD score is <= the threshold, larger OOD score = more OOD.
"""
import os
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..metrics.ood_metrics import auroc, fpr_at_tpr, roc_curve

__all__ = ["histogram_range", "plot_comparisons", "plot_roc_curves", "plot_score_histograms", "safe_file_name"]

# The ID fraction kept at the FPR95 operating point.
_TPR = 0.95
_HISTOGRAM_BINS = 50
# Histograms span these percentiles of all the boxes' scores (widened by _RANGE_PAD of that
# span on each side, never beyond the data): a heavy tail (the multi-layer Mahalanobis score
# of a digits model spans 0 to 6e6) would otherwise squeeze every other box into one bar.
_RANGE_PERCENTILES = (0.5, 99.5)
_RANGE_PAD = 0.05
_LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
# Readable labels of the scores the VOS box predictor outputs.
SCORE_LABELS = {
    "vos": "VOS: 1 - p(ID)",
    "energy": "energy: -logsumexp f",
    "weighted_energy": "weighted energy (eq. 6)",
    "msp": "MSP: -max softmax",
    "mahalanobis": "Mahalanobis distance",
}


def safe_file_name(*parts) -> str:
    """Join parts into a file-name-safe stem (letters, digits, '-', '_', '.')."""
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)) for p in parts)


def _save(figure, path):
    FigureCanvasAgg(figure)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def histogram_range(values):
    """The range a histogram of ``values`` shows, and how many finite values fall outside it.

    The range spans the 0.5th to the 99.5th percentile, widened by 5% of that span on each
    side and clipped to the data, so a few extreme values do not squeeze the rest into a bar.

    Args:
        values (np.ndarray): the scores (NaN and infinities are ignored).

    Returns:
        tuple[float, float, int]: (low, high, number of finite values outside [low, high]).
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0, 0
    low, high = np.percentile(finite, _RANGE_PERCENTILES)
    pad = _RANGE_PAD * (high - low)
    low, high = max(low - pad, finite.min()), min(high + pad, finite.max())
    if high <= low:
        low, high = finite.min(), finite.max()
        if high <= low:
            high = low + 1.0
    return float(low), float(high), int(np.count_nonzero((finite < low) | (finite > high)))


def plot_roc_curves(id_scores, ood_scores, path, *, id_name, ood_name, subtitle=""):
    """One figure: the ROC curve of every score for one (ID set, OOD set) pair.

    Args:
        id_scores (dict[str, np.ndarray]): score name -> OOD scores of the selected ID boxes.
        ood_scores (dict[str, np.ndarray]): score name -> OOD scores of the selected OOD boxes.
        path (str): the PNG to write.
        id_name, ood_name: the sets, for the title.
        subtitle: e.g. the box-selection rule.

    Returns:
        str: ``path``.
    """
    figure = Figure(figsize=(6.4, 6.0))
    axes = figure.add_subplot(1, 1, 1)
    names = [n for n in id_scores if len(id_scores[n]) and len(ood_scores.get(n, ()))]
    for index, name in enumerate(names):
        fpr, tpr, _ = roc_curve(id_scores[name], ood_scores[name])
        area = auroc(id_scores[name], ood_scores[name])
        fpr95 = fpr_at_tpr(id_scores[name], ood_scores[name], _TPR)
        # Monotone transforms of one another (vos and weighted_energy) share one curve:
        # distinct dash patterns keep both visible.
        axes.plot(
            fpr,
            tpr,
            linestyle=_LINE_STYLES[index % len(_LINE_STYLES)],
            linewidth=1.5,
            label=f"{SCORE_LABELS.get(name, name)}: AUROC {100 * area:.1f}, FPR95 {100 * fpr95:.1f}",
        )
    axes.axhline(_TPR, color="grey", linestyle="--", linewidth=0.8, label="95% of ID boxes kept")
    axes.plot([0, 1], [0, 1], color="lightgrey", linestyle=":", linewidth=0.8)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("FPR: fraction of OOD boxes accepted as ID")
    axes.set_ylabel("TPR: fraction of ID boxes accepted as ID")
    axes.set_title(
        f"ROC, ID {id_name} vs OOD {ood_name}\n(ID positive; accepted when OOD score <= t)",
        fontsize=10,
    )
    if subtitle:
        figure.text(0.5, 0.01, subtitle, ha="center", va="bottom", fontsize=7, wrap=True)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout(rect=(0, 0.05 if subtitle else 0, 1, 1))
    return _save(figure, path)


def plot_score_histograms(
    id_scores, ood_scores, path, *, id_name, ood_name, calibrated=None, subtitle=""
):
    """One figure with a panel per score: histograms (densities) of ID vs OOD boxes.

    Each panel marks the threshold keeping 95% of the ID boxes shown (the FPR95 operating
    point) and, for the model's own score, the calibrated threshold if any. Its x range is
    :func:`histogram_range` of the ID and OOD scores together; the title says how many boxes
    lie outside it (they are left out of the bars, not of the FPR95).

    Args:
        id_scores, ood_scores (dict[str, np.ndarray]): as for :func:`plot_roc_curves`.
        path (str): the PNG to write.
        id_name, ood_name: the sets.
        calibrated (tuple[str, float], optional): (score name, calibrated threshold).
        subtitle: e.g. the box-selection rule.

    Returns:
        str: ``path``.
    """
    names = [n for n in id_scores if len(id_scores[n]) and len(ood_scores.get(n, ()))]
    columns = 2 if len(names) > 1 else 1
    rows = max(1, -(-len(names) // columns))
    figure = Figure(figsize=(5.2 * columns, 3.6 * rows + 0.6))
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        id_values = np.asarray(id_scores[name], dtype=np.float64)
        ood_values = np.asarray(ood_scores[name], dtype=np.float64)
        low, high, outside = histogram_range(np.concatenate([id_values, ood_values]))
        bins = np.linspace(low, high, _HISTOGRAM_BINS + 1)
        for values, colour, label in ((id_values, "tab:blue", "ID"), (ood_values, "tab:red", "OOD")):
            axes.hist(
                values, bins=bins, density=True, alpha=0.55, color=colour,
                label=f"{label} ({values.size} boxes)",
            )
        order = np.sort(id_values)
        kept95 = order[min(max(int(np.ceil(round(_TPR * order.size, 9))), 1), order.size) - 1]
        fpr95 = fpr_at_tpr(id_values, ood_values, _TPR)
        axes.axvline(
            kept95, color="black", linestyle="--", linewidth=1,
            label=f"95% ID kept (FPR95 {100 * fpr95:.1f}%)",
        )
        if calibrated is not None and calibrated[0] == name and np.isfinite(calibrated[1]):
            axes.axvline(
                calibrated[1], color="tab:green", linestyle=":", linewidth=1.5,
                label="calibrated threshold",
            )
        hidden = f"\n{outside} of {id_values.size + ood_values.size} boxes outside the range shown" if outside else ""
        axes.set_title(SCORE_LABELS.get(name, name) + hidden, fontsize=10)
        axes.set_xlabel("OOD score (larger = more OOD)")
        axes.set_ylabel("density")
        axes.legend(fontsize=7)
    figure.suptitle(f"Selected boxes: ID {id_name} vs OOD {ood_name}", fontsize=11)
    if subtitle:
        figure.text(0.5, 0.01, subtitle, ha="center", va="bottom", fontsize=7, wrap=True)
    figure.tight_layout(rect=(0, 0.04 if subtitle else 0, 1, 0.96))
    return _save(figure, path)


def _without_nan(scores):
    return {name: values[~np.isnan(values)] for name, values in scores.items()}


def plot_comparisons(plots_dir, comparisons, calibrated=None):
    """ROC and histogram PNGs of every (ID set, OOD set) pair of the comparisons.

    Args:
        plots_dir (str): the folder of the PNGs (``roc__<id>__<ood>.png``,
            ``histograms__<id>__<ood>.png``).
        comparisons (list[Comparison]): see :class:`vos_det.evaluation.ood_summary.Comparison`; a pair
            without any non-NaN score on one side is left out.
        calibrated (tuple[str, float], optional): (score name, threshold) to mark.

    Returns:
        list[str]: the paths written.
    """
    paths = []
    for comparison in comparisons:
        id_name = comparison.id_name
        id_scores = _without_nan(comparison.sets[id_name].ood_score_table)
        for ood_name in comparison.others:
            ood_scores = _without_nan(comparison.sets[ood_name].ood_score_table)
            if not any(len(v) for v in id_scores.values()) or not any(len(v) for v in ood_scores.values()):
                continue
            stem = safe_file_name(id_name, ood_name)
            common = {"id_name": id_name, "ood_name": ood_name, "subtitle": comparison.selection}
            paths.append(plot_roc_curves(id_scores, ood_scores, os.path.join(plots_dir, f"roc__{stem}.png"), **common))
            paths.append(
                plot_score_histograms(
                    id_scores, ood_scores, os.path.join(plots_dir, f"histograms__{stem}.png"),
                    calibrated=calibrated, **common,
                )
            )
    return paths
