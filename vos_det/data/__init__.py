"""Datasets of vos_det: registration in detectron2's catalogs and the digits-det generator."""
from . import builtin as _builtin  # ensure the datasets are registered
from .builtin import BDD100K_CLASSES
from .catalog import OOD_ROLES, check_class_names, get_ood_role, is_test_split
from .coco_json import load_coco_json_dataset
from .coco_json_registration import (
    CLI_SPEC_FORMAT,
    register_coco_json_dataset,
    register_from_cli,
    register_ood_coco_json,
)
from .digits_det import (
    DIGITS_DET_ID_CLASSES,
    DIGITS_DET_OOD_CLASSES,
    generate_digits_det,
    glyph_indices_per_split,
)

__all__ = [
    "BDD100K_CLASSES",
    "CLI_SPEC_FORMAT",
    "DIGITS_DET_ID_CLASSES",
    "DIGITS_DET_OOD_CLASSES",
    "OOD_ROLES",
    "check_class_names",
    "generate_digits_det",
    "get_ood_role",
    "is_test_split",
    "glyph_indices_per_split",
    "load_coco_json_dataset",
    "register_coco_json_dataset",
    "register_from_cli",
    "register_ood_coco_json",
]
