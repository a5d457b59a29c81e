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
    meta.json                        generation parameters, written last: marks completion

Every image is drawn from its own random stream keyed by (seed, split, image index), so the
first N images of a split do not depend on the sizes of the other splits, and the splits
added later (far_ood, shifted_test, ood_val) left the files of the others byte-identical.
Hyperparameters are chosen on val + ood_val, never on a test split.

Command line::

    python -m vos_det.data.digits_det --root datasets --seed 0 --num-train 1200
"""
import argparse
import functools
import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from tqdm import tqdm

from ..utils.file_io import atomic_open
from .digits_det_canvases import SHIFTED_CANVAS_STYLES, CanvasStyle, textured_background
from .digits_det_objects import PickObject, glyph_picker, mixed_picker, shape_picker
from .digits_det_shapes import TEST_SHAPES, VALIDATION_SHAPES

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

DIGITS_DET_ID_CLASSES = ("zero", "one", "two", "three", "four")
DIGITS_DET_OOD_CLASSES = ("five", "six", "seven", "eight", "nine")
# The digit shown by a glyph is its index in this tuple.
_DIGIT_NAMES = DIGITS_DET_ID_CLASSES + DIGITS_DET_OOD_CLASSES
_ID_DIGITS = tuple(range(len(DIGITS_DET_ID_CLASSES)))
_OOD_DIGITS = tuple(range(len(DIGITS_DET_ID_CLASSES), len(_DIGIT_NAMES)))
# Classes of the far-OOD test split (shapes) and of the OOD validation split (digits 5-9 of
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

# Fractions of the glyphs of every digit that go to each glyph pool (stratified, disjoint).
_GLYPH_POOL_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# The glyph pool each image split draws from; OOD images use the unseen test handwriting.
# The shifted ID test split uses the test handwriting too; the OOD validation split the val
# handwriting, so that no test glyph is seen when choosing hyperparameters.
_SPLIT_GLYPH_POOL = {
    "train": "train",
    "val": "val",
    "test": "test",
    "ood": "test",
    "shifted_test": "test",
    "ood_val": "val",
}
_VOC_SPLITS = ("train", "val", "test")
_OOD_SPLIT = "ood"
# The splits of the multi-shift benchmark (see the module docstring).
_FAR_OOD_SPLIT = "far_ood"
_SHIFTED_TEST_SPLIT = "shifted_test"
_OOD_VAL_SPLIT = "ood_val"
# Independent random streams, keyed by their position here: the glyph-pool split, then one
# per image split. New splits are appended, so that the streams (and the files) of the
# earlier ones never change.
_RANDOM_STREAMS = (
    ("glyph_pools",)
    + _VOC_SPLITS
    + (_OOD_SPLIT, _FAR_OOD_SPLIT, _SHIFTED_TEST_SPLIT, _OOD_VAL_SPLIT)
)
# Fraction of the objects of the OOD validation split that are digits (the rest are shapes).
_OOD_VAL_DIGIT_FRACTION = 0.5

_MIN_DIGITS_PER_IMAGE = 1
_MAX_DIGITS_PER_IMAGE = 4
# Side of the square a glyph is upscaled to, in pixels (inclusive range).
_MIN_GLYPH_SIZE = 20
_MAX_GLYPH_SIZE = 48
# Random placements tried per digit before the image keeps fewer digits.
_MAX_PLACEMENT_ATTEMPTS = 50

_NUM_CHANNELS = 3

# Foreground: a random colour whose luminance differs from that of the background under the
# glyph by at least this much, drawn with an opacity in the given range.
_MIN_FOREGROUND_LUMINANCE_CONTRAST = 0.35
_MAX_FOREGROUND_COLOUR_ATTEMPTS = 100
# Backgrounds brighter than this get black digits when no random colour contrasts enough.
_MID_LUMINANCE = 0.5
_FOREGROUND_OPACITY_RANGE = (0.8, 1.0)
# ITU-R BT.601 luma weights of R, G, B.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])

_JPEG_QUALITY = 95
_MAX_PIXEL_VALUE = 255
# VOC annotations count pixels from 1 (detectron2 subtracts 1 from xmin / ymin on load).
_VOC_PIXEL_INDEX_BASE = 1
# detectron2's load_voc_instances reads an image set with np.loadtxt, which turns a one-line
# file into a 0-d array that cannot be iterated.
_MIN_VOC_SPLIT_SIZE = 2
_MIN_OOD_SPLIT_SIZE = 1
# COCO category ids of the OOD digits start at 1.
_FIRST_COCO_CATEGORY_ID = 1


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
        far_ood_image_dir=os.path.join(dataset_dir, _FAR_OOD_SPLIT, "images"),
        far_ood_json=os.path.join(dataset_dir, _FAR_OOD_SPLIT, "annotations.json"),
        shifted_voc_dir=os.path.join(dataset_dir, _SHIFTED_TEST_SPLIT),
        ood_val_image_dir=os.path.join(dataset_dir, _OOD_VAL_SPLIT, "images"),
        ood_val_json=os.path.join(dataset_dir, _OOD_VAL_SPLIT, "annotations.json"),
    )


@functools.lru_cache(maxsize=1)
def _load_glyphs() -> Tuple[np.ndarray, np.ndarray]:
    """Return the load_digits glyphs, (N, 8, 8) float32 in 0..16, and their digits, (N,)."""
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target


def _random_stream(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """Return the generator of one independent random stream, e.g. of one image of a split."""
    seed_sequence = np.random.SeedSequence(seed, spawn_key=(_RANDOM_STREAMS.index(stream), index))
    return np.random.default_rng(seed_sequence)


def glyph_indices_per_split(seed: int = 0) -> Dict[str, np.ndarray]:
    """Split the load_digits glyphs into disjoint train / val / test pools, stratified by digit.

    Args:
        seed: the dataset seed (the same one :func:`generate_digits_det` takes).

    Returns:
        Sorted indices into ``sklearn.datasets.load_digits()`` for each of "train", "val" and
        "test". The OOD images use the "test" pool.
    """
    _, digit_of_glyph = _load_glyphs()
    rng = _random_stream(seed, "glyph_pools")
    pools: Dict[str, List[np.ndarray]] = {name: [] for name in _GLYPH_POOL_FRACTIONS}
    cumulative_fractions = np.cumsum(list(_GLYPH_POOL_FRACTIONS.values()))
    for digit in range(len(_DIGIT_NAMES)):
        glyphs = rng.permutation(np.flatnonzero(digit_of_glyph == digit))
        boundaries = np.round(cumulative_fractions * len(glyphs)).astype(int)
        for name, pool_part in zip(pools, np.split(glyphs, boundaries[:-1])):
            pools[name].append(pool_part)
    return {name: np.sort(np.concatenate(parts)) for name, parts in pools.items()}


def _contrasting_colour(rng: np.random.Generator, background_colour: np.ndarray) -> np.ndarray:
    """Draw a random RGB colour whose luminance stands out from ``background_colour``."""
    background_luminance = background_colour @ _LUMA_WEIGHTS
    for _ in range(_MAX_FOREGROUND_COLOUR_ATTEMPTS):
        colour = rng.uniform(0.0, 1.0, size=_NUM_CHANNELS)
        if abs(colour @ _LUMA_WEIGHTS - background_luminance) >= _MIN_FOREGROUND_LUMINANCE_CONTRAST:
            return colour
    # Black or white, whichever contrasts more, always satisfies the contrast.
    return np.full(_NUM_CHANNELS, 0.0 if background_luminance > _MID_LUMINANCE else 1.0)


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
        side = int(rng.integers(_MIN_GLYPH_SIZE, _MAX_GLYPH_SIZE, endpoint=True))
        x, y = (int(v) for v in rng.integers(0, image_size - side, size=2, endpoint=True))
        if not any(_squares_overlap((x, y, side), square) for square in occupied):
            return x, y, side
    return None


def _render_image(
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


def _voc_annotation(
    image_id: str, image_size: int, boxes: List[Tuple[int, int, int, int]], labels: List[str]
) -> ET.ElementTree:
    """Build the PASCAL VOC XML of one image (boxes as 1-based inclusive pixel indices)."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "digits_det"
    ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(annotation, "size")
    ET.SubElement(size, "width").text = str(image_size)
    ET.SubElement(size, "height").text = str(image_size)
    ET.SubElement(size, "depth").text = str(_NUM_CHANNELS)
    ET.SubElement(annotation, "segmented").text = "0"
    for (x0, y0, x1, y1), name in zip(boxes, labels):
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1)):
            ET.SubElement(bndbox, tag).text = str(value + _VOC_PIXEL_INDEX_BASE)
    tree = ET.ElementTree(annotation)
    ET.indent(tree)
    return tree


def _write_voc_split(
    voc_dir: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    pick_object: PickObject,
    progress: tqdm,
    styles: Optional[Dict[str, CanvasStyle]] = None,
) -> None:
    """Render the images of one ID split and write them in PASCAL VOC layout.

    With ``styles``, each image first draws one of them uniformly; the style of every
    image is then written to ``<voc_dir>/<split>_styles.json``.
    """
    image_dir = os.path.join(voc_dir, "JPEGImages")
    annotation_dir = os.path.join(voc_dir, "Annotations")
    image_ids = [f"{split}_{index:06d}" for index in range(num_images)]
    style_of_image = {}
    for index, image_id in enumerate(image_ids):
        rng = _random_stream(seed, split, index)
        style = None
        if styles:
            style_of_image[image_id] = list(styles)[rng.integers(len(styles))]
            style = styles[style_of_image[image_id]]
        image, boxes, labels = _render_image(rng, pick_object, image_size, style)
        Image.fromarray(image).save(
            os.path.join(image_dir, f"{image_id}.jpg"), quality=_JPEG_QUALITY
        )
        _voc_annotation(image_id, image_size, boxes, labels).write(
            os.path.join(annotation_dir, f"{image_id}.xml"), encoding="utf-8"
        )
        progress.update()
    with open(os.path.join(voc_dir, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{image_id}\n" for image_id in image_ids))
    if styles:
        with open(os.path.join(voc_dir, f"{split}_styles.json"), "w") as f:
            json.dump(style_of_image, f, indent=1)


def _write_coco_split(
    image_dir: str,
    json_file: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    pick_object: PickObject,
    categories: Sequence[Tuple[str, str]],
    description: str,
    progress: tqdm,
) -> None:
    """Render the images of one OOD split and write them with a COCO instances json.

    Args:
        categories: (name, supercategory) of every class ``pick_object`` may draw; their
            COCO ids are 1, 2, ... in this order.
        description: the json's ``info.description``.
    """
    category_id_of_name = {
        name: _FIRST_COCO_CATEGORY_ID + rank for rank, (name, _) in enumerate(categories)
    }
    images, annotations = [], []
    for index in range(num_images):
        rng = _random_stream(seed, split, index)
        image, boxes, labels = _render_image(rng, pick_object, image_size)
        file_name = f"{split}_{index:06d}.jpg"
        Image.fromarray(image).save(os.path.join(image_dir, file_name), quality=_JPEG_QUALITY)
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for (x0, y0, x1, y1), name in zip(boxes, labels):
            width, height = x1 + 1 - x0, y1 + 1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id_of_name[name],
                    "bbox": [x0, y0, width, height],
                    "area": width * height,
                    "iscrowd": 0,
                }
            )
        progress.update()
    coco = {
        "info": {"description": description},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": category_id_of_name[name], "name": name, "supercategory": supercategory}
            for name, supercategory in categories
        ],
    }
    with open(json_file, "w") as f:
        json.dump(coco, f)


def _read_meta(meta_json: str) -> Dict:
    """Return the parameters of a complete dataset, or an empty dict if there is none."""
    if not os.path.isfile(meta_json):
        return {}
    with open(meta_json) as f:
        return json.load(f)


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
    overwrite: bool = False,
) -> str:
    """Generate the digits-det benchmark under ``<root>/digits_det`` unless it already exists.

    Idempotent: when ``meta.json`` records a complete dataset made with the same parameters,
    nothing is written. Otherwise (or with ``overwrite``) the dataset is removed and rendered
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
        overwrite: regenerate even if an identical dataset exists.

    Returns:
        The dataset folder, ``<root>/digits_det``.

    Raises:
        ValueError: if ``image_size`` cannot hold the largest glyph or a split is too small
            for detectron2's loaders (ID splits need 2 images, the OOD splits 1).
    """
    if image_size < _MAX_GLYPH_SIZE:
        raise ValueError(f"image_size must be at least {_MAX_GLYPH_SIZE}, got {image_size}")
    num_far_ood = num_ood if num_far_ood is None else num_far_ood
    num_shifted_test = num_test if num_shifted_test is None else num_shifted_test
    num_ood_val = num_val if num_ood_val is None else num_ood_val
    split_sizes = dict(
        zip(_VOC_SPLITS + (_SHIFTED_TEST_SPLIT,), (num_train, num_val, num_test, num_shifted_test))
    )
    for split, num_images in split_sizes.items():
        if num_images < _MIN_VOC_SPLIT_SIZE:
            raise ValueError(
                f"num_{split} must be at least {_MIN_VOC_SPLIT_SIZE}, got {num_images}"
            )
    ood_split_sizes = {_OOD_SPLIT: num_ood, _FAR_OOD_SPLIT: num_far_ood, _OOD_VAL_SPLIT: num_ood_val}
    for split, num_images in ood_split_sizes.items():
        if num_images < _MIN_OOD_SPLIT_SIZE:
            raise ValueError(
                f"num_{split} must be at least {_MIN_OOD_SPLIT_SIZE}, got {num_images}"
            )

    paths = digits_det_paths(root)
    parameters = {
        "format_version": _FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_ood": num_ood,
        "num_far_ood": num_far_ood,
        "num_shifted_test": num_shifted_test,
        "num_ood_val": num_ood_val,
    }
    if not overwrite and _read_meta(paths.meta_json) == parameters:
        logger.info("digits-det already generated in %s", paths.dataset_dir)
        return paths.dataset_dir

    # Invalidate first, so that a dataset interrupted below is never taken as complete.
    if os.path.exists(paths.meta_json):
        os.remove(paths.meta_json)
    generated_dirs = (
        paths.voc_dir,
        paths.ood_dir,
        paths.shifted_voc_dir,
        os.path.dirname(paths.far_ood_json),
        os.path.dirname(paths.ood_val_json),
    )
    for generated_dir in generated_dirs:
        shutil.rmtree(generated_dir, ignore_errors=True)
    for voc_dir in (paths.voc_dir, paths.shifted_voc_dir):
        for subdir in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(voc_dir, subdir))
    for image_dir in (paths.ood_image_dir, paths.far_ood_image_dir, paths.ood_val_image_dir):
        os.makedirs(image_dir)

    logger.info("Generating digits-det in %s with %s", paths.dataset_dir, parameters)
    pools = glyph_indices_per_split(seed)

    glyph_images, digit_of_glyph = _load_glyphs()

    def glyphs(split, digits):
        pool = pools[_SPLIT_GLYPH_POOL[split]]
        return glyph_picker(glyph_images, digit_of_glyph, pool, [_DIGIT_NAMES[d] for d in digits], digits)

    total_images = sum(split_sizes.values()) + sum(ood_split_sizes.values())
    with tqdm(total=total_images, desc="digits-det", unit="img") as progress:
        # The original splits first, in their original order.
        for split in _VOC_SPLITS:
            _write_voc_split(
                paths.voc_dir, split, split_sizes[split], seed, image_size,
                glyphs(split, _ID_DIGITS), progress,
            )
        _write_coco_split(
            paths.ood_image_dir, paths.ood_json, _OOD_SPLIT, num_ood, seed, image_size,
            glyphs(_OOD_SPLIT, _OOD_DIGITS), [(name, "digit") for name in DIGITS_DET_OOD_CLASSES],
            "digits-det OOD split (digits 5-9)", progress,
        )
        _write_coco_split(
            paths.far_ood_image_dir, paths.far_ood_json, _FAR_OOD_SPLIT, num_far_ood, seed,
            image_size, shape_picker(TEST_SHAPES),
            [(name, "shape") for name in DIGITS_DET_FAR_OOD_CLASSES],
            "digits-det far-OOD split (non-digit shapes)", progress,
        )
        _write_voc_split(
            paths.shifted_voc_dir, _SHIFTED_TEST_SPLIT, num_shifted_test, seed, image_size,
            glyphs(_SHIFTED_TEST_SPLIT, _ID_DIGITS), progress, styles=SHIFTED_CANVAS_STYLES,
        )
        _write_coco_split(
            paths.ood_val_image_dir, paths.ood_val_json, _OOD_VAL_SPLIT, num_ood_val, seed,
            image_size,
            mixed_picker(
                glyphs(_OOD_VAL_SPLIT, _OOD_DIGITS), shape_picker(VALIDATION_SHAPES),
                _OOD_VAL_DIGIT_FRACTION,
            ),
            [(name, "digit") for name in DIGITS_DET_OOD_CLASSES]
            + [(name, "shape") for name in VALIDATION_SHAPES],
            "digits-det OOD validation split (digits 5-9 of the val glyph pool, other shapes)",
            progress,
        )

    with atomic_open(paths.meta_json, "w") as f:
        json.dump(parameters, f, indent=2)
    return paths.dataset_dir


def main() -> None:
    """Command-line entry point: generate digits-det under ``--root``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root; the dataset goes to <root>/digits_det (default: $DETECTRON2_DATASETS "
        "or ./datasets)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument("--num-test", type=int, default=DEFAULT_NUM_TEST)
    parser.add_argument("--num-ood", type=int, default=DEFAULT_NUM_OOD)
    parser.add_argument("--num-far-ood", type=int, help="default: --num-ood")
    parser.add_argument("--num-shifted-test", type=int, help="default: --num-test")
    parser.add_argument("--num-ood-val", type=int, help="default: --num-val")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if it exists")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    dataset_dir = generate_digits_det(
        args.root,
        seed=args.seed,
        image_size=args.image_size,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        num_ood=args.num_ood,
        num_far_ood=args.num_far_ood,
        num_shifted_test=args.num_shifted_test,
        num_ood_val=args.num_ood_val,
        overwrite=args.overwrite,
    )
    print(dataset_dir)


if __name__ == "__main__":
    main()
