"""PASCAL VOC-layout datasets, loaded as detectron2 does, with their boxes checked.

detectron2's ``register_pascal_voc`` registers ``load_voc_instances``; vos_det registers the
same dataset dicts through :func:`load_voc_dataset`, which drops the boxes no detector can
learn from (see :mod:`vos_det.data.box_checks`) and names the xml file in its errors.
"""
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence

from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .box_checks import drop_unusable_boxes

__all__ = ["load_voc_dataset"]

_VOC_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _voc_text(node, path: str, xml_file: str) -> str:
    element = node.find(path)
    if element is None or element.text is None:
        raise ValueError(f"{xml_file}: no <{path}>")
    return element.text.strip()


def _is_difficult(obj, xml_file: str, index: int) -> bool:
    """The object's ``<difficult>`` flag (absent or empty = 0)."""
    text = (obj.findtext("difficult") or "0").strip() or "0"
    try:
        return int(text) == 1
    except ValueError:
        raise ValueError(f"{xml_file}: object #{index} has a non-integer <difficult> {text!r}") from None


def _load_voc_xml(xml_file: str, jpeg_file: str, file_id: str, class_names: Sequence[str]) -> Dict:
    """One image's dataset dict, as detectron2's ``load_voc_instances`` makes it."""
    try:
        with PathManager.open(xml_file) as f:
            tree = ET.parse(f)
    except ET.ParseError as e:
        raise ValueError(f"{xml_file}: not valid XML ({e})") from None
    size = [_voc_text(tree, f"size/{key}", xml_file) for key in ("height", "width")]
    try:
        height, width = (int(value) for value in size)
    except ValueError:
        raise ValueError(f"{xml_file}: the image size {size} (height, width) is not integers") from None
    annotations = []
    for index, obj in enumerate(tree.findall("object")):
        name = _voc_text(obj, "name", xml_file)
        if name not in class_names:
            raise ValueError(
                f"{xml_file}: object #{index} has class {name!r}, not one of {list(class_names)}"
            )
        corners = [_voc_text(obj, f"bndbox/{key}", xml_file) for key in _VOC_BOX_KEYS]
        try:
            bbox = [float(value) for value in corners]
        except ValueError:
            raise ValueError(f"{xml_file}: object #{index} has a non-numeric bndbox {corners}") from None
        # 1-based inclusive pixel indices: (xmin=1, xmax=W) covers the image, i.e. [0, W].
        bbox[0] -= 1.0
        bbox[1] -= 1.0
        annotation = {"category_id": class_names.index(name), "bbox": bbox, "bbox_mode": BoxMode.XYXY_ABS}
        if _is_difficult(obj, xml_file, index):
            annotation["difficult"] = 1
        annotations.append(annotation)
    return {
        "file_name": jpeg_file,
        "image_id": file_id,
        "height": height,
        "width": width,
        "annotations": annotations,
    }


def load_voc_dataset(dirname: str, split: str, class_names: Sequence[str]) -> List[Dict]:
    """Load a PASCAL VOC-layout split like detectron2's ``load_voc_instances``, checked.

    The dataset dicts are those of ``load_voc_instances`` (boxes XYXY_ABS with 1 subtracted
    from xmin / ymin, "difficult" objects included, ``image_id`` the file id), except that

    * the annotation of a "difficult" object also holds ``"difficult": 1`` (detectron2's
      drops the flag; the OOD box selection ignores these boxes as the VOC devkit does);

    * boxes :func:`box_problem` rejects are dropped with one warning naming each one's xml
      file and the index of its ``<object>`` there;
    * a split file listing a single image works (detectron2's fails on it);
    * an unknown class name, a missing field or bad XML raise a ValueError naming the xml.

    Args:
        dirname: the folder holding Annotations/, ImageSets/Main/ and JPEGImages/.
        split: the image set, e.g. "trainval" (ImageSets/Main/<split>.txt).
        class_names: the class names, in the order of the contiguous ids.

    Returns:
        list[dict]: one dict per image of the split, in its order.
    """
    class_names = tuple(class_names)
    with PathManager.open(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")) as f:
        file_ids = f.read().split()
    annotation_dir = PathManager.get_local_path(os.path.join(dirname, "Annotations/"))
    records = [
        _load_voc_xml(
            os.path.join(annotation_dir, f"{file_id}.xml"),
            os.path.join(dirname, "JPEGImages", f"{file_id}.jpg"),
            file_id,
            class_names,
        )
        for file_id in file_ids
    ]

    def describe(record, index):
        xml_file = os.path.join(annotation_dir, f"{record['image_id']}.xml")
        return f"{xml_file} object #{index}"

    return drop_unusable_boxes(records, dirname, describe)
