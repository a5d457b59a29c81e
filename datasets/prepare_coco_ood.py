#!/usr/bin/env python3
"""Build the COCO OOD set of the VOC benchmark: COCO val2017 images with none of the VOC classes.

Reads COCO's own ``instances_val2017.json`` and drops every image that holds at least one
annotation (crowd annotations included) of one of the 20 PASCAL VOC classes; the remaining
images are kept with all their annotations (objects of the other 60 COCO classes) and the
json's other fields (categories, info, licenses) unchanged. Images without any annotation are
kept. The output is written atomically (a temporary file in the same folder, then renamed).

Standard library only, so it runs anywhere::

    python datasets/prepare_coco_ood.py \\
        --input datasets/coco/annotations/instances_val2017.json \\
        --output datasets/coco/annotations/instances_val2017_ood_wrt_voc.json

Both paths default to those under ``$DETECTRON2_DATASETS`` (default ``./datasets``), where
vos_det's ``coco_ood_val`` dataset expects them (see datasets/README.md).
"""
import argparse
import json
import os
import sys
import tempfile
from typing import Dict, Iterable, NamedTuple, Set

# The 20 PASCAL VOC classes and the COCO category that is the same class, written out.
VOC_TO_COCO = {
    "aeroplane": "airplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "diningtable": "dining table",
    "dog": "dog",
    "horse": "horse",
    "motorbike": "motorcycle",
    "person": "person",
    "pottedplant": "potted plant",
    "sheep": "sheep",
    "sofa": "couch",
    "train": "train",
    "tvmonitor": "tv",
}

_DATASETS_ROOT = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
DEFAULT_INPUT = os.path.join(_DATASETS_ROOT, "coco", "annotations", "instances_val2017.json")
DEFAULT_OUTPUT = os.path.join(
    _DATASETS_ROOT, "coco", "annotations", "instances_val2017_ood_wrt_voc.json"
)
_REQUIRED_KEYS = ("images", "annotations", "categories")


class OODCounts(NamedTuple):
    """What :func:`prepare_coco_ood` kept and dropped."""

    images_in: int
    images_dropped: int
    images_kept: int
    images_kept_without_annotations: int
    annotations_in: int
    annotations_kept: int


def read_coco_instances(path: str) -> Dict:
    """Parse a COCO instances json and check it has lists of images, annotations, categories.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (with the error position) or not a COCO instances json; the
            message names the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO instances json not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
            f"(character {e.pos})"
        ) from None
    if not isinstance(coco, dict):
        raise ValueError(f"{path}: not a COCO instances json (the top level is not an object)")
    for key in _REQUIRED_KEYS:
        if not isinstance(coco.get(key), list):
            raise ValueError(f'{path}: not a COCO instances json: no "{key}" list')
    return coco


def voc_category_ids(categories: Iterable[Dict]) -> Set[int]:
    """The COCO category ids of the 20 VOC classes.

    Raises:
        ValueError: a mapped COCO category name is not among ``categories``.
    """
    id_of_name = {category["name"]: category["id"] for category in categories}
    missing = sorted(set(VOC_TO_COCO.values()) - set(id_of_name))
    if missing:
        raise ValueError(
            f"COCO categories {missing} (VOC classes) are not in the input's categories: is it "
            "COCO's instances_val2017.json?"
        )
    return {id_of_name[name] for name in VOC_TO_COCO.values()}


def filter_ood_images(coco: Dict):
    """Drop the images that hold an annotation of a VOC class; return (new json, counts)."""
    voc_ids = voc_category_ids(coco["categories"])
    images_with_voc = {a["image_id"] for a in coco["annotations"] if a["category_id"] in voc_ids}
    images = [image for image in coco["images"] if image["id"] not in images_with_voc]
    kept_ids = {image["id"] for image in images}
    annotations = [a for a in coco["annotations"] if a["image_id"] in kept_ids]
    annotated_ids = {a["image_id"] for a in annotations}
    counts = OODCounts(
        images_in=len(coco["images"]),
        images_dropped=len(coco["images"]) - len(images),
        images_kept=len(images),
        images_kept_without_annotations=len(kept_ids - annotated_ids),
        annotations_in=len(coco["annotations"]),
        annotations_kept=len(annotations),
    )
    return {**coco, "images": images, "annotations": annotations}, counts


def _write_json_atomically(data: Dict, path: str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def prepare_coco_ood(input_path: str, output_path: str) -> OODCounts:
    """Write the COCO OOD json (no image with a VOC class) made from COCO's instances json.

    Args:
        input_path: COCO's ``instances_val2017.json``.
        output_path: the json to write (folders are created).

    Returns:
        The counts of images and annotations kept and dropped.

    Raises:
        FileNotFoundError / ValueError: an unusable input (the message names the file), or
            the output is the input.
    """
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise ValueError(f"the output must not overwrite the input: {input_path}")
    coco = read_coco_instances(input_path)
    try:
        ood, counts = filter_ood_images(coco)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{input_path}: malformed COCO instances json (missing key {e})") from None
    except ValueError as e:
        raise ValueError(f"{input_path}: {e}") from None
    _write_json_atomically(ood, output_path)
    return counts


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", default=DEFAULT_INPUT, help=f"COCO's instances_val2017.json (default: {DEFAULT_INPUT})"
    )
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help=f"the OOD json to write (default: {DEFAULT_OUTPUT})"
    )
    args = parser.parse_args(argv)
    try:
        counts = prepare_coco_ood(args.input, args.output)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"images: {counts.images_in} in, {counts.images_dropped} dropped (an annotation of a "
        f"VOC class), {counts.images_kept} kept ({counts.images_kept_without_annotations} of "
        f"them without annotations)"
    )
    print(f"annotations: {counts.annotations_in} in, {counts.annotations_kept} kept")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
