"""Fast R-CNN inference in the released VOS code's order: NMS on boxes not yet clipped.

detectron2's ``fast_rcnn_inference`` clips every predicted box to the input image, then
thresholds the class scores and runs per-class NMS. The release's evaluation
(``detection/inference/rcnn_predictor.py:138-166`` and ``inference_utils.py:43-96`` of
deeplearning-wisc/vos, branch main-MLP) thresholds (``score > threshold``), decodes the
kept boxes and runs ``batched_nms`` on them UNCLIPPED, keeps the first 100, and only clips
when it rescales to the original image size (``inference_utils.py:453-463``, as detectron2's
``detector_postprocess`` does). A box sticking out of the image therefore suppresses, and is
suppressed by, its neighbours through its full extent. Protocol "vos_official" runs this rule;
the returned boxes are then clipped by the meta-architecture's postprocessing.
"""
from typing import List, Tuple

import torch

from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

__all__ = ["nms_before_clip_inference"]


def _single_image(boxes, scores, image_shape, score_thresh, nms_thresh, topk_per_image):
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not finite.all():
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    num_box_classes = boxes.shape[1] // 4
    boxes = boxes.view(-1, num_box_classes, 4)
    keep_mask = scores > score_thresh
    rows_classes = keep_mask.nonzero()
    boxes = boxes[rows_classes[:, 0], 0] if num_box_classes == 1 else boxes[keep_mask]
    scores = scores[keep_mask]
    keep = batched_nms(boxes, scores, rows_classes[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = rows_classes[keep, 1]
    return result, rows_classes[keep, 0]


def nms_before_clip_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
):
    """Per-class NMS on the unclipped boxes, the release's rule; detectron2's contract.

    Args:
        boxes (list[Tensor]): per image, (R_i, K * 4) or (R_i, 4) decoded boxes.
        scores (list[Tensor]): per image, (R_i, K + 1) class probabilities.
        image_shapes (list[tuple[int, int]]): per image, (height, width) of the input.
        score_thresh: a (proposal, class) pair is a candidate when its probability is above.
        nms_thresh: IoU of the per-class NMS.
        topk_per_image: detections kept per image (< 0: all).

    Returns:
        tuple[list[Instances], list[Tensor]]: per image, the detections (pred_boxes NOT
        clipped, scores, pred_classes) and the index of each one's proposal among the rows
        with finite boxes and scores, as ``fast_rcnn_inference`` returns them.
    """
    results = [
        _single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]
