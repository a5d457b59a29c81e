"""The splits of digits-det: their names, the glyph pool and the random stream each draws
from, and where their files live (the layout is drawn in :mod:`.digits_det`)."""
import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "FAR_OOD_MATCHED_SPLIT",
    "FAR_OOD_SPLIT",
    "OOD_SPLIT",
    "OOD_VAL_SPLIT",
    "SHIFTED_TEST_SPLIT",
    "SPLIT_GLYPH_POOL",
    "VOC_SPLITS",
    "DigitsDetPaths",
    "digits_det_paths",
    "random_stream",
]

VOC_SPLITS = ("train", "val", "test")
OOD_SPLIT = "ood"
# The splits of the multi-shift benchmark (see the docstring of digits_det).
FAR_OOD_SPLIT = "far_ood"
SHIFTED_TEST_SPLIT = "shifted_test"
OOD_VAL_SPLIT = "ood_val"
# The far-OOD shapes rendered like the digits (8x8 glyphs upscaled), added after the others.
FAR_OOD_MATCHED_SPLIT = "far_ood_matched"
# The glyph pool each image split draws from; OOD images use the unseen test handwriting.
# The shifted ID test split uses the test handwriting too; the OOD validation split the val
# handwriting, so that no test glyph is seen when choosing hyperparameters.
SPLIT_GLYPH_POOL = {
    "train": "train",
    "val": "val",
    "test": "test",
    "ood": "test",
    "shifted_test": "test",
    "ood_val": "val",
}
# Independent random streams, keyed by their position here: the glyph-pool split, then one
# per image split. New splits are appended, so that the streams (and the files) of the
# earlier ones never change.
_RANDOM_STREAMS = (
    ("glyph_pools",)
    + VOC_SPLITS
    + (OOD_SPLIT, FAR_OOD_SPLIT, SHIFTED_TEST_SPLIT, OOD_VAL_SPLIT, FAR_OOD_MATCHED_SPLIT)
)


def random_stream(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """Return the generator of one independent random stream, e.g. of one image of a split."""
    seed_sequence = np.random.SeedSequence(seed, spawn_key=(_RANDOM_STREAMS.index(stream), index))
    return np.random.default_rng(seed_sequence)


class DigitsDetPaths(NamedTuple):
    """Locations of the digits-det files under a datasets root."""

    dataset_dir: str
    """``<root>/digits_det``: the folder :func:`generate_digits_det` returns."""
    voc_dir: str
    """The ID splits in PASCAL VOC layout (JPEGImages, Annotations, ImageSets/Main)."""
    ood_dir: str
    """The OOD split: its images folder and COCO json."""
    ood_image_dir: str
    """Images of the OOD split."""
    ood_json: str
    """COCO instances json of the OOD split."""
    meta_json: str
    """Generation parameters; present only once the dataset is complete."""
    far_ood_image_dir: str
    """Images of the far-OOD split (shapes)."""
    far_ood_json: str
    """COCO instances json of the far-OOD split."""
    shifted_voc_dir: str
    """The covariate-shifted ID test split in PASCAL VOC layout (image set shifted_test)."""
    ood_val_image_dir: str
    """Images of the OOD validation split."""
    ood_val_json: str
    """COCO instances json of the OOD validation split."""
    far_ood_matched_image_dir: str
    """Images of the matched far-OOD split (shapes rendered like the digits)."""
    far_ood_matched_json: str
    """COCO instances json of the matched far-OOD split."""


def digits_det_paths(root: str) -> DigitsDetPaths:
    """Return where the digits-det files live under a datasets root.

    Args:
        root: the datasets root (detectron2's ``DETECTRON2_DATASETS``).

    Returns:
        The paths; nothing needs to exist yet.
    """
    dataset_dir = os.path.join(root, "digits_det")
    ood_dir = os.path.join(dataset_dir, "ood")
    return DigitsDetPaths(
        dataset_dir=dataset_dir,
        voc_dir=os.path.join(dataset_dir, "voc"),
        ood_dir=ood_dir,
        ood_image_dir=os.path.join(ood_dir, "images"),
        ood_json=os.path.join(ood_dir, "annotations.json"),
        meta_json=os.path.join(dataset_dir, "meta.json"),
        far_ood_image_dir=os.path.join(dataset_dir, FAR_OOD_SPLIT, "images"),
        far_ood_json=os.path.join(dataset_dir, FAR_OOD_SPLIT, "annotations.json"),
        shifted_voc_dir=os.path.join(dataset_dir, SHIFTED_TEST_SPLIT),
        ood_val_image_dir=os.path.join(dataset_dir, OOD_VAL_SPLIT, "images"),
        ood_val_json=os.path.join(dataset_dir, OOD_VAL_SPLIT, "annotations.json"),
        far_ood_matched_image_dir=os.path.join(dataset_dir, FAR_OOD_MATCHED_SPLIT, "images"),
        far_ood_matched_json=os.path.join(dataset_dir, FAR_OOD_MATCHED_SPLIT, "annotations.json"),
    )
