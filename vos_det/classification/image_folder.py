"""ImageFolder-style classification datasets (one folder per class) in detectron2's catalogs.

Layout (as torchvision's ImageFolder)::

    <root>/<class name>/**/<image>.png      class names = the sorted folder names

An OOD folder may instead hold its images directly (``<root>/<image>.png``, no classes).

Dataset dicts::

    {"file_name": str, "image_id": str (path relative to root), "height": int, "width": int,
     "class_id": int}

``class_id`` indexes the dataset's ``thing_classes`` (metadata); -1 for the images of a flat
OOD folder. The metadata also holds ``ood_role`` ("id" or "ood"), ``evaluator_type``
("classification"), ``image_root`` and, for OOD sets, ``id_dataset`` when known.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.image_io import IMAGE_EXTENSIONS

__all__ = [
    "OOD_ROLES",
    "find_class_folders",
    "load_image_folder",
    "parse_image_folder_entry",
    "register_image_folder",
    "register_image_folders_from_config",
]

OOD_ROLES = ("id", "ood")
EVALUATOR_TYPE = "classification"
# class_id of the images of an OOD folder without class sub-folders.
UNKNOWN_CLASS_ID = -1
# Separator of the fields of a DATASETS.IMAGE_FOLDERS entry "NAME:ROLE:PATH".
_ENTRY_SEPARATOR = ":"
_ENTRY_FIELDS = 3


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_class_folders(root: str) -> List[str]:
    """The class names under an ImageFolder root: its sorted, non-hidden sub-folders.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder (expected an ImageFolder-style tree)")
    return sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )


def _image_files(folder: str, recursive: bool) -> List[str]:
    """Sorted paths of the image files in ``folder`` (and its sub-folders if ``recursive``)."""
    if not recursive:
        return sorted(
            entry.path for entry in os.scandir(folder) if entry.is_file() and _is_image_file(entry.name)
        )
    files = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        files.extend(os.path.join(directory, name) for name in names if _is_image_file(name))
    return sorted(files)


def _image_record(path: str, root: str, class_id: int) -> Dict:
    """The dataset dict of one image; reads only the image header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from None
    return {
        "file_name": path,
        "image_id": os.path.splitext(os.path.relpath(path, root))[0],
        "height": height,
        "width": width,
        "class_id": class_id,
    }


def load_image_folder(
    root: str, class_names: Optional[Sequence[str]] = None, allow_flat: bool = False
) -> Tuple[List[Dict], List[str]]:
    """Read an ImageFolder tree into detectron2 dataset dicts.

    Args:
        root: the folder holding one sub-folder per class.
        class_names: the class list ``class_id`` indexes; by default the sorted folder names.
            When given, every folder must be one of them (a test set may lack some classes).
        allow_flat: accept a folder with images and no class sub-folders (an OOD set); its
            images get ``class_id`` -1 and the class list is empty.

    Returns:
        tuple[list[dict], list[str]]: the dataset dicts (sorted by class, then path) and the
        class names.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders, an empty class folder, a folder not in ``class_names``
            or an image whose header cannot be read; the message names the path.
    """
    folders = find_class_folders(root)
    if not folders:
        flat_images = _image_files(root, recursive=False)
        if allow_flat and flat_images:
            return [_image_record(path, root, UNKNOWN_CLASS_ID) for path in flat_images], []
        raise ValueError(
            f"{root}: no class folders; expected one sub-folder per class, e.g. "
            f"{os.path.join(root, 'class_a', 'image.png')}"
            + (" (an OOD set may hold its images directly)" if not allow_flat else "")
        )
    class_names = list(folders if class_names is None else class_names)
    unknown = [folder for folder in folders if folder not in class_names]
    if unknown:
        raise ValueError(
            f"{root}: class folders {unknown} are not among the dataset's classes {class_names}"
        )
    records = []
    for folder in folders:
        folder_path = os.path.join(root, folder)
        images = _image_files(folder_path, recursive=True)
        if not images:
            raise ValueError(
                f"class folder {folder_path} is empty: no image files "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        class_id = class_names.index(folder)
        records.extend(_image_record(path, root, class_id) for path in images)
    return records, class_names


def register_image_folder(
    name: str,
    root: str,
    *,
    ood_role: str = "id",
    class_names: Optional[Sequence[str]] = None,
    id_dataset: Optional[str] = None,
) -> None:
    """Register an ImageFolder tree as a classification dataset.

    The dataset dicts are read when the dataset is first loaded; the class names are read
    now (from ``class_names`` or the folder names), for the metadata.

    Args:
        name: the dataset name in DatasetCatalog / MetadataCatalog.
        root: the ImageFolder root.
        ood_role: "id" (classes the model is trained on) or "ood" (an OOD test set; it may
            hold its images directly, without class folders).
        class_names: the class list; by default the sorted folder names.
        id_dataset: for an OOD set, the training set whose classes count as known.

    Raises:
        ValueError: unknown ``ood_role`` or a name already registered for another folder.
        FileNotFoundError: ``root`` is not a folder (only when ``class_names`` is not given).
    """
    if ood_role not in OOD_ROLES:
        raise ValueError(f"ood_role of dataset {name!r} must be one of {OOD_ROLES}, got {ood_role!r}")
    root = os.path.abspath(os.path.expanduser(root))
    if name in DatasetCatalog.list():
        registered_root = MetadataCatalog.get(name).get("image_root", None)
        if registered_root == root:
            return
        raise ValueError(
            f"dataset {name!r} is already registered (image_root {registered_root!r}), "
            f"not for {root!r}"
        )
    allow_flat = ood_role == "ood"
    if class_names is None:
        class_names = find_class_folders(root)
    class_names = list(class_names)
    DatasetCatalog.register(name, lambda: load_image_folder(root, class_names or None, allow_flat)[0])
    metadata = {
        "thing_classes": class_names,
        "ood_role": ood_role,
        "evaluator_type": EVALUATOR_TYPE,
        "image_root": root,
    }
    if id_dataset is not None:
        metadata["id_dataset"] = id_dataset
    MetadataCatalog.get(name).set(**metadata)


def parse_image_folder_entry(entry: str) -> Tuple[str, str, str]:
    """Split a DATASETS.IMAGE_FOLDERS entry "NAME:ROLE:PATH" into (name, role, path)."""
    fields = entry.split(_ENTRY_SEPARATOR, _ENTRY_FIELDS - 1)
    if len(fields) != _ENTRY_FIELDS or not all(fields) or fields[1] not in OOD_ROLES:
        raise ValueError(
            f"DATASETS.IMAGE_FOLDERS entry {entry!r} is not NAME:ROLE:PATH with ROLE one of "
            f"{OOD_ROLES}, e.g. 'my_train:id:/data/my_dataset/train'"
        )
    return fields[0], fields[1], fields[2]


def register_image_folders_from_config(cfg) -> None:
    """Register every dataset of ``cfg.DATASETS.IMAGE_FOLDERS`` (a no-op for known ones).

    OOD sets get the first training set as their ``id_dataset``.
    """
    id_dataset = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    for entry in cfg.DATASETS.get("IMAGE_FOLDERS", ()):
        name, role, path = parse_image_folder_entry(entry)
        register_image_folder(
            name, path, ood_role=role, id_dataset=id_dataset if role == "ood" else None
        )
