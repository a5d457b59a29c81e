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
    meta.json                        generation parameters, written last: marks completion

Every image is drawn from its own random stream keyed by (seed, split, image index), so the
first N images of a split do not depend on the sizes of the other splits.

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
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from tqdm import tqdm

from ..utils.file_io import atomic_open

__all__ = [
    "DIGITS_DET_ID_CLASSES",
    "DIGITS_DET_OOD_CLASSES",
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
_SPLIT_GLYPH_POOL = {"train": "train", "val": "val", "test": "test", "ood": "test"}
_VOC_SPLITS = ("train", "val", "test")
_OOD_SPLIT = "ood"
# Independent random streams, keyed by their position here: the glyph-pool split, then one
# per image split.
_RANDOM_STREAMS = ("glyph_pools",) + _VOC_SPLITS + (_OOD_SPLIT,)

# load_digits glyph intensities range over 0..16.
_GLYPH_MAX_INTENSITY = 16.0
# A scaled glyph pixel belongs to the digit (and to its box) when its bilinear intensity
# rounds to at least 1 on that 0..16 scale.
_GLYPH_VISIBLE_INTENSITY = 0.5
_MIN_DIGITS_PER_IMAGE = 1
_MAX_DIGITS_PER_IMAGE = 4
# Side of the square a glyph is upscaled to, in pixels (inclusive range).
_MIN_GLYPH_SIZE = 20
_MAX_GLYPH_SIZE = 48
# Random placements tried per digit before the image keeps fewer digits.
_MAX_PLACEMENT_ATTEMPTS = 50

# Background: a tint colour modulated by smooth low-frequency noise (bicubic upscaling of a
# coarse random grid) plus per-pixel fine noise. Colours are in [0, 1].
_NUM_CHANNELS = 3
_BACKGROUND_TINT_RANGE = (0.1, 0.9)
_BACKGROUND_GRID_CELLS_RANGE = (3, 8)
_BACKGROUND_LOW_FREQUENCY_AMPLITUDE = 0.15
_BACKGROUND_FINE_NOISE_STD = 0.03
# Per-channel gain of the texture, so that the texture itself is tinted.
_BACKGROUND_CHANNEL_GAIN_RANGE = (0.5, 1.5)

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


def _textured_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
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
    tint = rng.uniform(*_BACKGROUND_TINT_RANGE, size=_NUM_CHANNELS)
    channel_gain = rng.uniform(*_BACKGROUND_CHANNEL_GAIN_RANGE, size=_NUM_CHANNELS)
    return np.clip(tint + texture[..., None] * channel_gain, 0.0, 1.0)


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
    rng: np.random.Generator, glyph_pool: np.ndarray, digits: Tuple[int, ...], image_size: int
) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]], List[int]]:
    """Render one canvas with 1 to 4 non-overlapping glyphs of the given digits.

    Args:
        rng: the image's random stream.
        glyph_pool: indices of the load_digits glyphs to draw from.
        digits: the digits that may appear; each pasted glyph picks one uniformly.
        image_size: side of the square canvas in pixels.

    Returns:
        The image (H, W, 3) uint8; per glyph its tight box as (x0, y0, x1, y1) inclusive pixel
        indices; and per glyph its digit.
    """
    glyph_images, digit_of_glyph = _load_glyphs()
    canvas = _textured_background(rng, image_size)
    num_digits = rng.integers(_MIN_DIGITS_PER_IMAGE, _MAX_DIGITS_PER_IMAGE, endpoint=True)
    squares: List[Tuple[int, int, int]] = []
    boxes: List[Tuple[int, int, int, int]] = []
    labels: List[int] = []
    for _ in range(num_digits):
        digit = digits[rng.integers(len(digits))]
        glyph = rng.choice(glyph_pool[digit_of_glyph[glyph_pool] == digit])
        square = _place_square(rng, squares, image_size)
        if square is None:
            # The canvas is too crowded for another digit: keep the ones placed so far.
            break
        squares.append(square)
        x, y, side = square

        intensity = np.asarray(
            Image.fromarray(glyph_images[glyph]).resize((side, side), Image.Resampling.BILINEAR)
        )
        region = canvas[y : y + side, x : x + side]
        colour = _contrasting_colour(rng, region.mean(axis=(0, 1)))
        opacity = rng.uniform(*_FOREGROUND_OPACITY_RANGE)
        alpha = opacity * np.clip(intensity / _GLYPH_MAX_INTENSITY, 0.0, 1.0)[..., None]
        region[...] = (1.0 - alpha) * region + alpha * colour

        rows, cols = np.nonzero(intensity >= _GLYPH_VISIBLE_INTENSITY)
        boxes.append(
            (int(x + cols.min()), int(y + rows.min()), int(x + cols.max()), int(y + rows.max()))
        )
        labels.append(int(digit))
    image = np.round(canvas * _MAX_PIXEL_VALUE).astype(np.uint8)
    return image, boxes, labels


def _voc_annotation(
    image_id: str, image_size: int, boxes: List[Tuple[int, int, int, int]], labels: List[int]
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
    for (x0, y0, x1, y1), digit in zip(boxes, labels):
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = _DIGIT_NAMES[digit]
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
    paths: DigitsDetPaths,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    pools: Dict[str, np.ndarray],
    progress: tqdm,
) -> None:
    """Render the images of one ID split and write them in PASCAL VOC layout."""
    image_dir = os.path.join(paths.voc_dir, "JPEGImages")
    annotation_dir = os.path.join(paths.voc_dir, "Annotations")
    image_ids = [f"{split}_{index:06d}" for index in range(num_images)]
    for index, image_id in enumerate(image_ids):
        rng = _random_stream(seed, split, index)
        image, boxes, labels = _render_image(
            rng, pools[_SPLIT_GLYPH_POOL[split]], _ID_DIGITS, image_size
        )
        Image.fromarray(image).save(
            os.path.join(image_dir, f"{image_id}.jpg"), quality=_JPEG_QUALITY
        )
        _voc_annotation(image_id, image_size, boxes, labels).write(
            os.path.join(annotation_dir, f"{image_id}.xml"), encoding="utf-8"
        )
        progress.update()
    with open(os.path.join(paths.voc_dir, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{image_id}\n" for image_id in image_ids))


def _write_ood_split(
    paths: DigitsDetPaths,
    num_images: int,
    seed: int,
    image_size: int,
    pools: Dict[str, np.ndarray],
    progress: tqdm,
) -> None:
    """Render the OOD images and write them with a COCO instances json."""
    category_id_of_digit = {
        digit: _FIRST_COCO_CATEGORY_ID + rank for rank, digit in enumerate(_OOD_DIGITS)
    }
    images, annotations = [], []
    for index in range(num_images):
        rng = _random_stream(seed, _OOD_SPLIT, index)
        image, boxes, labels = _render_image(
            rng, pools[_SPLIT_GLYPH_POOL[_OOD_SPLIT]], _OOD_DIGITS, image_size
        )
        file_name = f"{_OOD_SPLIT}_{index:06d}.jpg"
        Image.fromarray(image).save(
            os.path.join(paths.ood_image_dir, file_name), quality=_JPEG_QUALITY
        )
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for (x0, y0, x1, y1), digit in zip(boxes, labels):
            width, height = x1 + 1 - x0, y1 + 1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id_of_digit[digit],
                    "bbox": [x0, y0, width, height],
                    "area": width * height,
                    "iscrowd": 0,
                }
            )
        progress.update()
    categories = [
        {"id": category_id, "name": _DIGIT_NAMES[digit], "supercategory": "digit"}
        for digit, category_id in category_id_of_digit.items()
    ]
    coco = {
        "info": {"description": "digits-det OOD split (digits 5-9)"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    with open(paths.ood_json, "w") as f:
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
        overwrite: regenerate even if an identical dataset exists.

    Returns:
        The dataset folder, ``<root>/digits_det``.

    Raises:
        ValueError: if ``image_size`` cannot hold the largest glyph or a split is too small
            for detectron2's loaders (ID splits need 2 images, the OOD split 1).
    """
    if image_size < _MAX_GLYPH_SIZE:
        raise ValueError(f"image_size must be at least {_MAX_GLYPH_SIZE}, got {image_size}")
    split_sizes = dict(zip(_VOC_SPLITS, (num_train, num_val, num_test)))
    for split, num_images in split_sizes.items():
        if num_images < _MIN_VOC_SPLIT_SIZE:
            raise ValueError(
                f"num_{split} must be at least {_MIN_VOC_SPLIT_SIZE}, got {num_images}"
            )
    if num_ood < _MIN_OOD_SPLIT_SIZE:
        raise ValueError(f"num_ood must be at least {_MIN_OOD_SPLIT_SIZE}, got {num_ood}")

    paths = digits_det_paths(root)
    parameters = {
        "format_version": _FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_ood": num_ood,
    }
    if not overwrite and _read_meta(paths.meta_json) == parameters:
        logger.info("digits-det already generated in %s", paths.dataset_dir)
        return paths.dataset_dir

    # Invalidate first, so that a dataset interrupted below is never taken as complete.
    if os.path.exists(paths.meta_json):
        os.remove(paths.meta_json)
    for generated_dir in (paths.voc_dir, paths.ood_dir):
        shutil.rmtree(generated_dir, ignore_errors=True)
    for subdir in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(paths.voc_dir, subdir))
    os.makedirs(paths.ood_image_dir)

    logger.info("Generating digits-det in %s with %s", paths.dataset_dir, parameters)
    pools = glyph_indices_per_split(seed)
    total_images = sum(split_sizes.values()) + num_ood
    with tqdm(total=total_images, desc="digits-det", unit="img") as progress:
        for split, num_images in split_sizes.items():
            _write_voc_split(paths, split, num_images, seed, image_size, pools, progress)
        _write_ood_split(paths, num_ood, seed, image_size, pools, progress)

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
        overwrite=args.overwrite,
    )
    print(dataset_dir)


if __name__ == "__main__":
    main()
