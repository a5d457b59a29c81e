"""The real handwritten digits of digits-det and digits-cls: scikit-learn's ``load_digits``
glyphs, their class names, and their split into disjoint pools of handwriting."""
import functools
from typing import Dict, List, Tuple

import numpy as np
from sklearn.datasets import load_digits

from .digits_det_splits import random_stream

__all__ = [
    "DIGITS_DET_ID_CLASSES",
    "DIGITS_DET_OOD_CLASSES",
    "DIGIT_NAMES",
    "ID_DIGITS",
    "OOD_DIGITS",
    "glyph_indices_per_split",
    "load_glyphs",
]

DIGITS_DET_ID_CLASSES = ("zero", "one", "two", "three", "four")
DIGITS_DET_OOD_CLASSES = ("five", "six", "seven", "eight", "nine")
# The digit shown by a glyph is its index in this tuple.
DIGIT_NAMES = DIGITS_DET_ID_CLASSES + DIGITS_DET_OOD_CLASSES
ID_DIGITS = tuple(range(len(DIGITS_DET_ID_CLASSES)))
OOD_DIGITS = tuple(range(len(DIGITS_DET_ID_CLASSES), len(DIGIT_NAMES)))

# Fractions of the glyphs of every digit that go to each glyph pool (stratified, disjoint).
_GLYPH_POOL_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@functools.lru_cache(maxsize=1)
def load_glyphs() -> Tuple[np.ndarray, np.ndarray]:
    """Return the load_digits glyphs, (N, 8, 8) float32 in 0..16, and their digits, (N,)."""
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target


def glyph_indices_per_split(seed: int = 0) -> Dict[str, np.ndarray]:
    """Split the load_digits glyphs into disjoint train / val / test pools, stratified by digit.

    Args:
        seed: the dataset seed (the same one :func:`generate_digits_det` takes).

    Returns:
        Sorted indices into ``sklearn.datasets.load_digits()`` for each of "train", "val" and
        "test". The OOD images use the "test" pool.
    """
    _, digit_of_glyph = load_glyphs()
    rng = random_stream(seed, "glyph_pools")
    pools: Dict[str, List[np.ndarray]] = {name: [] for name in _GLYPH_POOL_FRACTIONS}
    cumulative_fractions = np.cumsum(list(_GLYPH_POOL_FRACTIONS.values()))
    for digit in range(len(DIGIT_NAMES)):
        glyphs = rng.permutation(np.flatnonzero(digit_of_glyph == digit))
        boundaries = np.round(cumulative_fractions * len(glyphs)).astype(int)
        for name, pool_part in zip(pools, np.split(glyphs, boundaries[:-1])):
            pools[name].append(pool_part)
    return {name: np.sort(np.concatenate(parts)) for name, parts in pools.items()}
