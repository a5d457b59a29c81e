"""Drawing detections with their ID / OOD verdict (PIL only), readable at every image size."""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_ood_detections", "label_text", "ID_COLOR", "OOD_COLOR"]

ID_COLOR = (0, 220, 0)
OOD_COLOR = (255, 40, 40)
_TEXT_COLOR = (255, 255, 255)
# Line width: sqrt(image area) / divisor pixels, at least 1.
_LINE_WIDTH_DIVISOR = 300
# Font height: sqrt(image area) / divisor pixels, clamped to [_MIN_FONT, _MAX_FONT].
_FONT_DIVISOR = 40
_MIN_FONT, _MAX_FONT = 10, 200
# Smallest font a label is shrunk to so that it fits the width of a tiny image.
_MIN_SMALL_FONT = 6
# Dashes of OOD boxes, in multiples of the line width.
_DASH_LENGTH = 4
_GAP_LENGTH = 3


def _dashed_line(draw, start, end, color, width):
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        return
    dash, period = _DASH_LENGTH * width, (_DASH_LENGTH + _GAP_LENGTH) * width
    for offset in np.arange(0.0, length, period):
        stop = min(offset + dash, length)
        draw.line(
            [
                (x0 + (x1 - x0) * offset / length, y0 + (y1 - y0) * offset / length),
                (x0 + (x1 - x0) * stop / length, y0 + (y1 - y0) * stop / length),
            ],
            fill=color,
            width=width,
        )


def _font_size(image_size):
    """Font height in pixels for an image of ``image_size`` (W, H): grows with the image."""
    width, height = image_size
    return int(min(_MAX_FONT, max(_MIN_FONT, math.sqrt(width * height) / _FONT_DIVISOR)))


def _font(size):
    """PIL's scalable default font at ``size`` pixels (the fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _fitting_font(draw, text, size, max_width):
    """The font at ``size``, smaller if ``text`` would be wider than ``max_width`` (tiny images)."""
    font = _font(size)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    if right - left > max_width and size > _MIN_SMALL_FONT:
        font = _font(max(_MIN_SMALL_FONT, int(size * max_width / (right - left))))
    return font


def label_text(class_name, score, ood_score, is_ood):
    """The label of a box: ``"seven 0.93"`` (class, class score) for ID, ``"OOD (seven?) 0.17"``
    (the class the detector would have said, and the OOD score) for OOD."""
    if is_ood:
        return f"OOD ({class_name}?) {ood_score:.2f}"
    return f"{class_name} {score:.2f}"


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_label(box, size, image_size, taken):
    """Top-left corner of a label of ``size`` for ``box``, inside the image.

    Tried in order: above the box, inside its top edge, below it; each shifted left when it
    would cross the right edge. The first spot that overlaps no label already placed wins,
    else the first spot.
    """
    (x0, y0, x1, y1), (w, h), (width, height) = box, size, image_size
    left = min(max(0.0, x0), max(0.0, width - w))
    candidates = [y0 - h, y0, y1]
    spots = [(left, min(max(0.0, top), max(0.0, height - h))) for top in candidates]
    for x, y in spots:
        if not any(_overlaps((x, y, x + w, y + h), other) for other in taken):
            return x, y
    return spots[0]


def draw_ood_detections(image_rgb, instances, class_names):
    """Draw ID boxes solid green with class and score, OOD boxes dashed red with their class,
    "OOD" and the OOD score.

    Line width and font size grow with the image (font height sqrt(W H) / 40, 10 to 200 px;
    a label wider than a tiny image gets a smaller font); labels stay inside the image and
    avoid the labels already drawn where they can.

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8 RGB image.
        instances (Instances): detections with pred_boxes, scores, pred_classes,
            ood_scores and is_ood, in the coordinates of ``image_rgb``.
        class_names (list[str]): names of the ID classes.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB image with the drawings.
    """
    image = Image.fromarray(image_rgb)
    draw = ImageDraw.Draw(image)
    width = max(1, round(math.sqrt(image.width * image.height) / _LINE_WIDTH_DIVISOR))
    font_size = _font_size(image.size)
    pad = max(1, width)
    labels, taken = [], []
    for box, score, label, ood_score, is_ood in zip(
        instances.pred_boxes.tensor.tolist(),
        instances.scores.tolist(),
        instances.pred_classes.tolist(),
        instances.ood_scores.tolist(),
        instances.is_ood.tolist(),
    ):
        x0, y0, x1, y1 = box
        color = OOD_COLOR if is_ood else ID_COLOR
        if is_ood:
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            for start, end in zip(corners[:-1], corners[1:]):
                _dashed_line(draw, start, end, color, width)
        else:
            draw.rectangle(box, outline=color, width=width)
        text = label_text(class_names[label], score, ood_score, is_ood)
        font = _fitting_font(draw, text, font_size, image.width - 2 * pad)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        size = (right - left + 2 * pad, bottom - top + 2 * pad)
        x, y = _place_label(box, size, image.size, taken)
        taken.append((x, y, x + size[0], y + size[1]))
        labels.append((x, y, size, text, color, font, left, top))
    # Labels after all boxes, so that no box line crosses a label.
    for x, y, (w, h), text, color, font, left, top in labels:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
        draw.text((x + pad - left, y + pad - top), text, fill=_TEXT_COLOR, font=font)
    return np.asarray(image)
