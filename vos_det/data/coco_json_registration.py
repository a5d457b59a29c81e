"""Registering COCO-json detection datasets in detectron2's catalogs, from code or from a
command-line spec ``NAME=JSON_FILE:IMAGE_ROOT``; they load with
:func:`~vos_det.data.coco_json.load_coco_json_dataset`."""
import os
from typing import Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog import OOD_ROLES
from .coco_json import load_coco_json_dataset
from .coco_json_file import check_dataset_paths

__all__ = [
    "CLI_SPEC_FORMAT",
    "parse_ood_spec",
    "register_coco_json_dataset",
    "register_from_cli",
    "register_ood_coco_json",
]

EVALUATOR_TYPE = "coco"
CLI_SPEC_FORMAT = "NAME=JSON_FILE:IMAGE_ROOT"
_CLI_SPEC_EXAMPLE = "my_ood=/data/my_ood/annotations.json:/data/my_ood/images"


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
