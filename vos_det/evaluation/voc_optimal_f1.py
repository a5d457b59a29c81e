"""The optimal-F1 score threshold of protocol "vos_det", at IoU 0.5 as the VOC AP.

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
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["MATCH_IOU", "match_detections", "optimal_f1_threshold"]

# A detection matches a ground-truth box when their IoU is above this (VOC AP50).
MATCH_IOU = 0.5


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

