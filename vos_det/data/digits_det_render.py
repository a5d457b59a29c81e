"""One digits-det image: 1 to 4 non-overlapping objects pasted on a canvas, with their boxes."""
from typing import List, Optional, Tuple

import numpy as np

from .digits_det_canvases import CanvasStyle, textured_background
from .digits_det_objects import PickObject

__all__ = ["MAX_GLYPH_SIZE", "NUM_CHANNELS", "render_image"]

_MIN_DIGITS_PER_IMAGE = 1
_MAX_DIGITS_PER_IMAGE = 4
# Side of the square a glyph is upscaled to, in pixels (inclusive range).
_MIN_GLYPH_SIZE = 20
MAX_GLYPH_SIZE = 48
# Random placements tried per digit before the image keeps fewer digits.
_MAX_PLACEMENT_ATTEMPTS = 50

NUM_CHANNELS = 3

# Foreground: a random colour whose luminance differs from that of the background under the
# glyph by at least this much, drawn with an opacity in the given range.
_MIN_FOREGROUND_LUMINANCE_CONTRAST = 0.35
_MAX_FOREGROUND_COLOUR_ATTEMPTS = 100
# Backgrounds brighter than this get black digits when no random colour contrasts enough.
_MID_LUMINANCE = 0.5
_FOREGROUND_OPACITY_RANGE = (0.8, 1.0)
# ITU-R BT.601 luma weights of R, G, B.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])

_MAX_PIXEL_VALUE = 255


def _contrasting_colour(rng: np.random.Generator, background_colour: np.ndarray) -> np.ndarray:
    """Draw a random RGB colour whose luminance stands out from ``background_colour``."""
    background_luminance = background_colour @ _LUMA_WEIGHTS
    for _ in range(_MAX_FOREGROUND_COLOUR_ATTEMPTS):
        colour = rng.uniform(0.0, 1.0, size=NUM_CHANNELS)
        if abs(colour @ _LUMA_WEIGHTS - background_luminance) >= _MIN_FOREGROUND_LUMINANCE_CONTRAST:
            return colour
    # Black or white, whichever contrasts more, always satisfies the contrast.
    return np.full(NUM_CHANNELS, 0.0 if background_luminance > _MID_LUMINANCE else 1.0)


def _squares_overlap(a: Tuple[int, int, int], b: Tuple[int, int, int]) -> bool:
    """Whether two squares (x, y, side) share area (touching edges do not count)."""
    ax, ay, a_side = a
    bx, by, b_side = b
    return ax < bx + b_side and bx < ax + a_side and ay < by + b_side and by < ay + a_side


def _place_square(
    rng: np.random.Generator, occupied: List[Tuple[int, int, int]], image_size: int
) -> Optional[Tuple[int, int, int]]:
    """Draw a glyph square (x, y, side) inside the canvas that overlaps no occupied square.

    Returns:
        The square, or None if no free place was found in ``_MAX_PLACEMENT_ATTEMPTS`` draws.
    """
    for _ in range(_MAX_PLACEMENT_ATTEMPTS):
        side = int(rng.integers(_MIN_GLYPH_SIZE, MAX_GLYPH_SIZE, endpoint=True))
        x, y = (int(v) for v in rng.integers(0, image_size - side, size=2, endpoint=True))
        if not any(_squares_overlap((x, y, side), square) for square in occupied):
            return x, y, side
    return None


def render_image(
    rng: np.random.Generator,
    pick_object: PickObject,
    image_size: int,
    style: Optional[CanvasStyle] = None,
) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]], List[str]]:
    """Render one canvas with 1 to 4 non-overlapping objects (digit glyphs or shapes).

    Args:
        rng: the image's random stream.
        pick_object: draws each object (see :class:`~.digits_det_objects.PickObject`).
        image_size: side of the square canvas in pixels.
        style: background and corruption of the canvas; None = the textured background of
            the original splits, uncorrupted.

    Returns:
        The image (H, W, 3) uint8; per object its tight box as (x0, y0, x1, y1) inclusive
        pixel indices; and per object its class name.
    """
    canvas = (style.background if style else textured_background)(rng, image_size)
    num_objects = rng.integers(_MIN_DIGITS_PER_IMAGE, _MAX_DIGITS_PER_IMAGE, endpoint=True)
    squares: List[Tuple[int, int, int]] = []
    boxes: List[Tuple[int, int, int, int]] = []
    labels: List[str] = []
    for _ in range(num_objects):
        name, draw = pick_object(rng)
        square = _place_square(rng, squares, image_size)
        if square is None:
            # The canvas is too crowded for another object: keep the ones placed so far.
            break
        squares.append(square)
        x, y, side = square

        object_opacity, visible = draw(side)
        region = canvas[y : y + side, x : x + side]
        colour = _contrasting_colour(rng, region.mean(axis=(0, 1)))
        opacity = rng.uniform(*_FOREGROUND_OPACITY_RANGE)
        alpha = opacity * object_opacity[..., None]
        region[...] = (1.0 - alpha) * region + alpha * colour

        rows, cols = np.nonzero(visible)
        boxes.append(
            (int(x + cols.min()), int(y + rows.min()), int(x + cols.max()), int(y + rows.max()))
        )
        labels.append(name)
    if style:
        canvas = style.corrupt(rng, canvas)
    image = np.round(canvas * _MAX_PIXEL_VALUE).astype(np.uint8)
    return image, boxes, labels
