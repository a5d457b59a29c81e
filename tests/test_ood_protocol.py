"""The two OOD protocols: the released VOS box selection against a direct slow
re-implementation, secondary-class detections of a confident proposal, and the protocol named
in every report."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torch import nn

from vos_det.config import load_config
from vos_det.evaluation import (
    OOD_RESULTS_FILE,
    BoxSelection,
    DetectionRecords,
    GroundTruthBoxes,
    OODRule,
    coco_optimal_f1_threshold,
    collect_detections,
    evaluate_ood,
    format_ood_report,
    ood_metrics,
    optimal_f1_threshold,
    select_boxes,
)
from vos_det.evaluation.records import _image_records
from vos_det.evaluation.protocol import fpr95_method
from vos_det.modeling import VOSOutputLayers

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


def _slow_interpolated_curve(rows, ground_truth, class_id, iou_threshold, box_iou):
    """COCO's 101-point interpolated precision and the score reaching each recall, one class."""
    outcomes = []  # (score, is_true_positive), image after image
    num_gt = 0
    for image_id, gt in ground_truth.items():
        gt_boxes = [box for box, c in zip(gt.boxes, gt.classes) if c == class_id]
        num_gt += len(gt_boxes)
        detections = sorted(
            (r for r in rows if r[0] == image_id and r[1] == class_id), key=lambda r: -r[2]
        )[:MAX_DETECTIONS]
        used = [False] * len(gt_boxes)
        for _, _, score, box in detections:
            best, best_iou = -1, min(iou_threshold, 1 - 1e-10)
            for j, gt_box in enumerate(gt_boxes):
                overlap = box_iou(box, gt_box)
                if used[j] or overlap < best_iou:
                    continue
                best, best_iou = j, overlap
            if best >= 0:
                used[best] = True
            outcomes.append((score, best >= 0))
    outcomes.sort(key=lambda o: -o[0])
    precision_curve, recall_curve, true_positives = [], [], 0
    for rank, (_, is_tp) in enumerate(outcomes, start=1):
        true_positives += is_tp
        precision_curve.append(true_positives / rank)
        recall_curve.append(true_positives / num_gt)
    precision, scores = [], []
    for r in COCO_RECALL_THRESHOLDS:
        reached = [i for i, recall in enumerate(recall_curve) if recall >= r]
        if not reached:
            precision.append(0.0)
            scores.append(0.0)
            continue
        first = reached[0]
        precision.append(max(precision_curve[first:]))  # best precision at recall >= r
        scores.append(outcomes[first][0])
    return np.array(precision), np.array(scores)


def _slow_official_threshold(rows, ground_truth, num_classes, box_iou):
    """compute_average_precision.py of the VOS release, written out with loops."""
    thresholds = {}
    for class_id in range(num_classes):
        if not any(c == class_id for gt in ground_truth.values() for c in gt.classes):
            # COCOeval leaves the precision and scores of a class without ground truth at -1.
            precision = scores = np.full(len(COCO_RECALL_THRESHOLDS), -1.0)
        else:
            curves = [_slow_interpolated_curve(rows, ground_truth, class_id, t, box_iou) for t in COCO_IOU_THRESHOLDS]
            precision = np.mean([p for p, _ in curves], axis=0)
            scores = np.mean([s for _, s in curves], axis=0)
        best = None
        for i, (p, r) in enumerate(zip(precision, COCO_RECALL_THRESHOLDS)):
            f1 = 2 * p * r / (p + r) if p + r else float("nan")
            if np.isnan(f1):  # numpy's argmax takes the first NaN
                best = i
                break
            if best is None or f1 > best_f1:
                best, best_f1 = i, f1
        if scores[best] != 0:
            thresholds[class_id] = scores[best]
    return (np.mean(list(thresholds.values())) if thresholds else None), thresholds


def _random_example(seed, num_classes=3, num_images=6):
    rng = np.random.default_rng(seed)
    ground_truth, rows = {}, []
    for image in range(num_images):
        corners = rng.uniform(0, 80, size=(4, 2))
        gt_boxes = np.concatenate([corners, corners + rng.uniform(8, 30, size=(4, 2))], axis=1)
        gt_classes = rng.integers(0, num_classes, size=4)
        ground_truth[image] = GroundTruthBoxes.from_lists(gt_boxes, gt_classes)
        for box, cls in zip(gt_boxes, gt_classes):
            for _ in range(rng.integers(0, 3)):  # jittered copies: every IoU from poor to exact
                label = cls if rng.random() < 0.8 else rng.integers(0, num_classes)
                rows.append([image, int(label), 0.0, box + rng.normal(0, rng.choice([0.3, 2.0, 4.0]), size=4)])
        for _ in range(2):  # background detections
            corner = rng.uniform(0, 80, size=2)
            rows.append([image, int(rng.integers(0, num_classes)), 0.0, np.r_[corner, corner + 15]])
    # Distinct scores: COCOeval breaks ties by image order, which a re-implementation need not copy.
    for row, score in zip(rows, rng.permutation(len(rows))):
        row[2] = float(0.05 + 0.9 * (score + 0.5) / len(rows))
    return [tuple(row) for row in rows], ground_truth


@pytest.mark.parametrize("seed", range(4))
def test_official_threshold_matches_a_direct_reimplementation(seed, detection_records, box_iou):
    rows, ground_truth = _random_example(seed)
    threshold, per_class = coco_optimal_f1_threshold(detection_records(rows), ground_truth, num_classes=3)
    expected, expected_per_class = _slow_official_threshold(rows, ground_truth, 3, box_iou)
    assert expected is not None
    assert threshold == pytest.approx(expected, abs=1e-9)
    for class_id, value in expected_per_class.items():
        assert per_class[class_id]["threshold"] == pytest.approx(value, abs=1e-9)


def test_official_threshold_averages_over_iou_thresholds(detection_records, box_iou):
    """A loosely placed confident box and a tight, less confident one: at IoU 0.5 both are
    hits and the best F1 takes every box (threshold 0.6), averaged over IoU .50:.95 the loose
    box stops counting at IoU 0.6 and the threshold is the score reaching the tight one."""
    ground_truth = {
        "a": GroundTruthBoxes.from_lists([[0, 0, 100, 100]], [0]),
        "b": GroundTruthBoxes.from_lists([[0, 0, 100, 100]], [0]),
    }
    rows = [
        ("a", 0, 0.9, [0, 0, 100, 55]),  # IoU 0.55: a hit at IoU 0.5 and 0.55 only
        ("b", 0, 0.6, [0, 0, 100, 98]),  # IoU 0.98: a hit at every IoU threshold
    ]
    records = detection_records(rows)
    threshold, per_class = coco_optimal_f1_threshold(records, ground_truth, num_classes=1)
    expected, _ = _slow_official_threshold(rows, ground_truth, 1, box_iou)
    assert threshold == pytest.approx(expected)
    vos_det_threshold, _ = optimal_f1_threshold(records, ground_truth, num_classes=1)
    assert vos_det_threshold == pytest.approx(0.6)
    # Averaged over the 10 IoU thresholds: at recall 0.5 the precision is 0.6 (1 at IoU .50
    # and .55, 0.5 at the 8 others) and the score 0.66 (0.9 twice, 0.6 eight times); at
    # recall 1 the precision is 0.2. F1 is highest at recall 0.5: threshold 0.66.
    assert threshold == pytest.approx(0.66)
    assert per_class[0]["f1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)


def test_official_threshold_counts_difficult_boxes_and_averages_classes_without_ground_truth_as_minus_one(
    detection_records, box_iou
):
    ground_truth = {"a": GroundTruthBoxes.from_lists([[0, 0, 10, 10]], [0], ignore=[True], difficult=[True])}
    rows = [("a", 0, 0.7, [0, 0, 10, 10]), ("a", 1, 0.8, [0, 0, 10, 10])]
    threshold, per_class = coco_optimal_f1_threshold(detection_records(rows), ground_truth, num_classes=2)
    # The release converts VOC with every box, "difficult" included, as a plain box.
    assert per_class[0]["threshold"] == pytest.approx(0.7) and per_class[0]["recall"] == 1.0
    # Class 1 has no ground truth: COCOeval's -1 enters the mean, as in the release.
    assert per_class[1]["threshold"] == -1.0 and "averaged in" in per_class[1]["note"]
    assert threshold == pytest.approx((0.7 - 1.0) / 2) == _slow_official_threshold(rows, ground_truth, 2, box_iou)[0]


# --- secondary-class detections of a confident proposal -----------------------------------


def _predictor(num_classes=3):
    return VOSOutputLayers(
        ShapeSpec(channels=4),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=num_classes,
        test_score_thresh=0.05,
        test_nms_thresh=0.5,
        test_topk_per_image=100,
        vos_enabled=False,
        ood_score="energy",
    )


def test_inference_gives_every_detection_its_proposals_maximum_foreground_probability():
    predictor = _predictor().eval()
    proposals = Instances((50, 50))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 20, 20], [25, 25, 45, 45]]))
    # Proposal 0: classes 0 and 1 above the test threshold; proposal 1: class 2 only.
    probabilities = torch.tensor([[0.6, 0.3, 0.01, 0.09], [0.01, 0.01, 0.9, 0.08]])
    logits = probabilities.log()
    features = torch.randn(2, 4)
    instances, indices = predictor.inference((logits, torch.zeros(2, 12), features), [proposals])
    instances = instances[0]
    by_proposal = {
        (int(p), int(c)): float(s)
        for p, c, s in zip(indices[0], instances.pred_classes, instances.proposal_scores)
    }
    assert by_proposal == {(0, 0): pytest.approx(0.6), (0, 1): pytest.approx(0.6), (1, 2): pytest.approx(0.9)}
    # Its class score stays the detection's own.
    secondary = instances.pred_classes == 1
    assert float(instances.scores[secondary]) == pytest.approx(0.3)

    records = DetectionRecords(**{**_image_records("img", instances), "num_images": 1})
    official = BoxSelection("coco_optimal_f1", 0.5, protocol="vos_official", score_field="proposal_scores")
    assert sorted(official.apply(records).classes.tolist()) == [0, 1, 2]  # the 0.3 detection is kept
    vos_det = select_boxes("fixed", fixed_threshold=0.5, protocol="vos_det")
    assert sorted(vos_det.apply(records).classes.tolist()) == [0, 2]


def test_official_threshold_of_a_class_without_true_positive_is_its_top_score(detection_records, box_iou):
    # F1 at recall 0 is 0 / 0 = NaN, which numpy's argmax (and so the release) picks.
    far_away = {"a": GroundTruthBoxes.from_lists([[900, 900, 910, 910]], [0])}
    rows = [("a", 0, 0.7, [0, 0, 10, 10]), ("a", 0, 0.4, [20, 20, 30, 30])]
    threshold, _ = coco_optimal_f1_threshold(detection_records(rows), far_away, num_classes=1)
    assert threshold == pytest.approx(0.7) == _slow_official_threshold(rows, far_away, 1, box_iou)[0]


def test_official_selection_refuses_records_without_proposal_scores(detection_records):
    records = detection_records([("a", 0, 0.9, [0, 0, 10, 10])])
    selection = BoxSelection("coco_optimal_f1", 0.5, protocol="vos_official", score_field="proposal_scores")
    with pytest.raises(ValueError, match="proposal_scores.*vos_det"):
        selection.apply(records)
    with pytest.raises(ValueError, match="TEST.OOD.PROTOCOL"):
        select_boxes("fixed", fixed_threshold=0.5, protocol="paper")


# --- the whole protocol, with a stand-in detector -------------------------------------------

ID_SET, OOD_SET = "test_protocol_id", "test_protocol_ood"


class _FixedDetector(nn.Module):
    """Returns, for each image, the detections listed for its image_id."""

    def __init__(self, detections):
        super().__init__()
        self.detections = detections

    def forward(self, inputs):
        outputs = []
        for item in inputs:
            rows = self.detections[item["image_id"]]
            instances = Instances((100, 100))
            instances.pred_boxes = Boxes(torch.tensor([r["box"] for r in rows], dtype=torch.float32).reshape(-1, 4))
            instances.pred_classes = torch.tensor([r["class"] for r in rows], dtype=torch.long)
            instances.scores = torch.tensor([r["score"] for r in rows])
            instances.proposal_scores = torch.tensor([r["proposal"] for r in rows])
            instances.ood_scores_energy = torch.tensor([r["energy"] for r in rows])
            outputs.append({"instances": instances})
        return outputs


class _NoDetectionMetrics(DatasetEvaluator):
    def reset(self):
        pass

    def process(self, inputs, outputs):
        pass

    def evaluate(self):
        return {}


@pytest.fixture
def protocol_sets():
    """An ID set of 6 images (one ground-truth box each) and an OOD set of 4, with detections:
    on ID images a good box (class score 0.9) plus a secondary-class copy (0.2) of the same
    proposal; on OOD images a box of class score 0.8 and a copy at 0.3."""
    rng = np.random.default_rng(0)
    detections, id_dicts, ood_dicts = {}, [], []
    for index in range(10):
        image_id = f"img{index}"
        is_id = index < 6
        primary, secondary = rng.uniform(0.7, 0.95), rng.uniform(0.1, 0.4)
        energy = rng.normal(-5 if is_id else -3, 1.0)
        box = [10.0, 10.0, 60.0, 60.0]
        detections[image_id] = [
            {"box": box, "class": 0, "score": primary, "proposal": primary, "energy": energy},
            {"box": box, "class": 1, "score": secondary, "proposal": primary, "energy": energy},
        ]
        record = {"image_id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 100}
        if is_id:
            record["annotations"] = [{"bbox": box, "bbox_mode": 0, "category_id": 0, "iscrowd": 0}]
            id_dicts.append(record)
        else:
            ood_dicts.append(record)
    DatasetCatalog.register(ID_SET, lambda: id_dicts)
    MetadataCatalog.get(ID_SET).set(thing_classes=["a", "b"], ood_role="id")
    DatasetCatalog.register(OOD_SET, lambda: ood_dicts)
    MetadataCatalog.get(OOD_SET).set(thing_classes=["a", "b"], ood_role="ood")
    yield _FixedDetector(detections), {ID_SET: id_dicts, OOD_SET: ood_dicts}, detections
    for name in (ID_SET, OOD_SET):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("protocol", ["vos_official", "vos_det"])
def test_protocol_keeps_boxes_by_its_rule_and_names_itself(protocol, protocol_sets, tmp_path):
    model, dataset_dicts, detections = protocol_sets
    # The base config: every TEST.OOD key at its default but these two.
    cfg = load_config(
        "Base-RCNN-FPN.yaml",
        [
            "TEST.OOD.PROTOCOL", protocol, "TEST.OOD.PLOTS", "False", "TEST.OOD.CALIBRATION_DATASET", "",
            "DATASETS.TEST", f"('{ID_SET}',)", "DATASETS.OOD_TEST", f"('{OOD_SET}',)", "OUTPUT_DIR", str(tmp_path),
        ],
    )
    records = {
        ID_SET: collect_detections(model, [[d] for d in dataset_dicts[ID_SET]], _NoDetectionMetrics()),
        OOD_SET: collect_detections(model, [[d] for d in dataset_dicts[OOD_SET]]),
    }
    results, report = evaluate_ood(records, cfg)
    saved = json.loads((tmp_path / OOD_RESULTS_FILE).read_text())
    assert saved["protocol"]["name"] == protocol == report["box_selection"][ID_SET]["protocol"]
    assert f"OOD protocol: {protocol}" in format_ood_report(report)
    threshold = results["box_selection"][ID_SET]["score_threshold"]
    if protocol == "vos_official":
        # Class "b" has no ground truth: its -1 is averaged in (as the release), so the mean of
        # "a"'s threshold (0.7-0.95) and -1, rounded to 4 decimals, keeps every box.
        unrounded = report["box_selection"][ID_SET]["unrounded_threshold"]
        assert threshold == round(unrounded, 4) and -0.15 <= threshold <= -0.025
    else:
        assert 0.7 <= threshold <= 0.95

    # Expected kept boxes and FPR95, computed directly from the detections.
    field = "proposal" if protocol == "vos_official" else "score"
    method = "official_closest" if protocol == "vos_official" else "first_at_least"
    assert fpr95_method(cfg) == method
    kept = {
        name: [r["energy"] for d in dataset_dicts[name] for r in detections[d["image_id"]] if r[field] >= threshold]
        for name in (ID_SET, OOD_SET)
    }
    counts = saved["boxes"][ID_SET]
    assert counts[ID_SET]["selected"] == len(kept[ID_SET]) and counts[OOD_SET]["selected"] == len(kept[OOD_SET])
    if protocol == "vos_official":  # both detections of every confident proposal
        assert len(kept[ID_SET]) == 2 * sum(1 for d in dataset_dicts[ID_SET]
                                            if detections[d["image_id"]][0]["proposal"] >= threshold)
    else:  # secondary-class detections (class score <= 0.4) are never kept
        assert all(r["class"] == 0 for d in dataset_dicts[ID_SET] for r in detections[d["image_id"]]
                   if r["score"] >= threshold)
    expected = ood_metrics(np.array(kept[ID_SET]), np.array(kept[OOD_SET]), fpr_method=method)
    assert results["ood"][ID_SET][OOD_SET]["energy"]["FPR95"] == pytest.approx(expected["FPR95"])
    assert results["ood"][ID_SET][OOD_SET]["energy"]["AUROC"] == pytest.approx(expected["AUROC"])


def _protocol_cfg(tmp_path, *overrides):
    return load_config(
        "Base-RCNN-FPN.yaml",
        [
            "TEST.OOD.PLOTS", "False", "DATASETS.TEST", f"('{ID_SET}',)", "DATASETS.OOD_TEST", f"('{OOD_SET}',)",
            "OUTPUT_DIR", str(tmp_path), *overrides,
        ],
    )


def test_evaluation_of_saved_records_needs_no_model(protocol_sets, tmp_path):
    model, dataset_dicts, _ = protocol_sets
    records = {name: collect_detections(model, [[d] for d in dicts]) for name, dicts in dataset_dicts.items()}
    path = tmp_path / "records.pth"
    torch.save({name: r.to_dict() for name, r in records.items()}, path)
    reloaded = {name: DetectionRecords.from_dict(d) for name, d in torch.load(path, weights_only=False).items()}
    cfg = _protocol_cfg(tmp_path, "TEST.OOD.CALIBRATION_DATASET", ID_SET)
    rule = OODRule("energy", threshold=0.0)
    first, report = evaluate_ood(records, cfg, ood_rule=rule)
    again, _ = evaluate_ood(reloaded, cfg, ood_rule=rule)
    assert again == first
    # The calibration kept 95% of the ID set's kept boxes; each score's false alarms are reported.
    calibration = report["calibration"]
    kept = report["boxes"][ID_SET][ID_SET]["selected"]
    assert calibration["num_boxes"] == kept and calibration["kept_fraction"] >= 0.95
    assert set(calibration["flagged_by_score"][ID_SET][OOD_SET]) == {"energy"}


def test_evaluation_names_what_it_lacks(protocol_sets, tmp_path):
    model, dataset_dicts, _ = protocol_sets
    records = {ID_SET: collect_detections(model, [[d] for d in dataset_dicts[ID_SET]])}
    with pytest.raises(ValueError, match=f"no detection records of \\['{OOD_SET}'\\]"):
        evaluate_ood(records, _protocol_cfg(tmp_path))
    records[OOD_SET] = collect_detections(model, [[d] for d in dataset_dicts[OOD_SET]])
    with pytest.raises(ValueError, match="has no VOS OOD head"):
        evaluate_ood(records, _protocol_cfg(tmp_path, "TEST.OOD.CALIBRATION_DATASET", ID_SET), ood_rule=None)
