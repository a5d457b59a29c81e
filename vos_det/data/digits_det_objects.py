"""The objects digits-det pastes on its canvases: digit glyphs and procedurally drawn shapes.

An image draws its objects one by one, each before its size is known (the order of the
random draws of the original splits, which must stay byte-identical): a picker
``pick(rng) -> (name, draw)`` returns the object's class name and ``draw(side)``, which
renders it into a square of that side as ``(opacity, visible)``: (side, side) float opacity
in [0, 1] and the (side, side) bool mask of the pixels its box must enclose.

Two ways to draw a shape: :func:`shape_picker` rasterises it sharp at the pasted size
(``digits_det_far_ood``: differs from the digits in rendering as well as meaning);
:func:`matched_shape_picker` first makes it an 8x8 glyph the way load_digits was made and
then pastes it exactly as a digit (``digits_det_far_ood_matched``: differs in meaning only).
"""
import functools
from typing import Callable, Sequence, Tuple

import numpy as np
from PIL import Image

from .digits_det_shapes import Primitive, render_shape, sample_shape

__all__ = [
    "PickObject",
    "glyph_picker",
    "matched_shape_picker",
    "mixed_picker",
    "shape_glyph",
    "shape_picker",
]

# load_digits glyph intensities range over 0..16.
_GLYPH_MAX_INTENSITY = 16.0
# A scaled glyph pixel belongs to the digit (and to its box) when its bilinear intensity
# rounds to at least 1 on that 0..16 scale; shapes use the same opacity threshold.
_GLYPH_VISIBLE_INTENSITY = 0.5
# load_digits is UCI's optdigits: 32x32 binary bitmaps of normalised digits whose on-pixels
# are counted in non-overlapping 4x4 blocks, giving 8x8 glyphs with values 0..16.
_BITMAP_SIDE = 32
_BLOCK_SIDE = 4
# A pixel of the 32x32 rasterisation is on when the shape covers at least half of it.
_BITMAP_ON_COVERAGE = 0.5

Draw = Callable[[int], Tuple[np.ndarray, np.ndarray]]
PickObject = Callable[[np.random.Generator], Tuple[str, Draw]]


def _draw_glyph(glyph_image: np.ndarray, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Upscale a load_digits glyph (8, 8) to (side, side): its opacity and visible pixels."""
    intensity = np.asarray(
        Image.fromarray(glyph_image).resize((side, side), Image.Resampling.BILINEAR)
    )
    return (
        np.clip(intensity / _GLYPH_MAX_INTENSITY, 0.0, 1.0),
        intensity >= _GLYPH_VISIBLE_INTENSITY,
    )


def _draw_shape(primitives, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rasterise a shape: its opacity and visible pixels (same visibility rule as glyphs)."""
    opacity = render_shape(primitives, side)
    return opacity, opacity >= _GLYPH_VISIBLE_INTENSITY / _GLYPH_MAX_INTENSITY


def shape_glyph(primitives: Sequence[Primitive]) -> np.ndarray:
    """Make a shape an 8x8 glyph the way load_digits was made from its 32x32 bitmaps.

    Args:
        primitives: the shape, from :func:`~.digits_det_shapes.sample_shape`.

    Returns:
        (8, 8) float32 glyph: the number of on-pixels of the shape's 32x32 binary
        rasterisation in each 4x4 block, 0..16 (the scale of load_digits' ``images``).
    """
    bitmap = render_shape(primitives, _BITMAP_SIDE) >= _BITMAP_ON_COVERAGE
    blocks_per_side = _BITMAP_SIDE // _BLOCK_SIDE
    blocks = bitmap.reshape(blocks_per_side, _BLOCK_SIDE, blocks_per_side, _BLOCK_SIDE)
    return blocks.sum(axis=(1, 3)).astype(np.float32)


def glyph_picker(
    glyph_images: np.ndarray,
    digit_of_glyph: np.ndarray,
    glyph_pool: np.ndarray,
    names: Sequence[str],
    digits: Sequence[int],
) -> PickObject:
    """Objects that are glyphs of the given digits (each uniformly) from a glyph pool.

    Args:
        glyph_images: (N, 8, 8) load_digits glyphs, intensities 0..16.
        digit_of_glyph: (N,) the digit each shows.
        glyph_pool: indices of the glyphs to draw from.
        names: the class name of each of ``digits``.
        digits: the digits that may appear.
    """

    def pick(rng):
        index = rng.integers(len(digits))
        glyph = rng.choice(glyph_pool[digit_of_glyph[glyph_pool] == digits[index]])
        return names[index], functools.partial(_draw_glyph, glyph_images[glyph])

    return pick


def shape_picker(kinds: Sequence[str]) -> PickObject:
    """Objects that are procedurally drawn shapes of the given kinds (each uniformly)."""

    def pick(rng):
        kind = kinds[rng.integers(len(kinds))]
        return kind, functools.partial(_draw_shape, sample_shape(kind, rng))

    return pick


def matched_shape_picker(kinds: Sequence[str]) -> PickObject:
    """Shapes of the given kinds (each uniformly) rendered exactly like the digits.

    Each shape is drawn with the same random draws as :func:`shape_picker`, made an 8x8 glyph
    by :func:`shape_glyph` and upscaled by the digits' own ``_draw_glyph``.
    """

    def pick(rng):
        kind = kinds[rng.integers(len(kinds))]
        return kind, functools.partial(_draw_glyph, shape_glyph(sample_shape(kind, rng)))

    return pick


def mixed_picker(first: PickObject, second: PickObject, first_probability: float) -> PickObject:
    """Objects of ``first`` with probability ``first_probability``, else of ``second``."""

    def pick(rng):
        return (first if rng.random() < first_probability else second)(rng)

    return pick
