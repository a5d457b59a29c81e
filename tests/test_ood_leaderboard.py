"""The seed studies' bookkeeping (benchmarks/ood_leaderboard.py, both tasks) on hand-made results."""
import json
from collections import OrderedDict

import numpy as np
import pytest
from detectron2.modeling import build_model
from scipy import stats

from vos_det.evaluation.seed_table import format_difference, format_mean, format_seed_table


@pytest.fixture(scope="module")
def leaderboard():
    import ood_leaderboard  # benchmarks/ is on sys.path (tests/conftest.py)

    return ood_leaderboard


def _summary(ap50, scores):
    """A model's summary with per-score (near FPR95, near AUROC, far FPR95, far AUROC, alarms);
    the matched far split gets the far values."""
    keys = ["near_FPR95", "near_AUROC", "far_FPR95", "far_AUROC", "false_alarm"]
    scores = {name: dict(zip(keys, values)) for name, values in scores.items()}
    for row in scores.values():
        row.update(far_matched_FPR95=row["far_FPR95"], far_matched_AUROC=row["far_AUROC"])
    return {"AP50": ap50, "shifted_AP50": ap50 - 10.0, "scores": scores}


def _per_model(protocol="vos_det"):
    rng = np.random.default_rng(0)
    per_model = OrderedDict(vanilla=OrderedDict(), better=OrderedDict())
    for seed in range(5):
        base = 50.0 + 8.0 * rng.standard_normal()  # seed effect shared by both methods
        per_model["vanilla"][seed] = {
            protocol: _summary(99.0 + 0.1 * seed, {"energy": (base, 80.0, base + 5, 82.0, 10.0), "msp": (base + 3, 78.0, base + 9, 79.0, 12.0)})
        }
        per_model["better"][seed] = {
            protocol: _summary(99.0 + 0.1 * seed - 0.2, {"energy": (0.5 * base + rng.normal(), 90.0, 0.5 * base, 91.0, 9.0)})
        }
    return per_model


def test_rows_are_means_with_t_intervals_and_paired_differences(leaderboard):
    per_model = _per_model()
    rows = leaderboard.aggregate(per_model, "vos_det")
    assert [(r["method"], r["score"]) for r in rows] == [("vanilla", "energy"), ("vanilla", "msp"), ("better", "energy")]
    better = rows[2]
    values = np.array([per_model["better"][s]["vos_det"]["scores"]["energy"]["near_FPR95"] for s in range(5)])
    reference = np.array([per_model["vanilla"][s]["vos_det"]["scores"]["energy"]["near_FPR95"] for s in range(5)])
    mean = better["near_FPR95"]["mean"]
    low, high = stats.t.interval(0.95, 4, loc=values.mean(), scale=stats.sem(values))
    assert mean["mean"] == pytest.approx(values.mean()) and mean["low"] == pytest.approx(low)
    diff = better["near_FPR95"]["diff"]
    interval = stats.ttest_rel(values, reference).confidence_interval(0.95)
    assert diff["mean"] == pytest.approx((values - reference).mean())
    assert (diff["low"], diff["high"]) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert diff["significant"] and diff["seeds"] == [0, 1, 2, 3, 4]
    # AP50 does not depend on the score: the differences are between the models' AP50s.
    assert better["AP50"]["diff"]["mean"] == pytest.approx(-0.2)
    # The reference against itself: zero difference, shown as "ref".
    cells, headers = format_seed_table(rows, leaderboard.METRICS, leaderboard.REFERENCE)
    assert cells[0][headers.index("Δ near FPR95")] == "ref"
    assert cells[2][headers.index("Δ near FPR95")].endswith("*")
    assert "shifted AP50" in headers and "Δ shifted AP50" not in headers


def test_target_verdict(leaderboard):
    rows = leaderboard.aggregate(_per_model(), "vos_det")
    assert leaderboard.target_verdict(rows)["met_by"] == ["better/energy"]
    worse_alarms = _per_model()
    for seed in worse_alarms["better"]:
        worse_alarms["better"][seed]["vos_det"]["scores"]["energy"]["false_alarm"] = 20.0
    assert leaderboard.target_verdict(leaderboard.aggregate(worse_alarms, "vos_det"))["met_by"] == []
    # The far split shifts rendering with meaning: reported, not judged. The matched one is judged.
    worse_far, worse_matched = _per_model(), _per_model()
    for seed in worse_far["better"]:
        worse_far["better"][seed]["vos_det"]["scores"]["energy"]["far_FPR95"] = 99.0
        worse_matched["better"][seed]["vos_det"]["scores"]["energy"]["far_matched_FPR95"] = 99.0
    assert leaderboard.target_verdict(leaderboard.aggregate(worse_far, "vos_det"))["met_by"] == ["better/energy"]
    assert leaderboard.target_verdict(leaderboard.aggregate(worse_matched, "vos_det"))["met_by"] == []


def test_missing_seeds_pair_only_common_ones(leaderboard):
    per_model = _per_model()
    del per_model["better"][4]
    row = leaderboard.aggregate(per_model, "vos_det")[2]
    assert row["seeds"] == [0, 1, 2, 3] and row["near_FPR95"]["diff"]["seeds"] == [0, 1, 2, 3]
    assert row["near_FPR95"]["mean"]["n"] == 4
    assert leaderboard.aggregate(per_model, "vos_official") == []  # no result under that protocol


def test_false_alarms_are_the_librarys_rate_on_the_shifted_set(leaderboard):
    test, shifted = leaderboard.TEST, leaderboard.SHIFTED
    report = {
        "calibration": {
            "score_thresholds": {"energy": 1.5, "msp": 0.25},
            "flagged_by_score": {test: {shifted: {"energy": 0.125, "msp": 0.5}, "other": {"energy": 1.0}}},
        },
        "boxes": {test: {shifted: {"selected": 40}}},
    }
    assert leaderboard.false_alarms(report) == {
        "energy": {"threshold": 1.5, "false_alarm": 12.5, "num_boxes": 40},
        "msp": {"threshold": 0.25, "false_alarm": 50.0, "num_boxes": 40},
    }


def test_methods_file(leaderboard, tmp_path):
    path = tmp_path / "variants.md"
    path.write_text(
        "# variants\n- `balanced`: MODEL.VOS.BALANCED_LOSS True\n\nbottleneck MODEL.VOS.BOTTLENECK_DIM 64 SEED 3  # note\n"
    )
    assert leaderboard.read_methods_file(path) == {
        "balanced": ["MODEL.VOS.BALANCED_LOSS", "True"],
        "bottleneck": ["MODEL.VOS.BOTTLENECK_DIM", "64", "SEED", "3"],
    }
    path.write_text("odd MODEL.VOS.SELECT\n")
    with pytest.raises(SystemExit, match="odd number"):
        leaderboard.read_methods_file(path)


def test_training_diagnostics_average_the_last_iterations(leaderboard, tmp_path):
    lines = [{"iteration": 19, "loss_cls": 1.0}]  # before synthesis: no vos/ scalar
    for iteration, (id_energy, outlier_energy, ratio) in zip(
        (99, 199, 299, 399), ((-5.0, -6.0, 1.2), (-5.0, -4.0, 0.9), (-6.0, -3.0, 0.7), (-6.0, -2.0, 0.5))
    ):
        lines.append({
            "iteration": iteration, "vos/id_energy": id_energy, "vos/outlier_energy": outlier_energy,
            "vos/loss_over_prior_entropy": ratio, "vos/id_accuracy": 0.9, "vos/outlier_accuracy": ratio / 2,
        })
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    summary = leaderboard.training_diagnostics(str(tmp_path), last_iterations=200)

    # Only iterations 299 and 399 are within 200 of the last one.
    assert summary["vos/loss_over_prior_entropy"] == pytest.approx(0.6)
    assert summary["gap"] == pytest.approx(((-3.0 + 6.0) + (-2.0 + 6.0)) / 2)
    assert summary["vos/outlier_accuracy"] == pytest.approx(0.3)
    (tmp_path / "metrics.json").write_text(json.dumps(lines[0]) + "\n")
    assert leaderboard.training_diagnostics(str(tmp_path)) is None

    per_model = OrderedDict(vanilla=OrderedDict({0: None}), vos=OrderedDict({0: summary, 1: summary}))
    cells, headers = leaderboard.diagnostics_table(per_model)
    assert [row[:2] for row in cells] == [["vos", 2]]  # vanilla (no synthesis) has no row
    assert cells[0][headers.index("loss_vos / prior entropy")] == "0.60 ± 0.00"


def test_each_task_defaults_to_its_config_methods_and_published_results(leaderboard):
    detection = leaderboard.parse_arguments([])
    assert detection.config == "digits_vos_tiny.yaml" and detection.methods == list(leaderboard.METHODS)
    assert detection.protocols == list(leaderboard.PROTOCOLS)
    assert detection.output == str(leaderboard.RESULTS_DIR / "ood_leaderboard.json")
    r18 = leaderboard.parse_arguments(["--detector", "r18", "--protocols", "vos_det"])
    assert r18.config == "digits_vos_r18.yaml" and r18.protocols == ["vos_det"]
    assert r18.output == str(leaderboard.RESULTS_DIR / "ood_leaderboard_r18.json")
    assert r18.output_root.endswith("leaderboard_r18")

    classification = leaderboard.parse_arguments(["--task", "classification", "--seeds", "0,1"])
    assert classification.config == "digits_vos_classifier.yaml"
    assert classification.methods == ["vanilla", "vos", "vos_npos"] and classification.seeds == [0, 1]
    assert classification.protocols == []
    assert classification.output == str(leaderboard.RESULTS_DIR / "digits_cls_seeds.json")
    assert classification.output_root.endswith("digits_cls_seeds")


def test_detection_options_are_refused_with_classification(leaderboard, capsys):
    for options in (["--detector", "tiny"], ["--protocols", "vos_det"], ["--rerun"]):
        with pytest.raises(SystemExit):
            leaderboard.parse_arguments(["--task", "classification", *options])
        assert "of --task detection only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        leaderboard.parse_arguments(["--task", "classification", "--methods", "vanilla,nope"])
    assert "unknown method(s) ['nope']" in capsys.readouterr().err


def test_the_vanilla_method_is_the_vanilla_config():
    # Both tasks train "vanilla" as the VOS config with the METHODS overrides: the same config
    # as the vanilla YAML files (the classification study trained those before).
    import ood_leaderboard
    from vos_det.config import load_config

    for vos, vanilla in (("digits_vos_classifier.yaml", "digits_vanilla_classifier.yaml"),
                         ("digits_vos_tiny.yaml", "digits_vanilla_tiny.yaml")):
        overridden = load_config(vos, [*ood_leaderboard.METHODS["vanilla"], "OUTPUT_DIR", "out"])
        assert overridden.dump() == load_config(vanilla, ["OUTPUT_DIR", "out"]).dump()


def _cached_model(leaderboard, tmp_path, overrides, posthoc_name):
    """A trained model's folder whose vos_det.json caches ``{"AP50": 1.0}`` under a key written
    with ``overrides`` and the post-hoc state under ``posthoc_name``, as an earlier version of
    the script wrote it. Returns (folder, post-hoc file)."""
    model_dir = tmp_path / "vanilla" / "seed0"
    (model_dir / "leaderboard").mkdir(parents=True)
    (model_dir / "model_final.pth").write_bytes(b"weights")
    post_hoc = model_dir / "post_hoc_scores.pth"
    post_hoc.write_bytes(b"state")
    key = {
        "config": leaderboard.CONFIG,
        "overrides": overrides,
        "posthoc": [posthoc_name, str(post_hoc)],
        "files_mtime": {str(path): path.stat().st_mtime for path in (model_dir / "model_final.pth", post_hoc)},
        "datasets": list(leaderboard.RECORD_SETS),
    }
    (model_dir / "leaderboard" / "vos_det.json").write_text(json.dumps({"key": key, "summary": {"AP50": 1.0}}))
    return str(model_dir), str(post_hoc)


def test_a_cache_written_with_the_old_key_names_is_reused(leaderboard, tmp_path, monkeypatch):
    # Cached before the score moved from MODEL.VOS to MODEL.OOD: found under the new names.
    old_names = ["MODEL.VOS.ENABLED", "False", "MODEL.VOS.OOD_SCORE", "energy"]
    model_dir, post_hoc = _cached_model(leaderboard, tmp_path, old_names, "MODEL.VOS.POST_HOC.STATE")
    evaluated = []

    def evaluate(model_dir, overrides, protocols, posthoc_opts, key, log):
        evaluated.append(list(overrides))
        return {protocol: {"AP50": 2.0} for protocol in protocols}

    monkeypatch.setattr(leaderboard, "evaluate", evaluate)
    posthoc_opts = ["MODEL.OOD.POST_HOC.STATE", post_hoc]
    assert leaderboard.METHODS["vanilla"] == ["MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "energy"]
    for overrides in (leaderboard.METHODS["vanilla"], old_names):
        summaries = leaderboard.evaluate_cached(model_dir, overrides, ["vos_det"], posthoc_opts, False, print)
        assert summaries == {"vos_det": {"AP50": 1.0}} and evaluated == []
    # Another config (another score), or the same one with --rerun, is evaluated.
    other = ["MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "msp"]
    assert leaderboard.evaluate_cached(model_dir, other, ["vos_det"], posthoc_opts, False, print) == {
        "vos_det": {"AP50": 2.0}
    }
    assert evaluated == [other]
    leaderboard.evaluate_cached(model_dir, leaderboard.METHODS["vanilla"], ["vos_det"], posthoc_opts, True, print)
    assert len(evaluated) == 2


def test_cache_keys_compare_the_current_names_of_moved_keys(leaderboard, tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"weights")
    key = leaderboard.evaluation_key(str(tmp_path), ["MODEL.OOD.SCORE", "energy"], [])
    old = {**key, "overrides": ["MODEL.VOS.OOD_SCORE", "energy"]}
    assert leaderboard.same_evaluation(old, key) and leaderboard.same_evaluation(key, old)
    assert not leaderboard.same_evaluation({**old, "overrides": ["MODEL.VOS.OOD_SCORE", "msp"]}, key)
    # A key that is only a prefix of a moved one is not renamed.
    assert not leaderboard.same_evaluation({**key, "overrides": ["MODEL.VOS.OOD_SCORES", "energy"]}, key)
    assert not leaderboard.same_evaluation(None, key)


def _write_classifier_results(path, accuracy, per_score):
    """An ood_results.json as the classification evaluation writes it."""
    results = {
        "digits_cls_test": {"classification": {"accuracy": accuracy, "num_images": 180.0}},
        "ood": {"digits_cls_test": {"digits_cls_ood": {
            score: {"FPR95": fpr, "AUROC": auroc, "num_id": 180.0, "num_ood": 179.0}
            for score, (fpr, auroc) in per_score.items()
        }}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results}))
    return str(path)


def _classifier_runs(root):
    """ood_results.json of vanilla and vos for seeds 0-4 under ``root``: vos's energy halves the
    FPR95 on every seed, its accuracy 0.2 lower. Returns the two FPR95 lists (vanilla, vos)."""
    rng = np.random.default_rng(0)
    vanilla_fpr, vos_fpr = [], []
    for seed in range(5):
        base = 30.0 + 5.0 * rng.standard_normal()
        vanilla_fpr.append(base)
        vos_fpr.append(0.5 * base + rng.normal())
        _write_classifier_results(root / "vanilla" / f"seed{seed}" / "ood_results.json", 99.0,
                                  {"energy": (base, 90.0), "msp": (base + 4.0, 88.0)})
        _write_classifier_results(root / "vos" / f"seed{seed}" / "ood_results.json", 98.8,
                                  {"energy": (vos_fpr[-1], 95.0), "vos": (base, 91.0)})
    return vanilla_fpr, vos_fpr


def test_classification_rows_and_target(leaderboard, tmp_path):
    vanilla_fpr, vos_fpr = _classifier_runs(tmp_path)
    per_model = OrderedDict(
        (method, OrderedDict(
            (seed, leaderboard.classifier_summary(str(tmp_path / method / f"seed{seed}" / "ood_results.json")))
            for seed in range(5)
        ))
        for method in ("vanilla", "vos")
    )

    rows, verdict, markdown = leaderboard.classification_tables(per_model)

    assert [(row["method"], row["score"]) for row in rows] == [
        ("vanilla", "energy"), ("vanilla", "msp"), ("vos", "energy"), ("vos", "vos")
    ]
    fpr = rows[2]["FPR95"]
    assert fpr["mean"]["mean"] == pytest.approx(np.mean(vos_fpr))
    differences = np.subtract(vos_fpr, vanilla_fpr)
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / np.sqrt(5)
    assert fpr["diff"]["mean"] == pytest.approx(differences.mean())
    assert fpr["diff"]["half_width"] == pytest.approx(half)
    assert rows[0]["FPR95"]["diff"]["mean"] == 0.0
    assert rows[3]["FPR95"]["diff"]["mean"] == pytest.approx(0.0)
    assert rows[2]["accuracy"]["diff"]["mean"] == pytest.approx(-0.2)
    # Half the FPR95 on every seed, accuracy 0.2 lower: the target is met by (vos, energy) only.
    assert verdict == {"met_by": ["vos/energy"]}
    assert "met by vos/energy." in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0][headers.index("Δ FPR95")] == "ref"
    assert cells[2][headers.index("Δ FPR95")].endswith("*")
    # Without the reference's runs there is no paired difference, hence no verdict.
    _, verdict, markdown = leaderboard.classification_tables(OrderedDict(vos=per_model["vos"]))
    assert verdict["met_by"] == [] and "no ('vanilla', 'energy') row" in verdict["note"]
    assert "met by no (method, score) pair." in markdown


def test_classification_study_tabulates_the_trained_models(leaderboard, tmp_path):
    _classifier_runs(tmp_path / "models")
    output = tmp_path / "results" / "cls.json"

    leaderboard.main(["--task", "classification", "--methods", "vanilla,vos", "--output-root",
                      str(tmp_path / "models"), "--output", str(output)])  # every model is trained: none is

    payload = json.loads(output.read_text())
    assert payload["task"] == "classification" and payload["config"] == "digits_vos_classifier.yaml"
    assert payload["methods"] == {"vanilla": leaderboard.METHODS["vanilla"], "vos": []}
    assert payload["seeds"] == [0, 1, 2, 3, 4] and payload["target"] == {"met_by": ["vos/energy"]}
    assert [(row["method"], row["score"]) for row in payload["rows"]][2] == ("vos", "energy")
    assert set(payload["seconds"]["per_model"]) == {f"{m}/seed{s}" for m in ("vanilla", "vos") for s in range(5)}
    markdown = (tmp_path / "results" / "cls.md").read_text()
    assert markdown.startswith("digits-cls, seeds 0,1,2,3,4:") and "met by vos/energy." in markdown


def test_the_vos_mlp_method_is_the_released_final_code():
    # "vos_mlp" trains the main-MLP branch's head and ranks boxes by that branch's score: the
    # settings VOC-Detection/vos_rcnn.yaml takes from it, on the digits detector.
    import ood_leaderboard
    from vos_det.config import load_config
    from vos_det.modeling.vos import MLPUncertaintyHead

    recipe = load_config("VOC-Detection/vos_rcnn.yaml", [])
    cfg = load_config("digits_vos_r18.yaml", [*ood_leaderboard.METHODS["vos_mlp"], "MODEL.DEVICE", "cpu"])
    assert (cfg.MODEL.VOS.UNCERTAINTY_HEAD, cfg.MODEL.OOD.SCORE) == (
        recipe.MODEL.VOS.UNCERTAINTY_HEAD, recipe.MODEL.OOD.SCORE) == ("mlp", "vos_release")
    model = build_model(cfg)
    assert isinstance(model.roi_heads.box_predictor.uncertainty_classifier, MLPUncertaintyHead)


def test_shift_guide_names_the_best_score_per_shift_with_its_paired_difference(leaderboard):
    rows = leaderboard.aggregate(_per_model(), "vos_det")
    guide, markdown = leaderboard.shift_guide(rows, "vos_det")
    # "better" halves every FPR95; on the vanilla detector energy beats msp by 3 and 4 points;
    # msp raises more false alarms (12 against 10) and "better" fewer (9).
    assert guide["near_FPR95"] == {"reference_detector": "vanilla/energy", "any_method": "better/energy"}
    assert guide["far_FPR95"] == guide["far_matched_FPR95"] == guide["near_FPR95"]
    assert guide["false_alarm"] == {"reference_detector": "vanilla/energy", "any_method": "better/energy"}
    better = next(row for row in rows if row["method"] == "better")
    expected = (f"better / energy: {format_mean(better['near_FPR95']['mean'])}, "
                f"Δ {format_difference(better['near_FPR95']['diff'])}")
    line = next(line for line in markdown.splitlines() if line.startswith("| near-OOD"))
    assert line.count(expected) == 1 and "*" in expected  # halved on every seed: significant


def test_embedding_loss_methods_train_the_vanilla_detector_with_their_loss(leaderboard, capsys):
    from vos_det.config import load_config

    vanilla = load_config("digits_vos_tiny.yaml", [*leaderboard.METHODS["vanilla"], "OUTPUT_DIR", "out"])
    for name, loss in (("cider", "CIDERLoss"), ("siren", "SIRENLoss")):
        cfg = load_config("digits_vos_tiny.yaml", [*leaderboard.METHODS[name], "OUTPUT_DIR", "out"])
        assert list(cfg.MODEL.EMBEDDING.LOSSES) == [loss]
        assert cfg.dump() == vanilla.dump().replace("LOSSES: []", f"LOSSES:\n    - {loss}")
    with pytest.raises(SystemExit):
        leaderboard.parse_arguments(["--task", "classification", "--methods", "vanilla,siren"])
    assert "method(s) ['siren'] of --task detection only" in capsys.readouterr().err


def test_the_fc64_methods_narrow_only_the_box_head(leaderboard):
    from vos_det.config import load_config

    for narrow, wide in (("vanilla_fc64", "vanilla"), ("vos_fc64", "vos")):
        cfg = load_config("digits_vos_r18.yaml", [*leaderboard.METHODS[narrow], "MODEL.DEVICE", "cpu"])
        reference = load_config("digits_vos_r18.yaml", [*leaderboard.METHODS[wide], "MODEL.DEVICE", "cpu"])
        assert (reference.MODEL.ROI_BOX_HEAD.FC_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM) == (128, 64)
        assert cfg.dump() == reference.dump().replace("FC_DIM: 128", "FC_DIM: 64")
        model = build_model(cfg)
        assert model.roi_heads.box_head.output_shape.channels == 64
        assert model.roi_heads.box_predictor.cls_score.in_features == 64


def test_fused_is_compared_with_the_better_of_the_parts_fitted_for_each_seed(leaderboard):
    rng = np.random.default_rng(1)
    per_model, parts = OrderedDict(vanilla=OrderedDict()), OrderedDict(vanilla=OrderedDict())
    expected_diff = []
    for seed in range(4):
        base = 50.0 + 5.0 * rng.standard_normal()
        # The logit part is better on near-OOD (lower FPR95), the feature part on false alarms;
        # seed 3 fitted GEN and the multi-layer Mahalanobis score instead of energy and k-NN.
        logit, feature = ("gen", "mahalanobis_multilayer") if seed == 3 else ("energy", "knn")
        fused = base + 1.0 + rng.normal()
        scores = {
            logit: (base, 80.0, base + 5, 80.0, 30.0),
            feature: (base + 20, 70.0, base + 10, 70.0, 5.0),
            "fused": (fused, 79.0, base + 4, 79.0, 20.0),
            "msp": (0.0, 99.0, 0.0, 99.0, 0.0),  # no part of the fused score: never compared
        }
        per_model["vanilla"][seed] = {"vos_det": _summary(99.0, scores)}
        parts["vanilla"][seed] = (logit, feature)
        expected_diff.append(fused - base)
    per_model["vanilla"][4] = {"vos_det": _summary(99.0, {"energy": (1.0, 99.0, 1.0, 99.0, 1.0)})}  # no fused score
    parts["vanilla"][4] = None
    rows, markdown = leaderboard.fused_against_parts(per_model, parts, "vos_det")
    by_shift = {row["shift"]: row for row in rows}
    assert set(by_shift) == {"near_FPR95", "far_FPR95", "far_matched_FPR95", "false_alarm"}
    near = by_shift["near_FPR95"]
    assert near["seeds"] == [0, 1, 2, 3] and near["better_part"] == "logit part"
    low, high = stats.t.interval(0.95, 3, loc=np.mean(expected_diff), scale=stats.sem(expected_diff))
    assert near["diff"]["mean"] == pytest.approx(np.mean(expected_diff))
    assert (near["diff"]["low"], near["diff"]["high"]) == (pytest.approx(low), pytest.approx(high))
    assert near["not_worse"] == (low <= 0.0)
    # On false alarms the feature part (5) is better and the fused score (20) 15 points worse on every seed.
    alarms = by_shift["false_alarm"]
    assert alarms["better_part"] == "feature part" and alarms["diff"]["mean"] == pytest.approx(15.0)
    assert not alarms["not_worse"]
    # Far-OOD: the logit part (base + 5) is better, and the fused score (base + 4) one point below it.
    assert by_shift["far_FPR95"]["diff"]["mean"] == pytest.approx(-1.0) and by_shift["far_FPR95"]["not_worse"]
    assert "energy + knn, gen + mahalanobis_multilayer" in markdown
    assert leaderboard.fused_against_parts(per_model, {}, "vos_det") == ([], "")
