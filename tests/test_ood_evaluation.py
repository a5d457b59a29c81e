"""The OOD evaluation protocol: box selection, calibration, reports and tools/ood_eval.py."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from vos_det.config import load_config
from vos_det.data.digits_det import digits_det_paths
from vos_det.engine import Trainer
from vos_det.evaluation import (
    OOD_RESULTS_FILE,
    PLOTS_DIR,
    BoxOODScoreCollector,
    Comparison,
    GroundTruthBoxes,
    ScoredSet,
    calibrate,
    format_ood_report,
    format_ood_table,
    match_detections,
    ood_metrics,
    optimal_f1_threshold,
    select_boxes,
    summarize_ood_evaluation,
    threshold_keeping,
)
from vos_det.engine.ood_evaluation import (
    CALIBRATED_MODEL_FILE,
    THRESHOLD_FILE,
    find_ood_head,
    save_calibrated_model,
    set_ood_threshold,
)
from vos_det.evaluation.plots import plot_roc_curves, plot_score_histograms
from vos_det.evaluation.report import write_json

REPO = Path(__file__).resolve().parent.parent
# The scores every VOS model reports without a fitted post-hoc state (maxlogit and gen need none).
SCORE_NAMES = {"vos", "vos_release", "energy", "weighted_energy", "msp", "maxlogit", "gen"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- box selection: optimal F1 ---------------------------------------------------------


def _hand_example(detection_records):
    """Two images; the per-class optimal-F1 thresholds are worked out in the test."""
    ground_truth = {
        "a": GroundTruthBoxes.from_lists(
            [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 0, 70, 10]],
            [0, 0, 0, 1],
            [False, False, True, False],  # the third box is "difficult"
        ),
        "b": GroundTruthBoxes.from_lists([[0, 0, 10, 10]], [2]),
    }
    rows = [
        ("a", 0, 0.9, [0, 0, 10, 10]),  # TP: first match of GT 0
        ("a", 0, 0.8, [0, 0, 10, 9]),  # FP: GT 0 already matched (IoU 0.9)
        ("a", 0, 0.7, [20, 20, 30, 31]),  # TP: GT 1 (IoU 10/11)
        ("a", 0, 0.65, [40, 40, 50, 50]),  # ignored: its best GT is difficult
        ("a", 0, 0.6, [0, 0, 4, 4]),  # FP: IoU 0.16
        ("a", 1, 0.95, [0, 0, 10, 10]),  # FP: a class-0 box, no class-1 box there
        ("a", 1, 0.5, [60, 0, 70, 10]),  # TP
        ("b", 3, 0.99, [0, 0, 10, 10]),  # class 3 has no ground truth
    ]
    return detection_records(rows), ground_truth


def test_voc_matching_of_the_hand_example(detection_records):
    records, ground_truth = _hand_example(detection_records)
    is_tp, is_ignored, num_positives = match_detections(
        records.image_ids, records.boxes, records.classes, records.scores, ground_truth
    )
    assert is_tp.tolist() == [True, False, True, False, False, False, True, False]
    assert is_ignored.tolist() == [False, False, False, True, False, False, False, False]
    assert num_positives == {0: 2, 1: 1, 2: 1}  # the difficult box is not counted


def test_optimal_f1_threshold_of_the_hand_example(detection_records):
    # Class 0 (2 GT), by threshold: 0.9: P 1, R 1/2, F1 2/3; 0.8: P 1/2, R 1/2, F1 1/2;
    # 0.7: P 2/3, R 1, F1 0.8; 0.65 (ignored box): same point, F1 0.8; 0.6: P 1/2, R 1,
    # F1 2/3 -> 0.7 (the highest score reaching the best F1).
    # Class 1 (1 GT): 0.95: F1 0; 0.5: P 1/2, R 1, F1 2/3 -> 0.5.
    # Class 2: no detection; class 3: no ground truth -> left out. Mean: (0.7 + 0.5) / 2.
    records, ground_truth = _hand_example(detection_records)
    threshold, per_class = optimal_f1_threshold(records, ground_truth, num_classes=4)
    assert threshold == pytest.approx(0.6)
    assert per_class[0]["threshold"] == 0.7 and per_class[0]["f1"] == pytest.approx(0.8)
    assert per_class[0]["precision"] == pytest.approx(2 / 3) and per_class[0]["recall"] == 1.0
    assert per_class[1]["threshold"] == 0.5 and per_class[1]["f1"] == pytest.approx(2 / 3)
    assert per_class[2]["skipped"] == "no detection"
    assert per_class[3]["skipped"] == "no ground-truth box"

    selection = select_boxes(
        "optimal_f1", fixed_threshold=0.5, records=records, ground_truth=ground_truth,
        class_names=["zero", "one", "two", "three"],
    )
    assert selection.score_threshold == pytest.approx(0.6) and not selection.fallback
    assert set(selection.per_class) == {"zero", "one", "two", "three"}
    assert "optimal F1" in selection.describe() and "0.6000" in selection.describe()
    # Selection keeps the boxes whose class score is >= the threshold, nothing else.
    assert sorted(records.select(0.62).scores) == [0.65, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert len(records.select(selection.score_threshold)) == 7  # 0.6 >= 0.6: kept


def _brute_force_f1(records, ground_truth, class_id, threshold, box_iou):
    """F1 of the class's detections with score >= threshold, matched one by one as VOC does."""
    chosen = [
        i for i in np.argsort(-records.scores, kind="stable")
        if records.classes[i] == class_id and records.scores[i] >= threshold
    ]
    matched, tp, fp = set(), 0, 0
    for i in chosen:
        gt = ground_truth[records.image_ids[i]]
        candidates = [j for j in range(len(gt.classes)) if gt.classes[j] == class_id]
        overlaps = [box_iou(records.boxes[i], gt.boxes[j]) for j in candidates]
        if overlaps and max(overlaps) > 0.5:
            best = candidates[int(np.argmax(overlaps))]
            if gt.ignore[best]:
                continue
            if (records.image_ids[i], best) in matched:
                fp += 1
            else:
                matched.add((records.image_ids[i], best))
                tp += 1
        else:
            fp += 1
    positives = sum(int(((g.classes == class_id) & ~g.ignore).sum()) for g in ground_truth.values())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@pytest.mark.parametrize("seed", range(5))
def test_optimal_f1_threshold_matches_brute_force(seed, detection_records, box_iou):
    rng = np.random.default_rng(seed)
    num_classes = 3
    ground_truth, rows = {}, []
    for image in range(6):
        corners = rng.uniform(0, 80, size=(4, 2))
        sizes = rng.uniform(8, 30, size=(4, 2))
        gt_boxes = np.concatenate([corners, corners + sizes], axis=1)
        gt_classes = rng.integers(0, num_classes, size=4)
        ground_truth[image] = GroundTruthBoxes.from_lists(gt_boxes, gt_classes, rng.random(4) < 0.15)
        for box, cls in zip(gt_boxes, gt_classes):
            for _ in range(rng.integers(0, 3)):  # jittered copies: TPs, duplicates, misses
                jitter = rng.normal(0, 3, size=4)
                label = cls if rng.random() < 0.8 else rng.integers(0, num_classes)
                rows.append((image, int(label), 0, box + jitter))
        for _ in range(3):  # background detections
            corner = rng.uniform(0, 80, size=2)
            rows.append((image, int(rng.integers(0, num_classes)), 0, np.r_[corner, corner + 15]))
    # Scores on a coarse grid, so that ties occur.
    rows = [(i, c, float(np.round(rng.uniform(0.05, 1.0), 1)), b) for i, c, _, b in rows]
    records = detection_records(rows)

    threshold, per_class = optimal_f1_threshold(records, ground_truth, num_classes)
    expected = []
    for class_id in range(num_classes):
        candidates = sorted(set(records.scores[records.classes == class_id]), reverse=True)
        f1 = [_brute_force_f1(records, ground_truth, class_id, t, box_iou) for t in candidates]
        if not f1 or max(f1) == 0:
            assert "skipped" in per_class[class_id]
            continue
        best = candidates[int(np.argmax(f1))]  # the highest threshold reaching the best F1
        assert per_class[class_id]["threshold"] == best
        assert per_class[class_id]["f1"] == pytest.approx(max(f1))
        expected.append(best)
    assert expected, "the random example should have a class with a true positive"
    assert threshold == pytest.approx(np.mean(expected))


def test_fixed_rule_and_fallback_without_true_positive(detection_records):
    records, ground_truth = _hand_example(detection_records)
    fixed = select_boxes("fixed", fixed_threshold=0.25)
    assert (fixed.rule, fixed.score_threshold) == ("fixed", 0.25)
    assert "0.2500" in fixed.describe()
    far_away = {key: GroundTruthBoxes.from_lists(g.boxes + 500, g.classes, g.ignore) for key, g in ground_truth.items()}
    fallback = select_boxes("optimal_f1", fixed_threshold=0.3, records=records, ground_truth=far_away)
    assert fallback.fallback and fallback.score_threshold == 0.3
    with pytest.raises(ValueError, match="BOX_SELECTION"):
        select_boxes("top_k", fixed_threshold=0.5)


def test_collector_records_every_detection_once():
    collector = BoxOODScoreCollector()
    collector.reset()
    outputs = []
    for num in (3, 0, 2):
        instances = Instances((32, 32))
        instances.pred_boxes = Boxes(torch.rand(num, 4) * 16 + torch.tensor([0, 0, 16, 16]))
        instances.scores = torch.linspace(0.1, 0.9, num)
        instances.pred_classes = torch.arange(num) % 2
        instances.ood_scores = torch.rand(num)
        instances.ood_scores_vos = torch.rand(num)
        instances.ood_scores_energy = -torch.rand(num)
        outputs.append({"instances": instances})
    inputs = [{"image_id": f"img{k}"} for k in range(3)]
    collector.process(inputs[:2], outputs[:2])
    collector.process(inputs[2:], outputs[2:])
    assert collector.evaluate() == {}
    records = collector.records
    assert len(records) == 5 and records.num_images == 3
    assert set(records.ood_score_table) == {"vos", "energy"}
    assert list(records.image_ids) == ["img0"] * 3 + ["img2"] * 2
    kept = records.select(0.5)
    assert len(kept) == int((records.scores >= 0.5).sum()) and kept.boxes.shape == (len(kept), 4)


# --- calibration ------------------------------------------------------------------------


@pytest.mark.parametrize("num", [20, 60, 100, 503, 1000])
def test_threshold_keeps_95_percent_of_id_scores(num):
    scores = np.random.default_rng(num).normal(size=num)
    threshold = threshold_keeping(scores, 0.95)
    assert int((scores <= threshold).sum()) == math.ceil(round(0.95 * num, 9))
    if num % 20 == 0:
        assert (scores <= threshold).mean() == 0.95  # exactly 95% when 0.95 n is an integer
    assert threshold_keeping(scores, 1.0) == scores.max()


def test_threshold_with_ties_keeps_at_least_the_fraction():
    scores = np.array([0.1] * 10 + [0.2] * 10)
    assert threshold_keeping(scores, 0.3) == 0.1  # keeps 50% >= 30%
    assert threshold_keeping(scores, 0.6) == 0.2  # 0.1 would keep 50% < 60%
    with pytest.raises(ValueError, match="empty|no ID"):
        threshold_keeping([], 0.95)
    with pytest.raises(ValueError, match="keep"):
        threshold_keeping(scores, 0.0)


def _tiny_cfg(output_dir, *overrides):
    return load_config(
        "digits_vos_tiny.yaml",
        [
            "SOLVER.MAX_ITER", "6",
            "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", "1000",
            "MODEL.VOS.STARTING_ITER", "3",
            "MODEL.VOS.SAMPLE_NUMBER", "4",
            "MODEL.VOS.SAMPLE_FROM", "200",
            "DATALOADER.NUM_WORKERS", "0",
            # No calibration at the end of these few-iteration trainings (the digits config
            # calibrates on digits_det_val; optimal-F1 selection may keep no box here).
            "TEST.OOD.CALIBRATION_DATASET", "",
            "OUTPUT_DIR", str(output_dir),
            *overrides,
        ],
        freeze=False,
    )


def test_calibration_sets_buffer_drives_is_ood_and_is_saved(tmp_path):
    torch.manual_seed(0)
    cfg = _tiny_cfg(tmp_path)
    model = Trainer.build_model(cfg).eval()
    head = find_ood_head(model)
    assert head is model.roi_heads.box_predictor and math.isnan(float(head.calibrated_ood_threshold))

    logits = torch.randn(200, cfg.MODEL.ROI_HEADS.NUM_CLASSES) * 3
    with torch.no_grad():
        table, _ = head.ood_score_table(logits)
    id_scores = table[head.ood_score].numpy()
    assert len(np.unique(id_scores)) == len(id_scores)
    calibration = calibrate({head.ood_score: id_scores}, head.ood_score, 0.95, dataset="synthetic")
    set_ood_threshold(model, calibration)
    assert calibration.kept_fraction == 0.95 and calibration.num_boxes == 200
    assert float(head.calibrated_ood_threshold) == calibration.threshold
    assert head.current_ood_threshold() == calibration.threshold
    assert calibration.gamma == pytest.approx(1.0 - calibration.threshold)  # "vos" score

    instances = Instances((64, 64), scores=torch.ones(len(logits)))
    with torch.no_grad():
        head.add_ood_fields([instances], logits)
    assert int((~instances.is_ood).sum()) == 190  # exactly 95% of the ID boxes kept

    paths = save_calibrated_model(model, str(tmp_path), calibration, weights="w.pth")
    assert paths["model"] == str(tmp_path / CALIBRATED_MODEL_FILE)
    assert not (tmp_path / "last_checkpoint").exists()
    saved = json.loads((tmp_path / THRESHOLD_FILE).read_text())
    assert saved["threshold"] == calibration.threshold and saved["ood_score"] == "vos"

    restored = Trainer.build_model(cfg)
    DetectionCheckpointer(restored).load(paths["model"])
    restored_head = find_ood_head(restored)
    assert float(restored_head.calibrated_ood_threshold) == calibration.threshold
    state = torch.load(paths["model"], map_location="cpu", weights_only=True)
    assert float(state["model"]["roi_heads.box_predictor.calibrated_ood_threshold"]) == calibration.threshold


# --- reports ------------------------------------------------------------------------------


def test_calibration_reports_the_false_alarm_rate_of_every_score(tmp_path):
    rng = np.random.default_rng(1)
    val = {"energy": rng.normal(size=200), "msp": np.r_[rng.uniform(size=199), np.nan]}
    calibration = calibrate(val, "energy", 0.95, dataset="val")
    test = ScoredSet({"energy": rng.normal(size=80), "msp": rng.uniform(size=80)}, 80, 90, 30)
    shifted = ScoredSet({"energy": rng.normal(0.5, 1.0, 60), "msp": rng.uniform(0.2, 1.0, 60)}, 60, 70, 20)
    comparison = Comparison("test", {"test": test, "shifted": shifted}, [], "kept by a test rule")
    _, report = summarize_ood_evaluation(
        [comparison], unit="boxes", fpr_method="first_at_least", ood_rule=None,
        output_dir=str(tmp_path), results={}, calibration=calibration,
    )
    summary = report["calibration"]
    for name, values in val.items():
        kept = np.sort(values[~np.isnan(values)])
        threshold = kept[math.ceil(0.95 * kept.size) - 1]  # the ceil(0.95 n)-th smallest
        assert summary["score_thresholds"][name] == threshold
        assert summary["flagged_by_score"]["test"]["shifted"][name] == np.mean(shifted.ood_score_table[name] > threshold)
    # The calibrated score's own threshold is the one its model's float32 buffer stores.
    assert calibration.threshold == float(np.float32(summary["score_thresholds"]["energy"]))
    assert summary["ood_flagged"]["test"]["shifted"] == np.mean(shifted.ood_score_table["energy"] > calibration.threshold)



def test_report_writes_json_and_png_files(tmp_path):
    rng = np.random.default_rng(0)
    id_scores = {"vos": rng.beta(1, 8, 300), "energy": rng.normal(-8, 1.5, 300)}
    ood_scores = {"vos": rng.beta(2, 5, 200), "energy": rng.normal(-5, 1.5, 200)}
    roc = plot_roc_curves(id_scores, ood_scores, str(tmp_path / "plots" / "roc.png"), id_name="id", ood_name="ood")
    histograms = plot_score_histograms(
        id_scores, ood_scores, str(tmp_path / "plots" / "hist.png"), id_name="id", ood_name="ood",
        calibrated=("vos", 0.3), subtitle="rule",
    )
    for path in (roc, histograms):
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000

    metrics = {"FPR95": 50.0, "AUROC": 90.0, "AUPR-In": 91.0, "AUPR-Out": 89.0,
               "FPR95-OOD-positive": 40.0, "num_id": 300, "num_ood": 200}
    table = format_ood_table({"id": {"ood": {"vos": metrics}}}, convention="Convention: ID positive")
    assert "FPR95 (OOD pos.)" in table and "Convention: ID positive" in table and "| vos" in table
    write_json({"a": {"b": float("nan"), "c": 1.5}}, str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": {"b": None, "c": 1.5}}


def test_back_half_leaves_nan_scores_out_for_boxes_and_images_alike(tmp_path):
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(0, 1, 50), rng.normal(2, 1, 40)
    with_nan = np.r_[id_scores, [np.nan, np.nan]]
    expected = ood_metrics(id_scores, ood_scores)
    for unit in ("boxes", "images"):
        comparison = Comparison(
            "id",
            {
                "id": ScoredSet({"vos": with_nan, "gen": np.full(3, np.nan)}, 52, 60, 20),
                "ood": ScoredSet({"vos": ood_scores, "gen": np.zeros(40)}, 40, 40, 10),
            },
            ["ood"],
            "kept by a test rule",
        )
        results, report = summarize_ood_evaluation(
            [comparison], unit=unit, fpr_method="first_at_least", ood_rule=None,
            output_dir=str(tmp_path / unit), results={}, draw_plots=True,
        )
        metrics = results["ood"]["id"]["ood"]
        assert set(metrics) == {"vos"} and metrics["vos"]["FPR95"] == pytest.approx(expected["FPR95"])
        assert metrics["vos"]["num_id"] == 50.0
        assert report["skipped"] == [f"ID id vs OOD ood, score gen: 0 ID and 40 OOD {unit} kept"]
        assert f"of ID {unit}" in report["convention"]
        assert f"OOD detection over the kept {unit}" in format_ood_report(report, unit)
        assert len(report["plots"]) == 2
        assert json.loads((tmp_path / unit / OOD_RESULTS_FILE).read_text())["skipped"] == report["skipped"]


# --- end to end: a few-iteration model, Trainer.test and tools/ood_eval.py ---------------


@pytest.fixture(scope="module")
def tiny_digits_root(registered_tiny_digits, tmp_path_factory):
    """A tiny digits-det (3 validation images) under a temporary root, registered in place of
    the default one."""
    with registered_tiny_digits(str(tmp_path_factory.mktemp("datasets")), num_val=3) as root:
        yield root


@pytest.fixture(scope="module")
def trained_model(tiny_digits_root, tmp_path_factory):
    """A few-iteration model; its training ends with Trainer.test (optimal-F1 selection)."""
    output_dir = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    trainer = Trainer(_tiny_cfg(output_dir))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return output_dir


def test_trainer_test_reports_the_protocol(trained_model):
    report = json.loads((trained_model / OOD_RESULTS_FILE).read_text())
    results = report["results"]
    assert {"AP", "AP50", "AP75"} <= set(results["digits_det_test"]["bbox"])
    assert {"AP", "AP50", "AP75"} <= set(results["digits_det_test"]["voc"])
    selection = report["box_selection"]["digits_det_test"]
    assert selection["rule"] == "optimal_f1"
    assert results["box_selection"]["digits_det_test"]["score_threshold"] == selection["score_threshold"]
    assert "ID is the positive class" in report["convention"]
    assert set(report["boxes"]["digits_det_test"]) == {"digits_det_test", "digits_det_ood"}


def _load_tool():
    spec = importlib.util.spec_from_file_location("ood_eval_tool", REPO / "tools" / "ood_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vos_det_walk(function):
    """Run ``function()``; return its result, the vos_det modules whose functions ran, and the
    (caller, callee) pairs of modules: a call's caller is the nearest vos_det frame above it,
    third-party frames (detectron2's inference loop, torch) skipped."""
    modules, edges = set(), set()

    def module_of(frame):
        return frame.f_globals.get("__name__", "")

    def profile(frame, event, arg):
        if event != "call" or not module_of(frame).startswith("vos_det"):
            return
        callee = module_of(frame)
        modules.add(callee)
        caller = frame.f_back
        while caller is not None and not module_of(caller).startswith("vos_det"):
            caller = caller.f_back
        if caller is not None and module_of(caller) != callee:
            edges.add((module_of(caller), callee))

    sys.setprofile(profile)
    try:
        result = function()
    finally:
        sys.setprofile(None)
    return result, modules, edges


_SPEC_NAME = "test_ood_eval_spec"
# The vos_det modules outside the model, its config and its data that an evaluation with
# calibration runs from the command line to the printed table: the command line, config and
# inputs checked, the model loaded, one inference pass per set, box selection, calibration,
# metrics, report.
_WALK_TO_TABLE = {
    "vos_det.cli", "vos_det.utils.log_noise", "vos_det.utils.file_io",
    "vos_det.engine.ood_evaluation", "vos_det.engine.trained_model", "vos_det.engine.trainer",
    "vos_det.evaluation.records", "vos_det.evaluation.protocol", "vos_det.evaluation.box_selection",
    "vos_det.evaluation.calibration", "vos_det.evaluation.report", "vos_det.metrics.ood_metrics",
}
# And those that draw the pictures (TEST.OOD.PLOTS).
_PICTURE_MODULES = {"vos_det.evaluation.plots", "vos_det.utils.visualization"}


def _walk_ood_eval_tool(trained_model, tiny_digits_root, output_dir, *opts):
    """Run tools/ood_eval.py with calibration on the tiny model (``opts``: more overrides); return
    its (results, report), the vos_det modules outside modeling/config/data whose functions ran,
    and the (caller, callee) pairs of all vos_det modules (see :func:`_vos_det_walk`)."""
    tool = _load_tool()
    paths = digits_det_paths(tiny_digits_root)
    args = tool.argument_parser().parse_args(
        [
            "--config", "digits_vos_tiny.yaml",
            "--ood-dataset", f"{_SPEC_NAME}={paths.ood_json}:{paths.ood_image_dir}",
            "--calibrate", "digits_det_val",
            "--output-dir", str(output_dir),
            "MODEL.WEIGHTS", str(trained_model / "model_final.pth"),
            "DATALOADER.NUM_WORKERS", "0",
            "TEST.OOD.BOX_SELECTION", "fixed",
            "TEST.OOD.SCORE_THRESHOLD", "0.0",
            *opts,
        ]
    )
    try:
        result, modules, edges = _vos_det_walk(lambda: tool.main(args))
    finally:
        DatasetCatalog.remove(_SPEC_NAME)
        MetadataCatalog.remove(_SPEC_NAME)
    model_config_data = ("vos_det.modeling", "vos_det.config", "vos_det.data")
    return result, {name for name in modules if not name.startswith(model_config_data)}, edges


def test_ood_eval_tool_walks_twelve_modules_to_its_table(trained_model, tiny_digits_root, tmp_path, capsys):
    _, outside_model, _ = _walk_ood_eval_tool(trained_model, tiny_digits_root, tmp_path, "TEST.OOD.PLOTS", "False")
    assert "| digits_det_test | test_ood_eval_spec" in capsys.readouterr().out
    assert not (tmp_path / PLOTS_DIR).exists()
    assert outside_model == _WALK_TO_TABLE and len(_WALK_TO_TABLE) == 12


def test_ood_eval_tool_end_to_end(trained_model, tiny_digits_root, tmp_path, capsys):
    spec_name = _SPEC_NAME
    (results, report), outside_model, edges = _walk_ood_eval_tool(trained_model, tiny_digits_root, tmp_path)
    printed = capsys.readouterr().out

    # The evaluation library calls nothing of the engine or the command line back.
    callbacks = {
        (caller, callee) for caller, callee in edges
        if caller.startswith("vos_det.evaluation") and callee.startswith(("vos_det.engine", "vos_det.cli"))
    }
    assert not callbacks
    # The same walk as without pictures (test above), and the two modules that draw them.
    assert outside_model == _WALK_TO_TABLE | _PICTURE_MODULES

    # The table, the rule and the convention are printed.
    assert "Box selection for ID set digits_det_test: fixed score threshold" in printed
    assert "| digits_det_test | test_ood_eval_spec" in printed and "Convention: FPR95" in printed
    per_score = results["ood"]["digits_det_test"][spec_name]
    assert set(per_score) == SCORE_NAMES
    for metrics in per_score.values():
        assert 0.0 <= metrics["FPR95"] <= 100.0 and 0.0 <= metrics["AUROC"] <= 100.0
        assert all(isinstance(v, float) for v in metrics.values())  # EvalHook-safe

    # JSON report, PNGs and the calibrated model.
    saved = json.loads((tmp_path / OOD_RESULTS_FILE).read_text())
    assert saved["results"]["ood"]["digits_det_test"][spec_name]["vos"]["FPR95"] == per_score["vos"]["FPR95"]
    assert "ID is the positive class" in saved["convention"]
    plots = sorted(os.listdir(tmp_path / PLOTS_DIR))
    assert plots == [
        f"{kind}__digits_det_test__{spec_name}.png" for kind in ("examples", "gallery", "histograms", "roc")
    ]
    assert f"gallery__digits_det_test__{spec_name}.png" in printed  # listed under "Plots:"
    for name in plots:
        assert (tmp_path / PLOTS_DIR / name).read_bytes().startswith(PNG_MAGIC)

    calibration = saved["calibration"]
    assert calibration["dataset"] == "digits_det_val" and calibration["kept_fraction"] >= 0.95
    kept = math.ceil(round(0.95 * calibration["num_boxes"], 9))
    assert calibration["kept_fraction"] * calibration["num_boxes"] == pytest.approx(kept)
    model = Trainer.build_model(_tiny_cfg(tmp_path))
    DetectionCheckpointer(model).load(str(tmp_path / CALIBRATED_MODEL_FILE))
    assert find_ood_head(model).current_ood_threshold() == calibration["threshold"]
    # One inference pass per dataset: test, OOD, calibration.
    log = (tmp_path / "log.txt").read_text()
    assert log.count("Start inference on") == 3


def test_ood_eval_tool_refuses_calibration_without_a_dataset():
    tool = _load_tool()
    args = tool.argument_parser().parse_args(
        ["--config", "digits_vos_tiny.yaml", "--calibrate", "TEST.OOD.CALIBRATION_DATASET", ""]
    )
    with pytest.raises(ValueError, match="--calibrate needs an ID validation set"):
        tool.setup(args)
