"""PNG figures of an OOD evaluation: the numbers and the boxes behind them.

* :func:`plot_roc_curves`, :func:`plot_score_histograms` (:func:`plot_comparisons`: both for
  every pair of sets): ROC curves and ID-vs-OOD score histograms. Every figure states the
  convention: ID is the positive class, a box is accepted as ID when its OOD score is <= the
  threshold, larger OOD score = more OOD.
* :func:`plot_failure_gallery`: the OOD boxes the detector is most sure are ID and the ID
  boxes it flags most strongly, cropped with a margin and labelled with class, class score
  and OOD score (``gallery__<id>__<ood>.png``): what fools the model, at a glance.
* :func:`plot_detection_examples`: a few whole ID and OOD images with their kept detections
  drawn with the ``is_ood`` verdict (``examples__<id>__<ood>.png``), the first picture a
  reader of the results should see.

The last two read the images from disk (``id_files`` / ``ood_files``: image id -> path) and the
boxes from :class:`~vos_det.evaluation.records.DetectionRecords`. All are drawn with
matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend change).
"""
import os
import re

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from ..metrics.ood_metrics import auroc, fpr_at_tpr, roc_curve
from ..utils.visualization import draw_ood_detections

__all__ = [
    "histogram_range",
    "plot_comparisons",
    "plot_detection_examples",
    "plot_failure_gallery",
    "plot_roc_curves",
    "plot_score_histograms",
    "safe_file_name",
]

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
# Crops per row of the gallery, and the margin around a box, as a fraction of its larger side.
_GALLERY_COUNT = 8
_CROP_MARGIN = 0.5
_MIN_MARGIN_PIXELS = 4
_CROP_INCHES = 1.3
# Whole images per row of the examples figure.
_EXAMPLE_COUNT = 3


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
        comparisons (list[Comparison]): see :class:`vos_det.evaluation.report.Comparison`; a pair
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


def _read_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _crop(image, box):
    """The box of ``image`` with a margin of half its larger side around it, clipped."""
    x0, y0, x1, y1 = box
    margin = max(_CROP_MARGIN * max(x1 - x0, y1 - y0), _MIN_MARGIN_PIXELS)
    height, width = image.shape[:2]
    left, top = int(max(0, np.floor(x0 - margin))), int(max(0, np.floor(y0 - margin)))
    right, bottom = int(min(width, np.ceil(x1 + margin))), int(min(height, np.ceil(y1 + margin)))
    return image[top:bottom, left:right], (x0 - left, y0 - top, x1 - left, y1 - top)


def _class_name(class_names, index):
    return class_names[index] if 0 <= index < len(class_names) else str(index)


def _gallery_row(figure, rows, row, records, order, title, files, class_names, score):
    for column, index in enumerate(order):
        axes = figure.add_subplot(rows, _GALLERY_COUNT, row * _GALLERY_COUNT + column + 1)
        axes.set_xticks([])
        axes.set_yticks([])
        crop, (x0, y0, x1, y1) = _crop(_read_rgb(files[records.image_ids[index]]), records.boxes[index])
        axes.imshow(crop)
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.0))
        axes.set_title(
            f"{_class_name(class_names, int(records.classes[index]))} {records.scores[index]:.2f}\n"
            f"OOD {records.ood_score_table[score][index]:.3g}",
            fontsize=7,
        )
        if column == 0:
            axes.set_ylabel(title, fontsize=7)


def plot_failure_gallery(id_records, ood_records, path, *, score, id_files, ood_files, class_names, id_name, ood_name):
    """Crops of the OOD boxes scored most ID-like and of the ID boxes scored most OOD-like.

    Args:
        id_records, ood_records (DetectionRecords): the kept boxes of the ID and OOD sets.
        path (str): the PNG to write.
        score (str): the OOD score that orders the boxes (larger = more OOD).
        id_files, ood_files (dict): image id -> image path, of each set.
        class_names (list[str]): the ID classes.
        id_name, ood_name (str): the sets, for the title.

    Returns:
        str or None: ``path``, or None when neither set has a box with a finite score.
    """
    rows = []
    for records, files, most_id_like, title in (
        (ood_records, ood_files, True, f"OOD boxes ({ood_name})\nscored most ID-like"),
        (id_records, id_files, False, f"ID boxes ({id_name})\nscored most OOD-like"),
    ):
        values = records.ood_score_table.get(score, np.zeros(0))
        finite = np.flatnonzero(np.isfinite(values))
        order = finite[np.argsort(values[finite] if most_id_like else -values[finite], kind="stable")]
        if order.size:
            rows.append((records, files, order[:_GALLERY_COUNT], title))
    if not rows:
        return None
    figure = Figure(figsize=(_CROP_INCHES * _GALLERY_COUNT, (_CROP_INCHES + 0.4) * len(rows) + 0.5))
    for row, (records, files, order, title) in enumerate(rows):
        _gallery_row(figure, len(rows), row, records, order, title, files, class_names, score)
    figure.suptitle(
        f"What fools the detector: {SCORE_LABELS.get(score, score)} (larger = more OOD); "
        "each crop: predicted class, class score, OOD score",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(figure, path)


def _image_instances(records, image_id, threshold, score):
    """One image's kept boxes as Instances, with ``is_ood`` = ``score`` > ``threshold``."""
    mask = records.image_ids == image_id
    instances = Instances((1, 1))
    instances.pred_boxes = Boxes(torch.as_tensor(records.boxes[mask], dtype=torch.float32))
    instances.scores = torch.as_tensor(records.scores[mask])
    instances.pred_classes = torch.as_tensor(records.classes[mask])
    ood = torch.as_tensor(records.ood_score_table[score][mask])
    instances.ood_scores = ood
    instances.is_ood = ood > threshold
    return instances


def _first_images(records, count):
    """The first ``count`` image ids that have a kept box, in the order of the records."""
    seen = []
    for image_id in records.image_ids:
        if image_id not in seen:
            seen.append(image_id)
            if len(seen) == count:
                break
    return seen


def plot_detection_examples(
    id_records, ood_records, path, *, score, threshold, id_files, ood_files, class_names, id_name, ood_name
):
    """The first few ID and OOD images with a kept box, every kept box drawn with its verdict.

    ID boxes are drawn solid green with class and class score, boxes flagged OOD
    (``score`` > ``threshold``) dashed red with "OOD" and the OOD score
    (:func:`vos_det.utils.visualization.draw_ood_detections`).

    Args:
        id_records, ood_records (DetectionRecords): the kept boxes of the ID and OOD sets.
        path (str): the PNG to write.
        score (str): the OOD score behind the verdict.
        threshold (float): a box is flagged OOD when its score is above it.
        id_files, ood_files (dict): image id -> image path, of each set.
        class_names (list[str]): the ID classes.
        id_name, ood_name (str): the sets, for the panel titles.

    Returns:
        str or None: ``path``, or None when neither set has a kept box.
    """
    sets = [
        (records, files, kind, name, _first_images(records, _EXAMPLE_COUNT))
        for records, files, kind, name in (
            (id_records, id_files, "ID", id_name), (ood_records, ood_files, "OOD", ood_name)
        )
        if score in records.ood_score_table and len(records)
    ]
    if not sets:
        return None
    figure = Figure(figsize=(3.0 * _EXAMPLE_COUNT, 3.2 * len(sets) + 0.4))
    for row, (records, files, kind, name, image_ids) in enumerate(sets):
        for column, image_id in enumerate(image_ids):
            axes = figure.add_subplot(len(sets), _EXAMPLE_COUNT, row * _EXAMPLE_COUNT + column + 1)
            instances = _image_instances(records, image_id, threshold, score)
            axes.imshow(draw_ood_detections(_read_rgb(files[image_id]), instances, class_names))
            axes.set_title(f"{kind}: {name}", fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle(
        f"Kept detections; red dashed = flagged OOD ({SCORE_LABELS.get(score, score)} > {threshold:.3g})",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    return _save(figure, path)
