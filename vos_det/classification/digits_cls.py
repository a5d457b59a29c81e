"""digits-cls: the classification counterpart of digits-det, an ImageFolder tree of real digits.

Every glyph of scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, shipped
with scikit-learn, no download) becomes one RGB image, upscaled (bilinear) to
``image_size`` x ``image_size``, white digit on black. The glyphs are split into the same
disjoint, digit-stratified train / val / test pools as digits-det
(:func:`vos_det.data.glyph_indices_per_split` with the same seed), so the ID test and the OOD
images use handwriting never seen in training. Digits 0-4 are the ID classes, 5-9 the OOD
ones.

On-disk layout under ``<root>/digits_cls`` (see :func:`digits_cls_paths`)::

    train/<zero..four>/<glyph>.png     ID, train glyph pool   (about 630 images)
    val/<zero..four>/<glyph>.png       ID, val glyph pool     (about 90)
    test/<zero..four>/<glyph>.png      ID, test glyph pool    (about 180)
    ood/<five..nine>/<glyph>.png       OOD, test glyph pool   (about 180)
    meta.json                          generation parameters, written last

``<glyph>`` is the index of the glyph in ``load_digits()`` (4 digits). The tree is built in a
temporary folder and renamed into place, so concurrent processes (several GPUs) never see a
half-written dataset.

Command line::

    python -m vos_det.classification.digits_cls --root datasets
"""
import json
import logging
import os
import shutil
import tempfile
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..data.digits_det_glyphs import (
    DIGIT_NAMES,
    DIGITS_DET_ID_CLASSES,
    DIGITS_DET_OOD_CLASSES,
    glyph_indices_per_split,
    load_glyphs,
)
from ..data.generated_dataset import generator_argument_parser, read_meta

__all__ = [
    "DIGITS_CLS_ID_CLASSES",
    "DIGITS_CLS_OOD_CLASSES",
    "DIGITS_CLS_SPLITS",
    "DEFAULT_IMAGE_SIZE",
    "DigitsClsPaths",
    "digits_cls_paths",
    "generate_digits_cls",
]

logger = logging.getLogger(__name__)

DIGITS_CLS_ID_CLASSES = DIGITS_DET_ID_CLASSES
DIGITS_CLS_OOD_CLASSES = DIGITS_DET_OOD_CLASSES
# Image split -> (glyph pool, digits it holds). The OOD images use the unseen test handwriting.
DIGITS_CLS_SPLITS = {
    "train": ("train", tuple(range(len(DIGITS_CLS_ID_CLASSES)))),
    "val": ("val", tuple(range(len(DIGITS_CLS_ID_CLASSES)))),
    "test": ("test", tuple(range(len(DIGITS_CLS_ID_CLASSES)))),
    "ood": ("test", tuple(range(len(DIGITS_CLS_ID_CLASSES), len(DIGIT_NAMES)))),
}
DEFAULT_IMAGE_SIZE = 32
# Bump when the rendering or the layout changes, so that existing datasets are regenerated.
_FORMAT_VERSION = 1
# load_digits glyph intensities range over 0..16.
_GLYPH_MAX_INTENSITY = 16.0
_MAX_PIXEL_VALUE = 255
_GLYPH_SIDE = 8


class DigitsClsPaths(NamedTuple):
    """Locations of the digits-cls files under a datasets root."""

    dataset_dir: str
    """``<root>/digits_cls``."""
    meta_json: str
    """Generation parameters; present only once the dataset is complete."""

    def split_dir(self, split: str) -> str:
        """The ImageFolder root of one split ("train", "val", "test" or "ood")."""
        return os.path.join(self.dataset_dir, split)


def digits_cls_paths(root: str) -> DigitsClsPaths:
    """Where the digits-cls files live under a datasets root; nothing needs to exist yet."""
    dataset_dir = os.path.join(root, "digits_cls")
    return DigitsClsPaths(dataset_dir=dataset_dir, meta_json=os.path.join(dataset_dir, "meta.json"))


def render_glyph(glyph: np.ndarray, image_size: int) -> np.ndarray:
    """Upscale one 8x8 glyph (0..16) to an (image_size, image_size, 3) uint8 RGB image."""
    glyph_image = Image.fromarray(glyph.astype(np.float32))
    intensity = np.asarray(glyph_image.resize((image_size, image_size), Image.Resampling.BILINEAR))
    gray = np.clip(np.round(intensity / _GLYPH_MAX_INTENSITY * _MAX_PIXEL_VALUE), 0, _MAX_PIXEL_VALUE)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


def generate_digits_cls(
    root: str, *, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, overwrite: bool = False
) -> str:
    """Write digits-cls under ``<root>/digits_cls`` unless an identical one is there.

    Args:
        root: the datasets root (detectron2's ``DETECTRON2_DATASETS``).
        seed: seed of the glyph pools (the digits-det seed they are shared with).
        image_size: side of the square images in pixels (at least 8).
        overwrite: regenerate even if an identical dataset exists.

    Returns:
        The dataset folder, ``<root>/digits_cls``.
    """
    if image_size < _GLYPH_SIDE:
        raise ValueError(f"image_size must be at least {_GLYPH_SIDE}, got {image_size}")
    paths = digits_cls_paths(root)
    parameters = {"format_version": _FORMAT_VERSION, "seed": seed, "image_size": image_size}
    if not overwrite and read_meta(paths.meta_json) == parameters:
        return paths.dataset_dir

    logger.info("Generating digits-cls in %s with %s", paths.dataset_dir, parameters)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".digits_cls.", dir=root)
    try:
        glyphs, digit_of_glyph = load_glyphs()
        pools = glyph_indices_per_split(seed)
        for split, (pool_name, digits) in DIGITS_CLS_SPLITS.items():
            pool = pools[pool_name]
            for digit in digits:
                class_dir = os.path.join(staging, split, DIGIT_NAMES[digit])
                os.makedirs(class_dir)
                for glyph_index in pool[digit_of_glyph[pool] == digit]:
                    Image.fromarray(render_glyph(glyphs[glyph_index], image_size)).save(
                        os.path.join(class_dir, f"{glyph_index:04d}.png")
                    )
        with open(os.path.join(staging, os.path.basename(paths.meta_json)), "w") as f:
            json.dump(parameters, f, indent=2)
        if read_meta(paths.meta_json) == parameters and not overwrite:
            # Another process finished the same dataset meanwhile.
            return paths.dataset_dir
        shutil.rmtree(paths.dataset_dir, ignore_errors=True)
        try:
            os.replace(staging, paths.dataset_dir)
        except OSError:
            # Another process put its dataset in place between the removal and the rename.
            if read_meta(paths.meta_json) != parameters:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths.dataset_dir


def main() -> None:
    """Command-line entry point: generate digits-cls under ``--root``."""
    parser = generator_argument_parser(__doc__.splitlines()[0], "digits_cls", DEFAULT_IMAGE_SIZE)
    options = vars(parser.parse_args())
    logging.basicConfig(level=logging.INFO)
    print(generate_digits_cls(options.pop("root"), **options))


if __name__ == "__main__":
    main()
