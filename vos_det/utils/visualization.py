"""Drawing detections with their ID / OOD verdict (PIL only)."""
import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_ood_detections", "ID_COLOR", "OOD_COLOR"]

ID_COLOR = (0, 220, 0)
OOD_COLOR = (255, 40, 40)
_TEXT_COLOR = (255, 255, 255)
# Line width: sqrt(image area) / divisor pixels, at least 1.
_LINE_WIDTH_DIVISOR = 300
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


def _label(draw, position, text, color):
    left, top, right, bottom = draw.textbbox(position, text)
    draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=color)
    draw.text(position, text, fill=_TEXT_COLOR)


def draw_ood_detections(image_rgb, instances, class_names):
    """Draw ID boxes solid green with class and score, OOD boxes dashed red with "OOD".

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
    for box, score, label, ood_score, is_ood in zip(
        instances.pred_boxes.tensor.tolist(),
        instances.scores.tolist(),
        instances.pred_classes.tolist(),
        instances.ood_scores.tolist(),
        instances.is_ood.tolist(),
    ):
        x0, y0, x1, y1 = box
        if is_ood:
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            for start, end in zip(corners[:-1], corners[1:]):
                _dashed_line(draw, start, end, OOD_COLOR, width)
            _label(draw, (x0, y0), f"OOD {ood_score:.2f}", OOD_COLOR)
        else:
            draw.rectangle(box, outline=ID_COLOR, width=width)
            _label(draw, (x0, y0), f"{class_names[label]} {score:.2f}", ID_COLOR)
    return np.asarray(image)
