"""Detection datasets given as a COCO instances json, with errors that name the faulty file.

Used for the OOD test sets (COCO, OpenImages, or any set of the user's), for BDD100k and for
any other box dataset in COCO form. What is read (boxes only: segmentations and keypoints
are not loaded)::

    {"images":      [{"id": ..., "file_name": "<path under image_root>",
                      "height": int, "width": int}, ...],          # height / width optional
     "annotations": [{"image_id": ..., "category_id": ..., "bbox": [x, y, w, h],
                      "iscrowd": 0 or 1, "ignore": 0 or 1}, ...],  # optional, may be empty
     "categories":  [{"id": ..., "name": "..."}, ...]}             # optional, may be empty

An annotation with ``ignore`` 1 (as BDD100k's converter writes) is loaded as a crowd box
(``iscrowd`` 1), which detectron2 leaves out of training. Boxes with a negative or zero width
or height, a non-finite coordinate, or entirely outside the image (when the json gives its
size) are dropped with one warning naming the json and the annotations (see
:mod:`vos_det.data.box_checks`); boxes partly outside are kept and clipped by the mapper.
An image without annotations is kept; ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` decides whether
training sees it.

Dataset dicts are detectron2's: ``file_name``, ``image_id``, ``height`` / ``width`` (when the
json has them) and ``annotations`` with ``bbox`` (XYWH_ABS), ``bbox_mode``, ``category_id``
(contiguous, indexing ``thing_classes``) and ``iscrowd``.

Class names: an ID dataset may be registered with fixed ``thing_classes`` (BDD100k); the
json's category names are then mapped by name onto them and any other name is an error. Any
other dataset takes its ``thing_classes`` from the json's categories, sorted by id. An OOD
set's classes need not match the model's (its annotations are not used to score boxes):
annotations of categories missing from its json are dropped with a warning.

The file is read and checked by :mod:`.coco_json_file`; datasets are registered by
:mod:`.coco_json_registration` (also from a command-line spec ``NAME=JSON_FILE:IMAGE_ROOT``).
"""
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from .box_checks import box_problem, warn_dropped_boxes
from .catalog import DATASETS_README
from .coco_json_file import category_mapping, check_dataset_paths, read_coco_json

__all__ = ["load_coco_json_dataset"]

logger = logging.getLogger(__name__)

# Number of missing image files named in the error message.
_MISSING_IMAGES_SHOWN = 3
_BOX_LENGTH = 4


def _set_metadata(dataset_name: str, **values) -> None:
    """Set metadata values, replacing stale ones (e.g. after the json file was rewritten)."""
    metadata = MetadataCatalog.get(dataset_name)
    for key, value in values.items():
        if key in metadata.__dict__ and getattr(metadata, key) != value:
            delattr(metadata, key)
        setattr(metadata, key, value)


def load_coco_json_dataset(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    thing_classes: Optional[Sequence[str]] = None,
    ood_role: str = "id",
) -> List[Dict]:
    """Load a COCO instances json (boxes only) into detectron2 dataset dicts.

    Args:
        json_file: the COCO instances json.
        image_root: the folder the images' ``file_name`` are relative to.
        dataset_name: when given, its metadata gets ``thing_classes`` (unless the json has no
            categories) and ``thing_dataset_id_to_contiguous_id``.
        thing_classes: fixed class names of an ID dataset; json categories are mapped onto
            them by name. None: the json's categories, sorted by id.
        ood_role: "id" or "ood"; an OOD set drops annotations of unknown categories instead
            of failing, and its errors speak of a "COCO OOD json".

    Returns:
        list[dict]: one dict per image, in the order of the json.

    Raises:
        FileNotFoundError: a missing json, image folder or image file (the message names it
            and points to datasets/README.md).
        ValueError: an unreadable or malformed json; the message names the file.
    """
    check_dataset_paths(json_file, image_root, ood_role)
    coco = read_coco_json(json_file)
    class_names, contiguous_id = category_mapping(
        json_file, coco.get("categories") or [], thing_classes
    )
    annotations_by_image = _annotations_by_image(json_file, coco, contiguous_id, ood_role)
    records = _image_records(json_file, image_root, coco["images"], annotations_by_image)
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(records)} images listed in {json_file} are not in "
            f"{image_root}, e.g. {missing[:_MISSING_IMAGES_SHOWN]}; see {DATASETS_README}"
        )

    if dataset_name is not None:
        metadata = {"thing_dataset_id_to_contiguous_id": contiguous_id}
        if class_names:
            # An empty class list would break detectron2's class histogram of the dataset.
            metadata["thing_classes"] = class_names
        _set_metadata(dataset_name, **metadata)
    logger.info("Loaded %d images from %s", len(records), json_file)
    return records


def _parsed_annotation(json_file: str, index: int, annotation) -> tuple:
    """(image_id, category_id, bbox as 4 floats) of the json's annotation #index.

    Raises:
        ValueError: a field is missing or the bbox is not 4 numbers (the file and index named).
    """
    try:
        image_id = annotation["image_id"]
        category_id = annotation["category_id"]
        bbox = [float(v) for v in annotation["bbox"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f'{json_file}: annotation #{index} needs "image_id", "category_id" and a numeric '
            f'"bbox": {annotation!r}'
        ) from None
    if len(bbox) != _BOX_LENGTH:
        raise ValueError(
            f"{json_file}: annotation #{index} has a bbox of {len(bbox)} numbers, not "
            f"[x, y, width, height]"
        )
    return image_id, category_id, bbox


def _annotations_by_image(json_file: str, coco: Dict, contiguous_id: Dict, ood_role: str) -> Dict[Any, List[Dict]]:
    """The detectron2 annotations of each image id, in the json's order.

    A box outside its image or degenerate is dropped (one warning for all); so is, in an OOD
    set, an annotation of a category the json does not list (one warning).

    Raises:
        ValueError: a malformed annotation, or (ID set) an unknown category_id.
    """
    image_sizes = {
        image["id"]: (image.get("height"), image.get("width"))
        for image in coco["images"]
        if isinstance(image, dict) and "id" in image
    }
    annotations_by_image: Dict[Any, List[Dict]] = defaultdict(list)
    num_unknown_category = 0
    dropped_boxes: List[str] = []
    annotations = coco.get("annotations") or []
    for index, annotation in enumerate(annotations):
        image_id, category_id, bbox = _parsed_annotation(json_file, index, annotation)
        if category_id not in contiguous_id:
            if ood_role == "ood":
                num_unknown_category += 1
                continue
            raise ValueError(
                f'{json_file}: annotation #{index} has category_id {category_id!r}, which is not '
                f'in its "categories"'
            )
        problem = box_problem(bbox, BoxMode.XYWH_ABS, *image_sizes.get(image_id, (None, None)))
        if problem is not None:
            dropped_boxes.append(
                f"annotation #{index} (id {annotation.get('id')!r}, image_id {image_id!r}) "
                f"bbox {bbox}: {problem}"
            )
            continue
        ignored = bool(annotation.get("iscrowd", 0)) or bool(annotation.get("ignore", 0))
        annotations_by_image[image_id].append(
            {
                "bbox": bbox,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous_id[category_id],
                "iscrowd": int(ignored),
            }
        )
    warn_dropped_boxes(json_file, dropped_boxes, len(annotations))
    if num_unknown_category:
        logger.warning(
            "%s: dropped %d annotations whose category_id is not in its categories",
            json_file,
            num_unknown_category,
        )
    return annotations_by_image


def _image_records(
    json_file: str, image_root: str, images: List, annotations_by_image: Dict[Any, List[Dict]]
) -> List[Dict]:
    """One dataset dict per image of the json, in its order, with the image's annotations
    (taken out of ``annotations_by_image``; those left refer to no image: one warning).

    Raises:
        ValueError: an image without "id" or "file_name", or an id listed twice.
    """
    records, seen_ids = [], set()
    for index, image in enumerate(images):
        try:
            image_id, file_name = image["id"], image["file_name"]
        except (KeyError, TypeError):
            raise ValueError(
                f'{json_file}: image #{index} needs "id" and "file_name": {image!r}'
            ) from None
        if image_id in seen_ids:
            raise ValueError(f"{json_file}: image id {image_id!r} appears more than once")
        seen_ids.add(image_id)
        record = {"file_name": os.path.join(image_root, file_name), "image_id": image_id}
        record.update({key: image[key] for key in ("height", "width") if key in image})
        record["annotations"] = annotations_by_image.pop(image_id, [])
        records.append(record)
    if annotations_by_image:
        logger.warning(
            "%s: %d annotations refer to %d image ids that are not in its images; ignored",
            json_file,
            sum(len(a) for a in annotations_by_image.values()),
            len(annotations_by_image),
        )
    return records
