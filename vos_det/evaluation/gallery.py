"""Pictures of the boxes behind the numbers of an OOD evaluation.

* :func:`plot_failure_gallery`: the OOD boxes the detector is most sure are ID and the ID
  boxes it flags most strongly, cropped with a margin and labelled with class, class score
  and OOD score (``gallery__<id>__<ood>.png``): what fools the model, at a glance.
* :func:`plot_detection_examples`: a few whole ID and OOD images with their kept detections
  drawn with the ``is_ood`` verdict (``examples__<id>__<ood>.png``), the first picture a
  reader of the results should see.

Both read the images from disk (``id_files`` / ``ood_files``: image id -> path) and the boxes from
:class:`~vos_det.evaluation.records.DetectionRecords`; they draw with matplotlib's object
API on the Agg canvas, like :mod:`.plots`.
"""
import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from ..utils.visualization import draw_ood_detections
from .plots import SCORE_LABELS, _save

__all__ = ["plot_detection_examples", "plot_failure_gallery"]

# Crops per row of the gallery, and the margin around a box, as a fraction of its larger side.
_GALLERY_COUNT = 8
_CROP_MARGIN = 0.5
_MIN_MARGIN_PIXELS = 4
_CROP_INCHES = 1.3
# Whole images per row of the examples figure.
_EXAMPLE_COUNT = 3


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
