"""Reading a COCO instances json: the file and image folder exist, the json parses and has
the structure :mod:`vos_det.data.coco_json` reads, its categories map onto class names."""
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .catalog import DATASETS_README

__all__ = ["category_mapping", "check_dataset_paths", "read_coco_json"]


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


def category_mapping(
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
