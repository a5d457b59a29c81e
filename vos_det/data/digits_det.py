"""The digits-det benchmark: a small, deterministic OOD detection benchmark made of real digits.

Glyphs of scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, shipped with
scikit-learn, no download) are upscaled and pasted at random, non-overlapping positions onto
textured RGB canvases. Digits 0-4 are the in-distribution (ID) classes and digits 5-9 the
out-of-distribution (OOD) ones. The glyphs are split into disjoint train / val / test pools,
stratified by digit, so that evaluation images use handwriting never seen in training.

On-disk layout under ``<root>/digits_det`` (see :func:`digits_det_paths`)::

    voc/JPEGImages/<id>.jpg          ID images (digits 0-4 only), PASCAL VOC layout that
    voc/Annotations/<id>.xml         detectron2's ``load_voc_instances`` reads unchanged;
    voc/ImageSets/Main/{train,val,test}.txt
    ood/images/<id>.jpg              OOD images (digits 5-9 only, test glyph pool),
    ood/annotations.json             COCO instances json, categories "five".."nine" = ids 1..5
    far_ood/images/<id>.jpg          far-OOD: non-digit shapes (TEST_SHAPES of
    far_ood/annotations.json         digits_det_shapes) on the same canvases, COCO json
    shifted_test/...                 covariate shift: digits 0-4 (test glyph pool) on the
                                     canvas styles of digits_det_canvases, VOC layout (image
                                     set shifted_test; shifted_test_styles.json names each
                                     image's style); every box is ID
    ood_val/images/<id>.jpg          OOD validation: digits 5-9 of the val glyph pool and
    ood_val/annotations.json         VALIDATION_SHAPES (kinds absent from far_ood), COCO json
    far_ood_matched/images/<id>.jpg  matched far-OOD: the shapes of far_ood made 8x8 glyphs the
    far_ood_matched/annotations.json way load_digits was made and pasted like the digits
                                     (same upscaling, canvases, JPEG quality), COCO json
    meta.json                        generation parameters, written last: marks completion

Every image is drawn from its own random stream keyed by (seed, split, image index), so the
first N images of a split do not depend on the sizes of the other splits, and the splits
added later (far_ood, shifted_test, ood_val, far_ood_matched) left the files of the others
byte-identical. A dataset made before far_ood_matched existed gets that split added alone.

far_ood differs from the ID digits in rendering (sharp shapes rasterised at the pasted size
against blurry upscaled 8x8 bitmaps) as well as in meaning; far_ood_matched differs in
meaning only, like the near-OOD split.

Hyperparameters are chosen on val + ood_val, never on a test split.

Command line::

    python -m vos_det.data.digits_det --root datasets --seed 0 --num-train 1200
"""
import json
import logging
import os
import shutil
from typing import Optional

from tqdm import tqdm

from ..utils.file_io import atomic_open
from .digits_det_canvases import SHIFTED_CANVAS_STYLES
from .digits_det_glyphs import (
    DIGIT_NAMES,
    DIGITS_DET_ID_CLASSES,
    DIGITS_DET_OOD_CLASSES,
    ID_DIGITS,
    OOD_DIGITS,
    glyph_indices_per_split,
    load_glyphs,
)
from .digits_det_objects import glyph_picker, matched_shape_picker, mixed_picker, shape_picker
from .digits_det_render import MAX_GLYPH_SIZE
from .digits_det_shapes import TEST_SHAPES, VALIDATION_SHAPES
from .digits_det_splits import (
    FAR_OOD_MATCHED_SPLIT,
    FAR_OOD_SPLIT,
    OOD_SPLIT,
    OOD_VAL_SPLIT,
    SHIFTED_TEST_SPLIT,
    SPLIT_GLYPH_POOL,
    VOC_SPLITS,
    DigitsDetPaths,
    digits_det_paths,
)
from .digits_det_writers import write_coco_split, write_voc_split
from .generated_dataset import generator_argument_parser, read_meta

__all__ = [
    "DIGITS_DET_FAR_OOD_CLASSES",
    "DIGITS_DET_ID_CLASSES",
    "DIGITS_DET_OOD_CLASSES",
    "DIGITS_DET_OOD_VAL_CLASSES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_OOD",
    "DEFAULT_NUM_TEST",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "DigitsDetPaths",
    "digits_det_paths",
    "generate_digits_det",
    "glyph_indices_per_split",
]

logger = logging.getLogger(__name__)

# Classes of the far-OOD test splits (shapes, sharp or matched) and of the OOD validation split (digits 5-9 of
# the val glyph pool, and shapes of other kinds than the far-OOD ones).
DIGITS_DET_FAR_OOD_CLASSES = TEST_SHAPES
DIGITS_DET_OOD_VAL_CLASSES = DIGITS_DET_OOD_CLASSES + VALIDATION_SHAPES

# Default generation parameters (see generate_digits_det).
DEFAULT_IMAGE_SIZE = 128
DEFAULT_NUM_TRAIN = 1200
DEFAULT_NUM_VAL = 200
DEFAULT_NUM_TEST = 300
DEFAULT_NUM_OOD = 300

# Bump when the rendering or the file format changes, so that existing datasets are regenerated.
_FORMAT_VERSION = 1
# Fraction of the objects of the OOD validation split that are digits (the rest are shapes).
_OOD_VAL_DIGIT_FRACTION = 0.5
# detectron2's load_voc_instances reads an image set with np.loadtxt, which turns a one-line
# file into a 0-d array that cannot be iterated.
_MIN_VOC_SPLIT_SIZE = 2
_MIN_OOD_SPLIT_SIZE = 1
# The generation parameter of the split added last; a dataset whose meta.json lacks only it
# gets that split written alone.
_ADDED_SPLIT_PARAMETER = "num_far_ood_matched"


def generate_digits_det(
    root: str,
    *,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    num_test: int = DEFAULT_NUM_TEST,
    num_ood: int = DEFAULT_NUM_OOD,
    num_far_ood: Optional[int] = None,
    num_shifted_test: Optional[int] = None,
    num_ood_val: Optional[int] = None,
    num_far_ood_matched: Optional[int] = None,
    overwrite: bool = False,
) -> str:
    """Generate the digits-det benchmark under ``<root>/digits_det`` unless it already exists.

    Idempotent: when ``meta.json`` records a complete dataset made with the same parameters,
    nothing is written; when it records one made with them before the matched far-OOD split
    existed, only that split is written (the files of the others, which readers may be
    using, are left alone). Otherwise (or with ``overwrite``) the dataset is removed and rendered
    again; ``meta.json`` is written last, atomically, so an interrupted run is redone.

    Args:
        root: the datasets root (detectron2's ``DETECTRON2_DATASETS``).
        seed: seed of the glyph pools and of every image.
        image_size: side of the square images in pixels; at least the largest glyph side.
        num_train: number of ID training images (train glyph pool).
        num_val: number of ID validation images (val glyph pool).
        num_test: number of ID test images (test glyph pool).
        num_ood: number of OOD images (digits 5-9, test glyph pool).
        num_far_ood: number of far-OOD images (shapes of TEST_SHAPES); None = ``num_ood``.
        num_shifted_test: number of covariate-shifted ID test images (digits 0-4, test glyph
            pool, canvas styles of SHIFTED_CANVAS_STYLES); None = ``num_test``.
        num_ood_val: number of OOD validation images (digits 5-9 of the val glyph pool and
            shapes of VALIDATION_SHAPES); None = ``num_val``.
        num_far_ood_matched: number of matched far-OOD images (shapes of TEST_SHAPES rendered
            like the digits); None = ``num_far_ood``.
        overwrite: regenerate even if an identical dataset exists.

    Returns:
        The dataset folder, ``<root>/digits_det``.

    Raises:
        ValueError: if ``image_size`` cannot hold the largest glyph or a split is too small
            for detectron2's loaders (ID splits need 2 images, the OOD splits 1).
    """
    num_far_ood = num_ood if num_far_ood is None else num_far_ood
    num_shifted_test = num_test if num_shifted_test is None else num_shifted_test
    num_ood_val = num_val if num_ood_val is None else num_ood_val
    num_far_ood_matched = num_far_ood if num_far_ood_matched is None else num_far_ood_matched
    # In the order of meta.json.
    parameters = _checked_parameters(
        seed=seed,
        image_size=image_size,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        num_ood=num_ood,
        num_far_ood=num_far_ood,
        num_shifted_test=num_shifted_test,
        num_ood_val=num_ood_val,
        num_far_ood_matched=num_far_ood_matched,
    )
    paths = digits_det_paths(root)
    existing = {} if overwrite else read_meta(paths.meta_json)
    if existing == parameters:
        logger.info("digits-det already generated in %s", paths.dataset_dir)
        return paths.dataset_dir
    before_added_split = {k: v for k, v in parameters.items() if k != _ADDED_SPLIT_PARAMETER}
    if existing and existing == before_added_split:
        # meta.json keeps its old parameters until the split is complete, so an interrupted
        # run comes back here.
        logger.info("Adding the %s split to %s", FAR_OOD_MATCHED_SPLIT, paths.dataset_dir)
        with tqdm(total=num_far_ood_matched, desc="digits-det", unit="img") as progress:
            _write_far_ood_matched(paths, num_far_ood_matched, seed, image_size, progress)
    else:
        _clear_dataset(paths)
        logger.info("Generating digits-det in %s with %s", paths.dataset_dir, parameters)
        num_images = sum(value for key, value in parameters.items() if key.startswith("num_"))
        with tqdm(total=num_images, desc="digits-det", unit="img") as progress:
            _write_splits(paths, parameters, progress)
    with atomic_open(paths.meta_json, "w") as f:
        json.dump(parameters, f, indent=2)
    return paths.dataset_dir


def _checked_parameters(*, seed: int, image_size: int, **split_sizes: int) -> dict:
    """The parameters meta.json records: the format version, the seed, the image size and the
    ``num_<split>`` of every split, checked.

    Raises:
        ValueError: ``image_size`` cannot hold the largest glyph, or a split is too small for
            detectron2's loaders (ID splits need 2 images, the OOD splits 1).
    """
    if image_size < MAX_GLYPH_SIZE:
        raise ValueError(f"image_size must be at least {MAX_GLYPH_SIZE}, got {image_size}")
    minimum_sizes = [(split, _MIN_VOC_SPLIT_SIZE) for split in VOC_SPLITS + (SHIFTED_TEST_SPLIT,)]
    minimum_sizes += [
        (split, _MIN_OOD_SPLIT_SIZE) for split in (OOD_SPLIT, FAR_OOD_SPLIT, OOD_VAL_SPLIT, FAR_OOD_MATCHED_SPLIT)
    ]
    for split, minimum in minimum_sizes:
        if split_sizes[f"num_{split}"] < minimum:
            raise ValueError(f"num_{split} must be at least {minimum}, got {split_sizes[f'num_{split}']}")
    return {"format_version": _FORMAT_VERSION, "seed": seed, "image_size": image_size, **split_sizes}


def _clear_dataset(paths: DigitsDetPaths) -> None:
    """Remove meta.json (first: a dataset interrupted later is never taken as complete) and
    every generated folder, and make the empty folders of the splits."""
    if os.path.exists(paths.meta_json):
        os.remove(paths.meta_json)
    generated_dirs = (
        paths.voc_dir,
        paths.ood_dir,
        paths.shifted_voc_dir,
        os.path.dirname(paths.far_ood_json),
        os.path.dirname(paths.ood_val_json),
        os.path.dirname(paths.far_ood_matched_json),
    )
    for generated_dir in generated_dirs:
        shutil.rmtree(generated_dir, ignore_errors=True)
    for voc_dir in (paths.voc_dir, paths.shifted_voc_dir):
        for subdir in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(voc_dir, subdir))
    for image_dir in (paths.ood_image_dir, paths.far_ood_image_dir, paths.ood_val_image_dir):
        os.makedirs(image_dir)


def _write_splits(paths: DigitsDetPaths, parameters: dict, progress: tqdm) -> None:
    """Render every split of :func:`generate_digits_det`'s ``parameters`` into the empty
    folders of :func:`_clear_dataset`: the original splits first, in their original order."""
    seed, image_size = parameters["seed"], parameters["image_size"]
    pools = glyph_indices_per_split(seed)
    glyph_images, digit_of_glyph = load_glyphs()

    def glyphs(split, digits):
        pool = pools[SPLIT_GLYPH_POOL[split]]
        return glyph_picker(glyph_images, digit_of_glyph, pool, [DIGIT_NAMES[d] for d in digits], digits)

    for split in VOC_SPLITS:
        write_voc_split(
            paths.voc_dir, split, parameters[f"num_{split}"], seed, image_size, glyphs(split, ID_DIGITS), progress
        )
    write_coco_split(
        paths.ood_image_dir, paths.ood_json, OOD_SPLIT, parameters["num_ood"], seed, image_size,
        glyphs(OOD_SPLIT, OOD_DIGITS), [(name, "digit") for name in DIGITS_DET_OOD_CLASSES],
        "digits-det OOD split (digits 5-9)", progress,
    )
    write_coco_split(
        paths.far_ood_image_dir, paths.far_ood_json, FAR_OOD_SPLIT, parameters["num_far_ood"], seed,
        image_size, shape_picker(TEST_SHAPES),
        [(name, "shape") for name in DIGITS_DET_FAR_OOD_CLASSES],
        "digits-det far-OOD split (non-digit shapes)", progress,
    )
    write_voc_split(
        paths.shifted_voc_dir, SHIFTED_TEST_SPLIT, parameters["num_shifted_test"], seed, image_size,
        glyphs(SHIFTED_TEST_SPLIT, ID_DIGITS), progress, styles=SHIFTED_CANVAS_STYLES,
    )
    write_coco_split(
        paths.ood_val_image_dir, paths.ood_val_json, OOD_VAL_SPLIT, parameters["num_ood_val"], seed,
        image_size,
        mixed_picker(
            glyphs(OOD_VAL_SPLIT, OOD_DIGITS), shape_picker(VALIDATION_SHAPES),
            _OOD_VAL_DIGIT_FRACTION,
        ),
        [(name, "digit") for name in DIGITS_DET_OOD_CLASSES]
        + [(name, "shape") for name in VALIDATION_SHAPES],
        "digits-det OOD validation split (digits 5-9 of the val glyph pool, other shapes)",
        progress,
    )
    _write_far_ood_matched(paths, parameters[_ADDED_SPLIT_PARAMETER], seed, image_size, progress)


def _write_far_ood_matched(
    paths: DigitsDetPaths, num_images: int, seed: int, image_size: int, progress: tqdm
) -> None:
    """(Re)write the matched far-OOD split: TEST_SHAPES made 8x8 glyphs, pasted like digits."""
    shutil.rmtree(os.path.dirname(paths.far_ood_matched_json), ignore_errors=True)
    os.makedirs(paths.far_ood_matched_image_dir)
    write_coco_split(
        paths.far_ood_matched_image_dir, paths.far_ood_matched_json, FAR_OOD_MATCHED_SPLIT,
        num_images, seed, image_size, matched_shape_picker(TEST_SHAPES),
        [(name, "shape") for name in DIGITS_DET_FAR_OOD_CLASSES],
        "digits-det matched far-OOD split (non-digit shapes rendered like the digits)",
        progress,
    )


def main() -> None:
    """Command-line entry point: generate digits-det under ``--root``."""
    parser = generator_argument_parser(__doc__.splitlines()[0], "digits_det", DEFAULT_IMAGE_SIZE)
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument("--num-test", type=int, default=DEFAULT_NUM_TEST)
    parser.add_argument("--num-ood", type=int, default=DEFAULT_NUM_OOD)
    parser.add_argument("--num-far-ood", type=int, help="default: --num-ood")
    parser.add_argument("--num-shifted-test", type=int, help="default: --num-test")
    parser.add_argument("--num-ood-val", type=int, help="default: --num-val")
    parser.add_argument("--num-far-ood-matched", type=int, help="default: --num-far-ood")
    options = vars(parser.parse_args())
    logging.basicConfig(level=logging.INFO)
    print(generate_digits_det(options.pop("root"), **options))


if __name__ == "__main__":
    main()
