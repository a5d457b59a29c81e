"""The optimal-F1 score threshold of protocol "vos_official", as the released VOS code.

* COCOeval (pycocotools) on the ID test set's detections, scored by their class score;
  ``eval["precision"]`` (101 recall thresholds r) and ``eval["scores"]`` (the score at which
  each r is reached), area "all", 100 detections per image, are averaged over the ten IoU
  thresholds .50:.95;
* per class, F1(r) = 2 P(r) r / (P(r) + r) and the class's threshold is the averaged score
  at the first r of highest F1 (numpy's argmax: a NaN counts as the highest, so a class
  without any true positive, whose F1 at r = 0 is 0 / 0, gets its top score); the threshold
  is the mean of the class thresholds that are not 0 (0 = that recall was never reached);
  ``offline_evaluation/compute_average_precision.py:52-61`` of the release.

A class without any ground-truth box in the set keeps COCOeval's precision and scores of -1,
so its threshold is -1 and it is averaged in, as the release does (VOC test and BDD100k val
hold every class; protocol "vos_det" leaves such a class out instead). The ground truth is
given to COCOeval as the release does: VOC "difficult" boxes are ordinary boxes, COCO crowd
boxes are crowd; the caller gives VOC boxes in the release's raw XML coordinates
(:func:`~vos_det.evaluation.ground_truth.voc_xml_coordinates`).
"""
import os
from contextlib import redirect_stdout

import numpy as np

__all__ = ["coco_optimal_f1_threshold"]


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
        precision and F1 averaged over IoU), ``{"threshold": -1, "note", ...}`` for a class
        without ground truth, or ``{"skipped": reason, ...}``.
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
        threshold = float(scores[best[class_id], class_id])
        if precision[0, class_id] == -1:
            # COCOeval's arrays keep -1 for a class without ground truth; the release averages it in.
            info.update(threshold=threshold, note="no ground-truth box: COCOeval's -1 averaged in, as the release")
            thresholds.append(threshold)
            continue
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

