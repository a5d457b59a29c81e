"""Protocol "vos_official" to the last box: the released VOS evaluation's remaining rules, each
against a direct re-implementation of the release's rule.

* the threshold is rounded to 4 decimals before boxes are kept
  (``offline_evaluation/compute_ood_probabilistic_metrics.py:176``: ``round(float(t), 4)``,
  then a box is skipped when ``max(cls_prob) < t``, ``core/evaluation_tools/evaluation_utils.py:46``);
* VOC ground truth reaches COCOeval in the raw XML corners (``core/datasets/convert_voc_to_coco.py:51-66``),
  not detectron2's xmin - 1, ymin - 1;
* with no class threshold every box is kept (the mean of no threshold is NaN, and
  ``score < NaN`` is False; without an ID threshold file the release uses 0.0);
* NMS runs on the boxes before they are clipped (``inference/rcnn_predictor.py:138-166``,
  ``inference/inference_utils.py:67-73``).
"""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import BoxMode

from test_ood_protocol import _random_example, _slow_official_threshold
from vos_det.evaluation import GroundTruthBoxes, select_boxes
from vos_det.modeling.release_inference import nms_before_clip_inference

VOC_SET, COCO_SET = "test_release_voc_layout", "test_release_coco_layout"


def _release_keeps(proposal_scores, threshold):
    """evaluation_utils.py:46 with the rounded threshold: skip when max(cls_prob) < t."""
    return np.array([not (score < threshold) for score in proposal_scores])


@pytest.fixture
def registered_sets():
    """The ground truth of _random_example(0) as a VOC-layout set (detectron2's corners:
    XML xmin - 1, ymin - 1) and as a COCO-json set, both in the catalogs."""
    rows, ground_truth = _random_example(0)
    dicts = [
        {
            "image_id": image_id, "file_name": f"{image_id}.jpg", "height": 120, "width": 120,
            "annotations": [
                {"bbox": box.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c)}
                for box, c in zip(gt.boxes, gt.classes)
            ],
        }
        for image_id, gt in ground_truth.items()
    ]
    for name, evaluator_type in ((VOC_SET, "pascal_voc"), (COCO_SET, "coco")):
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"], evaluator_type=evaluator_type, ood_role="id")
    yield rows, ground_truth
    for name in (VOC_SET, COCO_SET):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _xml(ground_truth):
    return {k: GroundTruthBoxes(g.boxes + np.array([1.0, 1.0, 0.0, 0.0]), g.classes, g.ignore, g.difficult)
            for k, g in ground_truth.items()}


def test_voc_ground_truth_in_raw_xml_coordinates_and_threshold_rounded(registered_sets, detection_records, box_iou):
    rows, ground_truth = registered_sets
    records = detection_records(rows, proposal_scores=[r[2] for r in rows])
    release, _ = _slow_official_threshold(rows, _xml(ground_truth), 3, box_iou)
    detectron2_corners, _ = _slow_official_threshold(rows, ground_truth, 3, box_iou)
    assert abs(release - detectron2_corners) > 1e-3  # the shift moves this threshold

    voc = select_boxes("optimal_f1", fixed_threshold=0.5, records=records, dataset_name=VOC_SET, protocol="vos_official")
    assert voc.unrounded_threshold == pytest.approx(release, abs=1e-12)
    assert voc.score_threshold == round(float(voc.unrounded_threshold), 4) != voc.unrounded_threshold
    # A COCO-json set keeps its boxes as they are.
    coco = select_boxes("optimal_f1", fixed_threshold=0.5, records=records, dataset_name=COCO_SET,
                        protocol="vos_official")
    assert coco.unrounded_threshold == pytest.approx(detectron2_corners, abs=1e-12)

    # Boxes kept by the rounded threshold, as the release; one proposal score lies between the
    # unrounded and the rounded threshold, where the two rules disagree.
    between = (voc.score_threshold + voc.unrounded_threshold) / 2
    proposal_scores = np.array([voc.score_threshold, between, voc.unrounded_threshold, 0.9, 0.1])
    candidates = detection_records([("x", 0, 0.5, [0, 0, 5, 5])] * len(proposal_scores), proposal_scores=proposal_scores)
    kept = voc.apply(candidates).proposal_scores
    expected = proposal_scores[_release_keeps(proposal_scores, round(float(release), 4))]
    assert sorted(kept.tolist()) == sorted(expected.tolist())
    unrounded_rule = proposal_scores[proposal_scores >= voc.unrounded_threshold]
    assert len(unrounded_rule) != len(expected)


def test_no_class_threshold_keeps_every_box(detection_records):
    ood = detection_records([("o", 0, 0.5, [0, 0, 5, 5])] * 3, proposal_scores=[0.0, 0.01, 0.99])
    # No detection on the ID set: no class has a threshold. The release keeps every box
    # (threshold NaN, or 0.0 without an ID threshold file); protocol vos_det falls back to 0.5.
    official = select_boxes("optimal_f1", fixed_threshold=0.5, records=detection_records([]),
                            ground_truth={"a": GroundTruthBoxes.from_lists([[0, 0, 9, 9]], [0])},
                            class_names=["a"], protocol="vos_official")
    assert official.fallback and official.score_threshold == 0.0
    assert "every detection is kept" in official.describe()
    assert len(official.apply(ood)) == 3 == int(_release_keeps(ood.proposal_scores, float("nan")).sum())
    vos_det = select_boxes("optimal_f1", fixed_threshold=0.5, records=detection_records([]),
                           ground_truth={"a": GroundTruthBoxes.from_lists([[0, 0, 9, 9]], [0])}, class_names=["a"])
    assert vos_det.fallback and vos_det.score_threshold == 0.5


def _release_nms(boxes, scores, classes, iou_threshold):
    """Greedy per-class NMS on the boxes as given (no clipping), written out."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        suppressed = False
        for j in keep:
            if classes[j] != classes[i]:
                continue
            a, b = boxes[i], boxes[j]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
            if w * h / union > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
    return keep


def test_nms_runs_before_clipping_as_the_release():
    # Two proposals of class 0 in a 100 x 100 image: inside, [0, 0, 50, 50] (p 0.9), and
    # [-60, 0, 50, 50] (p 0.8), whose part inside the image is the same box. Unclipped their
    # IoU is 2500 / 5500 = 0.45 < 0.5: the release keeps both; clipped first it is 1.
    # A third proposal of class 1 is kept by both rules.
    boxes = torch.tensor([[0.0, 0, 50, 50] * 2, [-60.0, 0, 50, 50] * 2, [60.0, 60, 90, 90] * 2])
    probs = torch.tensor([[0.9, 0.02, 0.08], [0.8, 0.02, 0.18], [0.01, 0.7, 0.29]])
    image = (100, 100)
    instances, rows = nms_before_clip_inference([boxes], [probs], [image], 0.05, 0.5, 100)
    candidates = [(r, c) for r in range(3) for c in range(2) if probs[r, c] > 0.05]
    expected = _release_nms([boxes[r, 4 * c: 4 * c + 4].tolist() for r, c in candidates],
                            [float(probs[r, c]) for r, c in candidates], [c for _, c in candidates], 0.5)
    assert [candidates[i] for i in expected] == list(zip(rows[0].tolist(), instances[0].pred_classes.tolist()))
    assert len(instances[0]) == 3
    assert instances[0].pred_boxes.tensor[1].tolist() == [-60.0, 0.0, 50.0, 50.0]  # clipped later, by postprocess
    clip_first, _ = fast_rcnn_inference([boxes], [probs], [image], 0.05, 0.5, 100)
    assert len(clip_first[0]) == 2
