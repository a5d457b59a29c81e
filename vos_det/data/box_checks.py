"""Checks of annotated boxes: the loaders drop the boxes no detector can learn from.

detectron2's DatasetMapper clips every box to the (augmented) image and drops the ones left
empty, which handles boxes partly or wholly outside the image. It does not handle a box whose
corners are swapped (negative width or height): ``apply_box`` takes the min and max of the
transformed corners and so turns it into a valid box the annotator never drew. The loaders of
vos_det therefore drop, with one warning naming the file and the annotations, every box that

* has a coordinate that is not finite,
* has a negative or zero width or height, or
* lies entirely outside the image (when the image size is known).

Boxes partly outside the image are kept; the mapper clips them.
"""
import logging
import math
import numbers
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.structures import BoxMode

__all__ = ["box_problem", "drop_unusable_boxes", "warn_dropped_boxes"]

logger = logging.getLogger(__name__)

# Number of dropped boxes described in the warning (the count covers all of them).
_DROPPED_BOXES_SHOWN = 5


def box_problem(
    bbox: Sequence[float],
    bbox_mode: BoxMode,
    height: Optional[float] = None,
    width: Optional[float] = None,
) -> Optional[str]:
    """Why a box cannot be trained on, or None if it can.

    Args:
        bbox: the box, in ``bbox_mode`` (XYXY_ABS or XYWH_ABS).
        bbox_mode: its mode.
        height, width: the image size, when known.

    Returns:
        None, or a short reason: "a coordinate is not finite", "negative width", "negative
        height", "zero width", "zero height", "entirely outside the image".
    """
    x0, y0, x1, y1 = BoxMode.convert([float(v) for v in bbox], bbox_mode, BoxMode.XYXY_ABS)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "a coordinate is not finite"
    for low, high, side in ((x0, x1, "width"), (y0, y1, "height")):
        if high < low:
            return f"negative {side}"
        if high == low:
            return f"zero {side}"
    # A size that is not a number (a malformed json) is left to detectron2's size check.
    width = width if isinstance(width, numbers.Real) else None
    height = height if isinstance(height, numbers.Real) else None
    outside = x1 <= 0 or y1 <= 0
    outside = outside or (width is not None and x0 >= width)
    outside = outside or (height is not None and y0 >= height)
    if outside:
        size = f" ({width}x{height})" if width is not None and height is not None else ""
        return f"entirely outside the image{size}"
    return None


def warn_dropped_boxes(source: str, dropped: List[str], total: int) -> None:
    """Log one warning for the boxes a loader dropped (nothing if none was).

    Args:
        source: the annotation file or dataset folder, named first in the message.
        dropped: one description per dropped box ("<where> bbox [...]: <reason>").
        total: the number of boxes read.
    """
    if not dropped:
        return
    shown = "; ".join(dropped[:_DROPPED_BOXES_SHOWN])
    hidden = len(dropped) - _DROPPED_BOXES_SHOWN
    more = f"; and {hidden} more" if hidden > 0 else ""
    logger.warning(
        "%s: dropped %d of %d boxes that cannot be trained on: %s%s",
        source,
        len(dropped),
        total,
        shown,
        more,
    )


def drop_unusable_boxes(
    records: List[Dict], source: str, describe: Callable[[Dict, int], str]
) -> List[Dict]:
    """Remove from detectron2 dataset dicts (in place) the boxes :func:`box_problem` rejects.

    Args:
        records: dataset dicts with ``annotations`` (``bbox``, ``bbox_mode``) and, when
            known, ``height`` / ``width``.
        source: what the warning names first (the dataset's folder or file).
        describe: ``(record, annotation_index) -> str``, where a dropped box comes from
            (its annotation file and index).

    Returns:
        ``records``.
    """
    dropped, total = [], 0
    for record in records:
        kept = []
        for index, annotation in enumerate(record.get("annotations", [])):
            total += 1
            problem = box_problem(
                annotation["bbox"], annotation["bbox_mode"], record.get("height"), record.get("width")
            )
            if problem is None:
                kept.append(annotation)
            else:
                dropped.append(f"{describe(record, index)} bbox {list(annotation['bbox'])}: {problem}")
        if "annotations" in record:
            record["annotations"] = kept
    warn_dropped_boxes(source, dropped, total)
    return records
