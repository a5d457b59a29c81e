"""Which detections are scored for OOD: the box selection of the two OOD protocols.

Both protocols keep, on the ID and the OOD test sets alike, every detection whose score
reaches a threshold, without any matching to ground truth; the threshold is the "optimal F1"
threshold of the ID test set. They differ in how that threshold is found and which score of
a detection is compared with it (``TEST.OOD.PROTOCOL``):

``"vos_official"``, the released VOS evaluation (``compute_average_precision.py`` and the
box filter of its OOD scripts), exactly:

* COCOeval (pycocotools) on the ID test set's detections, scored by their class score;
  ``eval["precision"]`` (101 recall thresholds r) and ``eval["scores"]`` (the score at which
  each r is reached), area "all", 100 detections per image, are averaged over the ten IoU
  thresholds .50:.95;
* per class, F1(r) = 2 P(r) r / (P(r) + r) and the class's threshold is the averaged score
  at the first r of highest F1 (numpy's argmax: a NaN counts as the highest, so a class
  without any true positive, whose F1 at r = 0 is 0 / 0, gets its top score); the threshold
  is the mean of the class thresholds that are not 0 (0 = that recall was never reached);
* a detection is kept when its PROPOSAL's maximum foreground probability
  (``proposal_scores``) is >= the threshold, so a confident proposal's detections of other,
  less likely classes are kept too.

The ground truth is given to COCOeval as the release does: VOC "difficult" boxes are
ordinary boxes, COCO crowd boxes are crowd. One deliberate difference: a class without any
ground-truth box in the set (COCOeval's precision -1) is left out of the mean, where the
released code would average its -1 in (VOC test and BDD100k val hold every class).

``"vos_det"`` keeps a detection by its own class score, and its ``"optimal_f1"`` threshold is
computed exactly at IoU 0.5, as the VOC AP:

* for each class, its detections are sorted by score and matched to the ground truth as in
  the PASCAL VOC devkit (a detection matches the same-class ground-truth box of its image
  with the highest IoU when that IoU is > 0.5; a match to a "difficult" (or COCO crowd) box
  is ignored, neither true nor false positive; each ground-truth box is matched at most
  once, later detections of it are false positives);
* for every score value s, precision and recall of the detections with score >= s give
  F1 = 2 P R / (P + R) (tied scores are one point: they are kept or dropped together);
  the class's threshold is the score at which F1 is highest (the highest such score if
  several tie);
* the threshold is the mean of the class thresholds, over the classes that have ground
  truth, detections and a non-zero best F1.

``"fixed"`` (``TEST.OOD.BOX_SELECTION``, protocol "vos_det") uses a given threshold instead
(``TEST.OOD.SCORE_THRESHOLD``), which is also either protocol's fallback when no class has a
threshold.
"""
import logging
import os
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = [
    "BOX_SELECTION_RULES",
    "PROTOCOLS",
    "coco_optimal_f1_threshold",
    "select_boxes_for_config",
    "BoxSelection",
    "GroundTruthBoxes",
    "load_ground_truth",
    "match_detections",
    "optimal_f1_threshold",
    "select_boxes",
]

logger = logging.getLogger(__name__)

# Values of cfg.TEST.OOD.PROTOCOL, each with the sentence that names it in reports.
PROTOCOLS = ("vos_official", "vos_det")
PROTOCOL_DESCRIPTIONS = {
    "vos_official": (
        "vos_official (the released VOS evaluation): boxes kept by their proposal's maximum "
        "foreground probability >= the optimal-F1 threshold of COCOeval's precision averaged "
        "over IoU .50:.95; FPR95 at the ROC point whose ID recall is closest to 95%"
    ),
    "vos_det": (
        "vos_det: boxes kept by their own class score (TEST.OOD.BOX_SELECTION); FPR95 read as "
        "TEST.OOD.FPR95_METHOD says"
    ),
}
# Values of cfg.TEST.OOD.BOX_SELECTION (protocol "vos_det").
BOX_SELECTION_RULES = ("optimal_f1", "fixed")
# The rule of protocol "vos_official".
OFFICIAL_RULE = "coco_optimal_f1"
# A detection matches a ground-truth box when their IoU is above this (VOC AP50).
MATCH_IOU = 0.5


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


def _voc_objects(annotation_file, class_names):
    """GroundTruthBoxes of one VOC xml file (objects of other classes are left out)."""
    with PathManager.open(annotation_file) as f:
        tree = ET.parse(f)
    boxes, classes, ignore = [], [], []
    for obj in tree.findall("object"):
        name = obj.findtext("name", "").strip()
        if name not in class_names:
            continue
        bndbox = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        classes.append(class_names.index(name))
        ignore.append(int(obj.findtext("difficult", "0") or 0) == 1)
    return GroundTruthBoxes.from_lists(boxes, classes, ignore, difficult=ignore)


def load_ground_truth(dataset_name: str) -> Dict[object, GroundTruthBoxes]:
    """The ground truth of every image of a registered dataset, by ``image_id``.

    PASCAL VOC datasets (metadata ``evaluator_type == "pascal_voc"`` with ``dirname``) are
    read from their xml files, which hold the "difficult" flags that detectron2's dataset
    dicts drop; other datasets come from their dataset dicts (``iscrowd`` boxes ignored).

    Args:
        dataset_name: a name in DatasetCatalog.

    Returns:
        dict: image_id -> :class:`GroundTruthBoxes`.
    """
    metadata = MetadataCatalog.get(dataset_name)
    dataset_dicts = DatasetCatalog.get(dataset_name)
    class_names = list(metadata.get("thing_classes", []))
    if metadata.get("evaluator_type", None) == "pascal_voc" and metadata.get("dirname", None):
        template = os.path.join(metadata.dirname, "Annotations", "{}.xml")
        return {
            d["image_id"]: _voc_objects(template.format(d["image_id"]), class_names)
            for d in dataset_dicts
        }
    ground_truth = {}
    for d in dataset_dicts:
        annotations = d.get("annotations", [])
        ground_truth[d["image_id"]] = GroundTruthBoxes.from_lists(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
            [a["category_id"] for a in annotations],
            [bool(a.get("iscrowd", 0)) for a in annotations],
        )
    return ground_truth


def _pairwise_iou(boxes1, boxes2):
    """(D, G) IoU of XYXY boxes, continuous coordinates (as detectron2's pairwise_iou)."""
    width_height = np.clip(
        np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
        - np.maximum(boxes1[:, None, :2], boxes2[None, :, :2]),
        0.0,
        None,
    )
    intersection = width_height.prod(axis=2)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = area1[:, None] + area2[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


@dataclass
class _Matching:
    """Per detection: its best same-class ground-truth box (global index) and their IoU."""

    best_iou: np.ndarray  # (N,) float64, -1 where the image has no box of the class
    best_gt: np.ndarray  # (N,) int64 index into the concatenated ground truth, -1 if none
    gt_classes: np.ndarray  # (G,) int64, all images
    gt_ignore: np.ndarray  # (G,) bool, all images


def _best_matches(image_ids, boxes, classes, ground_truth):
    """For each detection, the same-class ground-truth box of its image with the highest IoU."""
    num = len(classes)
    best_iou = np.full(num, -1.0)
    best_gt = np.full(num, -1, dtype=np.int64)
    offsets, offset = {}, 0
    for image_id, gt in ground_truth.items():
        offsets[image_id] = offset
        offset += len(gt.classes)
    unknown = sorted({str(i) for i in image_ids if i not in offsets})
    if unknown:
        raise ValueError(
            f"{len(unknown)} image id(s) of the detections have no ground truth, e.g. {unknown[:3]}"
        )
    if num:
        # Group the detections by image (one vectorised IoU matrix per image).
        codes = np.array([offsets[i] for i in image_ids], dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
        ends = np.r_[starts[1:], num]
        for start, end in zip(starts, ends):
            index = order[start:end]
            gt = ground_truth[image_ids[index[0]]]
            if not len(gt.classes):
                continue
            iou = _pairwise_iou(boxes[index], gt.boxes)
            iou[classes[index][:, None] != gt.classes[None, :]] = -1.0
            best = iou.argmax(axis=1)
            best_iou[index] = iou[np.arange(len(index)), best]
            best_gt[index] = np.where(best_iou[index] >= 0, codes[index] + best, -1)
    gts = list(ground_truth.values())
    gt_classes = np.concatenate([g.classes for g in gts]) if gts else np.zeros(0, dtype=np.int64)
    gt_ignore = np.concatenate([g.ignore for g in gts]) if gts else np.zeros(0, dtype=bool)
    return _Matching(best_iou, best_gt, gt_classes, gt_ignore)


def match_detections(image_ids, boxes, classes, scores, ground_truth, iou_threshold=MATCH_IOU):
    """Mark each detection true positive, false positive or ignored, as the VOC devkit does.

    Detections are taken per class in decreasing score order; a detection whose best
    same-class ground-truth box (highest IoU) has IoU > ``iou_threshold`` is a true positive
    if that box is not "ignore" and not matched yet, a false positive if it was matched
    already, and ignored if the box is "ignore"; otherwise it is a false positive.

    Args:
        image_ids: (N,) image ids of the detections (keys of ``ground_truth``).
        boxes: (N, 4) XYXY boxes. classes: (N,) ints. scores: (N,) floats.
        ground_truth (dict): image_id -> :class:`GroundTruthBoxes`, every image of the set.
        iou_threshold: the IoU a match must exceed.

    Returns:
        tuple[np.ndarray, np.ndarray, dict]: ``is_tp`` and ``is_ignored`` (N,) bool arrays
        (neither = false positive), and the number of non-ignored ground-truth boxes per
        class.
    """
    image_ids = np.asarray(image_ids, dtype=object)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    matching = _best_matches(image_ids, boxes, classes, ground_truth)
    qualifies = matching.best_iou > iou_threshold
    is_ignored = np.zeros(len(scores), dtype=bool)
    is_ignored[qualifies] = matching.gt_ignore[matching.best_gt[qualifies]]
    candidate = qualifies & ~is_ignored
    # In decreasing score order, the first candidate of each ground-truth box matches it.
    order = np.argsort(-scores, kind="stable")
    candidates = order[candidate[order]]
    _, first = np.unique(matching.best_gt[candidates], return_index=True)
    is_tp = np.zeros(len(scores), dtype=bool)
    is_tp[candidates[first]] = True
    counted = ~matching.gt_ignore
    num_positives = {
        int(c): int(n) for c, n in zip(*np.unique(matching.gt_classes[counted], return_counts=True))
    }
    return is_tp, is_ignored, num_positives


def _class_optimal_f1(scores, is_tp, is_ignored, num_positives):
    """Best F1 over the score thresholds of one class.

    Returns:
        dict with threshold, f1, precision, recall (None threshold if F1 is 0 throughout).
    """
    order = np.argsort(-scores, kind="stable")
    scores, is_tp, is_ignored = scores[order], is_tp[order], is_ignored[order]
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp & ~is_ignored)
    # Tied scores are one threshold: read the curve at the last detection of each run.
    ends = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]
    tp, fp = tp[ends].astype(np.float64), fp[ends].astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / num_positives
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0
    )
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return {"threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    return {
        "threshold": float(scores[ends[best]]),
        "f1": float(f1[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
    }


def optimal_f1_threshold(records, ground_truth, num_classes=None, iou_threshold=MATCH_IOU):
    """The "optimal F1" score threshold of a set with ground truth (see the module doc).

    Args:
        records (DetectionRecords): every detection of the set (no threshold).
        ground_truth (dict): image_id -> :class:`GroundTruthBoxes`, every image of the set.
        num_classes (int, optional): classes 0..num_classes-1 to consider; default: those
            seen in the detections or the ground truth.
        iou_threshold: the IoU a match must exceed.

    Returns:
        tuple[float or None, dict]: the mean of the class thresholds (None if no class has
        one) and, per class id, ``{"threshold", "f1", "precision", "recall", "num_detections",
        "num_gt"}`` or ``{"skipped": reason, ...}``.
    """
    is_tp, is_ignored, num_positives = match_detections(
        records.image_ids, records.boxes, records.classes, records.scores, ground_truth, iou_threshold
    )
    if num_classes is None:
        seen = set(num_positives) | {int(c) for c in np.unique(records.classes)}
        num_classes = max(seen) + 1 if seen else 0
    per_class = {}
    for class_id in range(num_classes):
        mask = records.classes == class_id
        info = {"num_detections": int(mask.sum()), "num_gt": num_positives.get(class_id, 0)}
        if not info["num_gt"]:
            info["skipped"] = "no ground-truth box"
        elif not info["num_detections"]:
            info["skipped"] = "no detection"
        else:
            best = _class_optimal_f1(records.scores[mask], is_tp[mask], is_ignored[mask], info["num_gt"])
            if best["threshold"] is None:
                info["skipped"] = "no true positive (F1 = 0 at every threshold)"
            else:
                info.update(best)
        per_class[class_id] = info
    thresholds = [info["threshold"] for info in per_class.values() if "threshold" in info]
    return (float(np.mean(thresholds)) if thresholds else None), per_class


def _coco_eval(records, ground_truth, num_classes):
    """pycocotools' COCOeval of the detections, evaluated and accumulated (output muted).

    Ground truth as the released VOS code builds it: every box (VOC "difficult" included)
    with ``iscrowd`` 0, COCO crowd boxes with ``iscrowd`` 1; class c is category c + 1.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    unknown = sorted({str(i) for i in records.image_ids if i not in ground_truth})
    if unknown:
        raise ValueError(f"{len(unknown)} image id(s) of the detections have no ground truth, e.g. {unknown[:3]}")
    coco_ids = {image_id: index + 1 for index, image_id in enumerate(ground_truth)}
    annotations = []
    for image_id, gt in ground_truth.items():
        crowd = gt.ignore & ~gt.difficult
        for box, class_id, is_crowd in zip(gt.boxes, gt.classes, crowd):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": coco_ids[image_id],
                    "category_id": int(class_id) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(width), float(height)],
                    "area": float(width * height),
                    "iscrowd": int(is_crowd),
                }
            )
    detections = [
        {
            "image_id": coco_ids[image_id],
            "category_id": int(class_id) + 1,
            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
            "score": float(score),
        }
        for image_id, box, class_id, score in zip(records.image_ids, records.boxes, records.classes, records.scores)
    ]
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i} for i in coco_ids.values()],
            "annotations": annotations,
            "categories": [{"id": c + 1} for c in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        coco_eval.params.catIds = list(range(1, num_classes + 1))
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def coco_optimal_f1_threshold(records, ground_truth, num_classes=None):
    """The optimal-F1 threshold of the released VOS code (see the module doc).

    Args:
        records (DetectionRecords): every detection of the ID set, with its class score.
        ground_truth (dict): image_id -> :class:`GroundTruthBoxes`, every image of the set.
        num_classes (int, optional): classes 0..num_classes-1; default: those seen in the
            detections or the ground truth.

    Returns:
        tuple[float or None, dict]: the mean of the non-zero class thresholds (None if there
        is none) and, per class id, ``{"threshold", "f1", "precision", "recall",
        "num_detections", "num_gt"}`` (recall: the COCO recall threshold of the best F1;
        precision and F1 averaged over IoU) or ``{"skipped": reason, ...}``.
    """
    if num_classes is None:
        seen = {int(c) for c in records.classes} | {int(c) for g in ground_truth.values() for c in g.classes}
        num_classes = max(seen) + 1 if seen else 0
    num_gt = np.bincount(
        np.concatenate([g.classes for g in ground_truth.values()] + [np.zeros(0, dtype=np.int64)]),
        minlength=num_classes,
    )
    num_detections = np.bincount(records.classes, minlength=num_classes)
    per_class = {c: {"num_detections": int(num_detections[c]), "num_gt": int(num_gt[c])} for c in range(num_classes)}
    if not len(records) or not num_classes:
        for info in per_class.values():
            info["skipped"] = "no detection"
        return None, per_class
    coco_eval = _coco_eval(records, ground_truth, num_classes)
    # (T, R, K, A, M) -> (R, K): mean over the IoU thresholds, area "all", 100 detections.
    precision = coco_eval.eval["precision"].mean(axis=0)[:, :, 0, -1]
    scores = coco_eval.eval["scores"].mean(axis=0)[:, :, 0, -1]
    recall = np.asarray(coco_eval.params.recThrs)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    # np.argmax as the released code: the first maximum (a NaN counts as the maximum).
    best = f1.argmax(axis=0)
    thresholds = []
    for class_id, info in per_class.items():
        if not info["num_gt"]:
            info["skipped"] = "no ground-truth box"
            continue
        threshold = float(scores[best[class_id], class_id])
        if threshold == 0.0:
            info["skipped"] = "score 0 at the best F1 (its recall never reached)"
            continue
        info.update(
            threshold=threshold,
            f1=float(f1[best[class_id], class_id]),
            precision=float(precision[best[class_id], class_id]),
            recall=float(recall[best[class_id], 0]),
        )
        thresholds.append(threshold)
    return (float(np.mean(thresholds)) if thresholds else None), per_class


@dataclass
class BoxSelection:
    """A box-selection rule resolved to a score threshold.

    Attributes:
        rule: "coco_optimal_f1" (protocol "vos_official"), "optimal_f1" or "fixed".
        score_threshold: detections whose ``score_field`` is >= this are kept.
        dataset: the set the threshold was determined on ("" for "fixed").
        per_class: for the optimal-F1 rules, per class name, the class's threshold and F1
            (or why it was skipped).
        fallback: True when no class threshold exists and the fixed one is used.
        protocol: "vos_official" or "vos_det".
        score_field: the score compared with the threshold: "proposal_scores" (the
            proposal's maximum foreground probability, "vos_official") or "scores" (the
            detection's class probability, "vos_det").
    """

    rule: str
    score_threshold: float
    dataset: str = ""
    per_class: Dict[str, dict] = field(default_factory=dict)
    fallback: bool = False
    protocol: str = "vos_det"
    score_field: str = "scores"

    def apply(self, records):
        """The detections of ``records`` (DetectionRecords) this selection keeps."""
        values = getattr(records, self.score_field)
        if np.isnan(values).any():
            raise ValueError(
                f"protocol {self.protocol!r} selects boxes by Instances.{self.score_field}, which "
                "the model's detections do not carry (a box predictor other than "
                "VOSOutputLayers?): use TEST.OOD.PROTOCOL vos_det"
            )
        return records.select(self.score_threshold, self.score_field)

    def describe(self) -> str:
        """One sentence stating the protocol, the rule and the threshold."""
        compared = (
            "their proposal's maximum foreground probability"
            if self.score_field == "proposal_scores"
            else "their class probability"
        )
        keep = f"detections with {compared} >= {self.score_threshold:.4f} are kept (protocol {self.protocol})"
        if self.rule == "fixed" or self.fallback:
            why = " (optimal F1 undefined: no class has a threshold)" if self.fallback else ""
            return f"fixed score threshold{why}: {keep}"
        used = [name for name, info in self.per_class.items() if "threshold" in info]
        if self.rule == OFFICIAL_RULE:
            how = "per class, the score of highest F1 of COCOeval's precision averaged over IoU .50:.95"
        else:
            how = f"per class, the score maximising F1 (VOC matching, IoU > {MATCH_IOU}, difficult ignored)"
        return (
            f"optimal F1 on {self.dataset}: {how}, averaged over {len(used)} of "
            f"{len(self.per_class)} classes; {keep}"
        )

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "rule": self.rule,
            "score_field": self.score_field,
            "score_threshold": self.score_threshold,
            "dataset": self.dataset,
            "description": self.describe(),
            "fallback": self.fallback,
            "per_class": self.per_class,
        }


def select_boxes(
    rule: str,
    *,
    fixed_threshold: float,
    records=None,
    ground_truth: Optional[dict] = None,
    dataset_name: str = "",
    class_names=None,
    protocol: str = "vos_det",
) -> BoxSelection:
    """Resolve a protocol's box selection to a :class:`BoxSelection`.

    Args:
        rule: one of :data:`BOX_SELECTION_RULES` (protocol "vos_det"; unused by
            "vos_official", whose rule is fixed).
        fixed_threshold: the threshold of "fixed", and the fallback of the optimal-F1 rules
            when no class has a threshold.
        records (DetectionRecords): the ID set's detections (for the optimal-F1 rules).
        ground_truth (dict): its ground truth; loaded from ``dataset_name`` when None.
        dataset_name: the ID set.
        class_names (list[str], optional): names of the class ids (default: the dataset's
            ``thing_classes``).
        protocol: one of :data:`PROTOCOLS`.

    Returns:
        BoxSelection
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"TEST.OOD.PROTOCOL must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "vos_official":
        rule, score_field = OFFICIAL_RULE, "proposal_scores"
    elif rule not in BOX_SELECTION_RULES:
        raise ValueError(f"TEST.OOD.BOX_SELECTION must be one of {BOX_SELECTION_RULES}, got {rule!r}")
    else:
        score_field = "scores"
    if rule == "fixed":
        return BoxSelection("fixed", float(fixed_threshold), protocol=protocol, score_field=score_field)
    if records is None:
        raise ValueError("the optimal-F1 box selection needs the detections of the ID set")
    if ground_truth is None:
        ground_truth = load_ground_truth(dataset_name)
    if class_names is None and dataset_name:
        class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    num_classes = len(class_names) if class_names else None
    compute = coco_optimal_f1_threshold if rule == OFFICIAL_RULE else optimal_f1_threshold
    threshold, per_class = compute(records, ground_truth, num_classes)
    named = {
        (class_names[c] if class_names and c < len(class_names) else str(c)): info
        for c, info in per_class.items()
    }
    if threshold is None:
        logger.warning(
            "optimal-F1 box selection on %s: no class has a threshold; using the fixed "
            "threshold %s (TEST.OOD.SCORE_THRESHOLD)", dataset_name, fixed_threshold
        )
        threshold, fallback = float(fixed_threshold), True
    else:
        fallback = False
    return BoxSelection(rule, threshold, dataset_name, named, fallback, protocol, score_field)


def select_boxes_for_config(cfg, records, dataset_name: str) -> BoxSelection:
    """:func:`select_boxes` with the config's ``TEST.OOD`` protocol, rule and fixed threshold."""
    return select_boxes(
        cfg.TEST.OOD.BOX_SELECTION,
        fixed_threshold=cfg.TEST.OOD.SCORE_THRESHOLD,
        records=records,
        dataset_name=dataset_name,
        protocol=cfg.TEST.OOD.PROTOCOL,
    )
