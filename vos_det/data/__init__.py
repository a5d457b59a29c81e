"""Datasets of vos_det: registration in detectron2's catalogs and the digits-det generator."""
from . import builtin as _builtin  # ensure the datasets are registered
from .digits_det import (
    DIGITS_DET_ID_CLASSES,
    DIGITS_DET_OOD_CLASSES,
    generate_digits_det,
    glyph_indices_per_split,
)

__all__ = [
    "DIGITS_DET_ID_CLASSES",
    "DIGITS_DET_OOD_CLASSES",
    "generate_digits_det",
    "glyph_indices_per_split",
]
