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

Command line: :func:`register_from_cli` registers an OOD set from a spec
``NAME=JSON_FILE:IMAGE_ROOT``.
"""
import json
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .box_checks import box_problem, warn_dropped_boxes
from .catalog import DATASETS_README, OOD_ROLES

__all__ = [
    "CLI_SPEC_FORMAT",
    "check_dataset_paths",
    "load_coco_json_dataset",
    "parse_ood_spec",
    "read_coco_json",
    "register_coco_json_dataset",
    "register_from_cli",
    "register_ood_coco_json",
]

logger = logging.getLogger(__name__)

EVALUATOR_TYPE = "coco"
CLI_SPEC_FORMAT = "NAME=JSON_FILE:IMAGE_ROOT"
_CLI_SPEC_EXAMPLE = "my_ood=/data/my_ood/annotations.json:/data/my_ood/images"
# Number of missing image files named in the error message.
_MISSING_IMAGES_SHOWN = 3
_BOX_LENGTH = 4


def _json_description(ood_role: str) -> str:
    return "COCO OOD json" if ood_role == "ood" else "COCO json"


def check_dataset_paths(json_file: str, image_root: str, ood_role: str = "id") -> None:
    """Check that the json file and the image folder of a COCO-json dataset exist.

    Raises:
        FileNotFoundError: naming the missing path and pointing to datasets/README.md.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"{_json_description(ood_role)} not found: {json_file}; see {DATASETS_README}"
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"image folder not found: {image_root} (images of {json_file}); see {DATASETS_README}"
        )


def read_coco_json(json_file: str) -> Dict[str, Any]:
    """Parse a COCO instances json and check its top-level structure.

    Returns:
        The parsed json: a dict whose "images" is a non-empty list and whose "annotations"
        and "categories", when present, are lists.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not JSON (with the error's line, column and character), not
            UTF-8, or not a COCO instances json; the message names the file.
    """
    try:
        with open(json_file, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{json_file}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
            f"(character {e.pos})"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_file}: not UTF-8 text ({e})") from None
    if not isinstance(coco, dict):
        raise ValueError(
            f"{json_file}: not a COCO instances json: the top level is a {type(coco).__name__}, "
            'not an object with an "images" list'
        )
    if "images" not in coco:
        raise ValueError(
            f'{json_file}: not a COCO instances json: it has no "images" list '
            f"(top-level keys: {sorted(coco)})"
        )
    for key in ("images", "annotations", "categories"):
        if key in coco and not isinstance(coco[key], list):
            raise ValueError(f'{json_file}: "{key}" is a {type(coco[key]).__name__}, not a list')
    if not coco["images"]:
        raise ValueError(f'{json_file}: "images" is empty: the dataset has no image')
    return coco


def _category_mapping(
    json_file: str, categories: List[Dict], thing_classes: Optional[Sequence[str]]
) -> Tuple[List[str], Dict[Any, int]]:
    """The dataset's class names and the map from json category id to contiguous id."""
    names_by_id: Dict[Any, str] = {}
    for index, category in enumerate(categories):
        try:
            names_by_id[category["id"]] = category["name"]
        except (KeyError, TypeError):
            raise ValueError(
                f'{json_file}: category #{index} has no "id" and "name": {category!r}'
            ) from None
    if thing_classes is None:
        sorted_ids = sorted(names_by_id)
        return [names_by_id[i] for i in sorted_ids], {i: k for k, i in enumerate(sorted_ids)}
    thing_classes = list(thing_classes)
    unknown = sorted({name for name in names_by_id.values() if name not in thing_classes})
    if unknown:
        raise ValueError(
            f"{json_file}: categories {unknown} are not among the dataset's classes "
            f"{thing_classes}"
        )
    if len(set(names_by_id.values())) != len(names_by_id):
        raise ValueError(f"{json_file}: several categories have the same name: {names_by_id}")
    return thing_classes, {i: thing_classes.index(name) for i, name in names_by_id.items()}


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
    class_names, contiguous_id = _category_mapping(
        json_file, coco.get("categories") or [], thing_classes
    )

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

    records, seen_ids = [], set()
    for index, image in enumerate(coco["images"]):
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


def register_coco_json_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    ood_role: str,
    thing_classes: Optional[Sequence[str]] = None,
    id_dataset: Optional[str] = None,
) -> None:
    """Register a COCO-json detection dataset (lazily: nothing is read until it is loaded).

    Metadata: ``json_file``, ``image_root``, ``evaluator_type`` "coco", ``ood_role``,
    ``id_dataset`` (OOD sets, when given) and ``thing_classes`` (when fixed here; otherwise
    set from the json when the dataset is loaded).

    Args:
        name: the dataset name in DatasetCatalog / MetadataCatalog.
        json_file: the COCO instances json.
        image_root: the folder of the images.
        ood_role: "id" or "ood".
        thing_classes: fixed class names of an ID dataset (see :func:`load_coco_json_dataset`).
        id_dataset: for an OOD set, the training set whose classes count as known.

    Raises:
        ValueError: an unknown ``ood_role``, ``id_dataset`` or ``thing_classes`` given with
            the wrong role, or ``name`` already registered for other files or another role.
    """
    if ood_role not in OOD_ROLES:
        raise ValueError(f"ood_role of dataset {name!r} must be one of {OOD_ROLES}, got {ood_role!r}")
    if id_dataset is not None and ood_role != "ood":
        raise ValueError(f"dataset {name!r}: id_dataset is only for OOD sets (ood_role 'ood')")
    if thing_classes is not None and ood_role != "id":
        raise ValueError(f"dataset {name!r}: an OOD set takes its classes from its json")
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name)
        if (
            registered.get("json_file", None) == json_file
            and registered.get("image_root", None) == image_root
            and registered.get("ood_role", None) == ood_role
        ):
            return
        raise ValueError(
            f"dataset {name!r} is already registered (json_file "
            f"{registered.get('json_file', None)!r}, image_root "
            f"{registered.get('image_root', None)!r}, ood_role "
            f"{registered.get('ood_role', None)!r}), not for {json_file!r} / {image_root!r} "
            f"as {ood_role!r}"
        )
    fixed_classes = list(thing_classes) if thing_classes is not None else None
    DatasetCatalog.register(
        name,
        lambda: load_coco_json_dataset(
            json_file, image_root, name, thing_classes=fixed_classes, ood_role=ood_role
        ),
    )
    metadata = {
        "json_file": json_file,
        "image_root": image_root,
        "evaluator_type": EVALUATOR_TYPE,
        "ood_role": ood_role,
    }
    if fixed_classes is not None:
        metadata["thing_classes"] = fixed_classes
    if id_dataset is not None:
        metadata["id_dataset"] = id_dataset
    MetadataCatalog.get(name).set(**metadata)


def register_ood_coco_json(
    name: str, json_file: str, image_root: str, id_dataset: Optional[str] = None
) -> None:
    """Register an OOD test set given as a COCO json: any images, any (or no) annotations.

    The paths are made absolute. Registering the same name again for the same files is a
    no-op. Nothing is read until the dataset is loaded.

    Args:
        name: the dataset name, e.g. for ``DATASETS.OOD_TEST``.
        json_file: the COCO json (only "images" is required; see the module docstring).
        image_root: the folder the images' ``file_name`` are relative to.
        id_dataset: the training set whose classes count as known, if any.

    Raises:
        ValueError: ``name`` is already registered for other files.
    """
    register_coco_json_dataset(
        name,
        os.path.abspath(os.path.expanduser(json_file)),
        os.path.abspath(os.path.expanduser(image_root)),
        ood_role="ood",
        id_dataset=id_dataset,
    )


def parse_ood_spec(spec: str) -> Tuple[str, str, str]:
    """Split an OOD dataset spec ``NAME=JSON_FILE:IMAGE_ROOT`` into (name, json, image root).

    The json path ends at the first ":" after "=", so it may not contain ":" (the image
    root may).

    Raises:
        ValueError: the spec does not have the three non-empty parts.
    """
    name, _, paths = spec.partition("=")
    json_file, _, image_root = paths.partition(":")
    if not (name.strip() and json_file and image_root):
        raise ValueError(
            f"OOD dataset spec {spec!r} is not {CLI_SPEC_FORMAT}, e.g. {_CLI_SPEC_EXAMPLE!r}"
        )
    return name.strip(), json_file, image_root


def register_from_cli(spec: str, id_dataset: Optional[str] = None) -> str:
    """Register an OOD test set from a command-line spec ``NAME=JSON_FILE:IMAGE_ROOT``.

    Unlike the built-in datasets, the json file and image folder are checked now, so that a
    wrong path fails before any model is run.

    Args:
        spec: e.g. ``my_ood=/data/my_ood/annotations.json:/data/my_ood/images``.
        id_dataset: the training set whose classes count as known (e.g. the first of
            ``cfg.DATASETS.TRAIN``).

    Returns:
        The registered name.

    Raises:
        ValueError: a malformed spec, or the name already registered for other files.
        FileNotFoundError: the json file or the image folder does not exist.
    """
    name, json_file, image_root = parse_ood_spec(spec)
    json_file = os.path.abspath(os.path.expanduser(json_file))
    image_root = os.path.abspath(os.path.expanduser(image_root))
    check_dataset_paths(json_file, image_root, ood_role="ood")
    register_ood_coco_json(name, json_file, image_root, id_dataset=id_dataset)
    return name
