"""The ground-truth boxes of an ID set, per image, for the optimal-F1 box selections.

They come from the dataset dicts: a VOC "difficult" object carries ``"difficult": 1`` in its
annotation (see :mod:`vos_det.data.pascal_voc`), a COCO crowd box ``"iscrowd": 1``; both are
"ignore" boxes for the VOC-style matching, and only the crowd boxes are crowd for COCOeval.
"""
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

__all__ = ["GroundTruthBoxes", "load_ground_truth", "voc_xml_coordinates"]


@dataclass
class GroundTruthBoxes:
    """The ground truth of one image.

    Attributes:
        boxes (np.ndarray): (G, 4) float64 XYXY, detectron2's pixel convention (a VOC box
            [xmin, ymin, xmax, ymax] in 1-based inclusive pixels is [xmin - 1, ymin - 1,
            xmax, ymax], so that the IoU is the devkit's).
        classes (np.ndarray): (G,) int64 contiguous class ids.
        ignore (np.ndarray): (G,) bool, VOC "difficult" / COCO "iscrowd" boxes.
        difficult (np.ndarray): (G,) bool, the VOC "difficult" boxes among ``ignore`` (the
            released VOS evaluation counts them as ordinary boxes).
    """

    boxes: np.ndarray
    classes: np.ndarray
    ignore: np.ndarray
    difficult: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.difficult is None:
            self.difficult = np.zeros(len(self.classes), dtype=bool)

    @classmethod
    def from_lists(cls, boxes, classes, ignore=None, difficult=None):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        ignore = np.zeros(len(classes), dtype=bool) if ignore is None else np.asarray(ignore, dtype=bool)
        difficult = None if difficult is None else np.asarray(difficult, dtype=bool).reshape(-1)
        return cls(boxes, classes, ignore.reshape(-1), difficult)


def load_ground_truth(dataset_name: str) -> Dict[object, GroundTruthBoxes]:
    """The ground truth of every image of a registered dataset, by ``image_id``.

    Boxes of the dataset dicts in XYXY_ABS; ``ignore`` marks the VOC "difficult" boxes and
    the COCO ``iscrowd`` ones, ``difficult`` the former.

    Args:
        dataset_name: a name in DatasetCatalog.

    Returns:
        dict: image_id -> :class:`GroundTruthBoxes`.
    """
    ground_truth = {}
    for d in DatasetCatalog.get(dataset_name):
        annotations = d.get("annotations", [])
        difficult = [bool(a.get("difficult", 0)) for a in annotations]
        ground_truth[d["image_id"]] = GroundTruthBoxes.from_lists(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
            [a["category_id"] for a in annotations],
            [bool(a.get("iscrowd", 0)) or hard for a, hard in zip(annotations, difficult)],
            difficult,
        )
    return ground_truth


def voc_xml_coordinates(ground_truth: Dict[object, GroundTruthBoxes]) -> Dict[object, GroundTruthBoxes]:
    """VOC boxes back in the raw XML corners: [xmin, ymin, xmax, ymax] as written in the file.

    detectron2's VOC loader (and vos_det's) subtracts 1 from xmin and ymin; the released VOS
    code converts VOC to COCO json with the XML values unchanged
    (``core/datasets/convert_voc_to_coco.py:51-66``), and its optimal-F1 threshold is computed
    against those. Only for ground truth loaded from a PASCAL VOC-layout dataset.

    Args:
        ground_truth: image_id -> :class:`GroundTruthBoxes` in detectron2's convention.

    Returns:
        dict: a new dict, xmin and ymin of every box plus 1.
    """
    shifted = {}
    for image_id, gt in ground_truth.items():
        boxes = gt.boxes.copy()
        boxes[:, :2] += 1.0
        shifted[image_id] = GroundTruthBoxes(boxes, gt.classes, gt.ignore, gt.difficult)
    return shifted
