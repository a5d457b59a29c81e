"""Canvases of digits-det: the textured background of every split, and the shifted styles.

:func:`textured_background` draws the canvas of the train / val / test / OOD splits (and of
the far-OOD and OOD-validation ones): a tint modulated by smooth low-frequency noise plus
fine noise. The covariate-shifted ID test split (``digits_det_shifted_test``) draws each
image in one of :data:`SHIFTED_CANVAS_STYLES`, whose textures or corruptions no training
image has:

- "stripes": sinusoidal stripes at a random angle and frequency;
- "checker": a low-contrast checkerboard;
- "noise": the usual texture, then strong per-pixel Gaussian noise over the whole image;
- "blur": the usual texture, then a Gaussian blur of the whole image (objects included);
- "low_contrast": the usual texture, then the whole image's contrast reduced 2-3x.

A style is a background drawn before the objects are pasted and a corruption applied to the
finished canvas; all colours are floats in [0, 1], arrays (H, W, 3).
"""
from typing import Callable, Dict, NamedTuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = ["SHIFTED_CANVAS_STYLES", "CanvasStyle", "textured_background"]

_NUM_CHANNELS = 3
# Background: a tint colour modulated by smooth low-frequency noise (bicubic upscaling of a
# coarse random grid) plus per-pixel fine noise. Colours are in [0, 1].
_BACKGROUND_TINT_RANGE = (0.1, 0.9)
_BACKGROUND_GRID_CELLS_RANGE = (3, 8)
_BACKGROUND_LOW_FREQUENCY_AMPLITUDE = 0.15
_BACKGROUND_FINE_NOISE_STD = 0.03
# Per-channel gain of the texture, so that the texture itself is tinted.
_BACKGROUND_CHANNEL_GAIN_RANGE = (0.5, 1.5)

# Shifted styles (ranges of their random parameters).
_STRIPE_CYCLES_RANGE = (4.0, 12.0)  # stripe periods across the image
_STRIPE_AMPLITUDE_RANGE = (0.15, 0.3)
_CHECKER_CELL_RANGE = (4, 16)  # cell side in pixels
_CHECKER_CONTRAST_RANGE = (0.1, 0.25)  # half the difference of the two cell colours
_NOISE_STD_RANGE = (0.08, 0.15)
_BLUR_SIGMA_RANGE = (1.0, 2.0)  # pixels
_CONTRAST_FACTOR_RANGE = (0.3, 0.5)


def _tinted(rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
    """A random tint plus ``texture`` (H, W) with a random per-channel gain, clipped."""
    tint = rng.uniform(*_BACKGROUND_TINT_RANGE, size=_NUM_CHANNELS)
    channel_gain = rng.uniform(*_BACKGROUND_CHANNEL_GAIN_RANGE, size=_NUM_CHANNELS)
    return np.clip(tint + texture[..., None] * channel_gain, 0.0, 1.0)


def textured_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Draw a tinted texture of smooth plus fine noise, (H, W, 3) float in [0, 1]."""
    grid_cells = rng.integers(*_BACKGROUND_GRID_CELLS_RANGE, endpoint=True)
    coarse_grid = rng.uniform(-1.0, 1.0, size=(grid_cells, grid_cells)).astype(np.float32)
    smooth_noise = np.asarray(
        Image.fromarray(coarse_grid).resize((image_size, image_size), Image.Resampling.BICUBIC)
    )
    fine_noise = rng.standard_normal((image_size, image_size))
    texture = (
        _BACKGROUND_LOW_FREQUENCY_AMPLITUDE * smooth_noise + _BACKGROUND_FINE_NOISE_STD * fine_noise
    )
    return _tinted(rng, texture)


def _stripes(rng: np.random.Generator, image_size: int) -> np.ndarray:
    angle = rng.uniform(0.0, np.pi)
    cycles = rng.uniform(*_STRIPE_CYCLES_RANGE)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    y, x = np.mgrid[0:image_size, 0:image_size] / image_size
    wave = np.sin(2.0 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    return _tinted(rng, rng.uniform(*_STRIPE_AMPLITUDE_RANGE) * wave)


def _checker(rng: np.random.Generator, image_size: int) -> np.ndarray:
    cell = int(rng.integers(*_CHECKER_CELL_RANGE, endpoint=True))
    y, x = np.mgrid[0:image_size, 0:image_size] // cell
    sign = np.where((x + y) % 2 == 0, 1.0, -1.0)
    return _tinted(rng, rng.uniform(*_CHECKER_CONTRAST_RANGE) * sign)


def _unchanged(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    return canvas


def _noise(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    noise = rng.normal(0.0, rng.uniform(*_NOISE_STD_RANGE), size=canvas.shape)
    return np.clip(canvas + noise, 0.0, 1.0)


def _blur(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    sigma = rng.uniform(*_BLUR_SIGMA_RANGE)
    return gaussian_filter(canvas, sigma=(sigma, sigma, 0.0))


def _low_contrast(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    mean = canvas.mean(axis=(0, 1), keepdims=True)
    return mean + rng.uniform(*_CONTRAST_FACTOR_RANGE) * (canvas - mean)


class CanvasStyle(NamedTuple):
    """How a canvas is drawn: its background, and a corruption of the finished image."""

    background: Callable[[np.random.Generator, int], np.ndarray]
    """``(rng, image_size) -> (H, W, 3)`` float in [0, 1]."""
    corrupt: Callable[[np.random.Generator, np.ndarray], np.ndarray]
    """``(rng, canvas) -> canvas``, applied once every object is pasted."""


SHIFTED_CANVAS_STYLES: Dict[str, CanvasStyle] = {
    "stripes": CanvasStyle(_stripes, _unchanged),
    "checker": CanvasStyle(_checker, _unchanged),
    "noise": CanvasStyle(textured_background, _noise),
    "blur": CanvasStyle(textured_background, _blur),
    "low_contrast": CanvasStyle(textured_background, _low_contrast),
}
