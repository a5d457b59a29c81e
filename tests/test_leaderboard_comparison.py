"""A run's FPR95 / AUROC beside the OOD leaderboard's seed spread of the same config and score."""
import json

import numpy as np
import pytest
from scipy import stats

from vos_det.config import load_config
from vos_det.evaluation.leaderboard import (
    LEADERBOARD_FILE,
    find_leaderboard_method,
    format_leaderboard_comparison,
    leaderboard_comparison,
    log_leaderboard_comparison,
)
from vos_det.evaluation.statistics import mean_ci, prediction_interval

VANILLA = ["MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "energy"]
SEEDS_FPR = [40.0, 45.0, 50.0, 55.0, 60.0]
SEEDS_AUROC = [85.0, 86.0, 87.0, 88.0, 89.0]


def _spread(values):
    return {"mean": mean_ci(values).to_dict(), "diff": None}


def _leaderboard():
    """A leaderboard as benchmarks/ood_leaderboard.py writes it: two methods, one table."""
    row = {"seeds": [0, 1, 2, 3, 4], "near_FPR95": _spread(SEEDS_FPR), "near_AUROC": _spread(SEEDS_AUROC)}
    return {
        "machine": {"cpu": "AMD EPYC"},
        "config": "digits_vos_tiny.yaml",
        "methods": {"vanilla": VANILLA, "vos": []},
        "tables": {
            "vos_det": {
                "rows": [
                    {"method": "vos", "score": "vos", **row},
                    {"method": "vanilla", "score": "energy", **row, "near_FPR95": _spread([70.0, 72.0, 74.0, 76.0, 78.0])},
                ]
            }
        },
    }


def _results(**scores):
    """Trainer.test's results: score -> (FPR95, AUROC) of digits_det_test vs digits_det_ood."""
    per_score = {name: {"FPR95": fpr, "AUROC": auroc} for name, (fpr, auroc) in scores.items()}
    return {"ood": {"digits_det_test": {"digits_det_ood": per_score}}}


def test_one_run_range_is_the_student_t_prediction_interval():
    values = np.array(SEEDS_FPR)
    low, high = prediction_interval(values.mean(), values.std(ddof=1), len(values), 0.95)
    half = stats.t.ppf(0.975, 4) * values.std(ddof=1) * np.sqrt(1 + 1 / 5)
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))
    # Wider than the mean's interval by sqrt(n + 1): single runs spread more than means.
    assert (high - low) / (2 * mean_ci(values).half_width) == pytest.approx(np.sqrt(6))
    # A draw of the same normal law falls inside 95% of the time.
    rng = np.random.default_rng(0)
    inside = []
    for seeds in rng.normal(0.0, 1.0, size=(4000, 6)):
        low, high = prediction_interval(seeds[:5].mean(), seeds[:5].std(ddof=1), 5)
        inside.append(low <= seeds[5] <= high)
    assert np.mean(inside) == pytest.approx(0.95, abs=0.015)  # 4 binomial standard deviations
    with pytest.raises(ValueError, match="at least 2"):
        prediction_interval(1.0, 0.0, 1)


@pytest.mark.parametrize(
    "config, overrides, method",
    [
        ("digits_vos_tiny.yaml", [], "vos"),
        ("digits_vanilla_tiny.yaml", [], "vanilla"),  # another file, the same config as vos + VANILLA
        ("digits_vos_tiny.yaml", VANILLA, "vanilla"),
        ("digits_vos_tiny.yaml", ["SEED", "3", "OUTPUT_DIR", "/tmp/elsewhere", "TEST.OOD.PLOTS", "False"], "vos"),
        ("digits_vos_tiny.yaml", ["SOLVER.MAX_ITER", "300"], None),
        ("digits_vos_tiny.yaml", ["TEST.OOD.BOX_SELECTION", "fixed"], None),
        ("digits_vos_r18.yaml", [], None),
    ],
)
def test_a_run_matches_the_method_whose_config_it_trains(config, overrides, method):
    assert find_leaderboard_method(load_config(config, overrides), _leaderboard()) == method


def test_a_leaderboard_of_the_old_key_names_is_matched_without_warnings(caplog):
    # Written before the score moved from MODEL.VOS to MODEL.OOD: read under the new names.
    board = {**_leaderboard(), "methods": {"vanilla": ["MODEL.VOS.ENABLED", "False", "MODEL.VOS.OOD_SCORE", "energy"]}}
    with caplog.at_level("WARNING"):
        assert find_leaderboard_method(load_config("digits_vanilla_tiny.yaml", []), board) == "vanilla"
        assert find_leaderboard_method(load_config("digits_vos_tiny.yaml", []), board) is None
    assert not [record for record in caplog.records if record.name == "vos_det.config.renamed_keys"]


def test_the_run_is_placed_in_the_spread_of_its_method_and_score():
    cfg = load_config("digits_vos_tiny.yaml", [])
    low, high = prediction_interval(np.mean(SEEDS_FPR), np.std(SEEDS_FPR, ddof=1), 5)
    comparison = leaderboard_comparison(cfg, _results(vos=(52.35, 95.0), knn=(10.0, 99.0)), _leaderboard())
    assert comparison["method"] == "vos" and comparison["protocol"] == "vos_det"
    assert [row["score"] for row in comparison["rows"]] == ["vos"]  # no row for knn
    fpr, auroc = comparison["rows"][0]["FPR95"], comparison["rows"][0]["AUROC"]
    assert fpr["value"] == 52.35 and fpr["mean"] == pytest.approx(50.0) and fpr["verdict"] == "within"
    assert fpr["one_run"] == pytest.approx((low, high))
    assert auroc["verdict"] == "better"  # above the range, and larger AUROC is better
    worse = leaderboard_comparison(cfg, _results(vos=(high + 1.0, 87.0)), _leaderboard())["rows"][0]
    assert worse["FPR95"]["verdict"] == "worse" and worse["AUROC"]["verdict"] == "within"
    text = format_leaderboard_comparison(comparison, "board.json")
    assert "board.json: method 'vos', 5 seeds on AMD EPYC, protocol vos_det" in text
    assert f"| digits_det_ood | vos     |   52.35 | 50.00 [{fpr['ci'][0]:.2f}, {fpr['ci'][1]:.2f}]" in text


def test_nothing_without_a_matching_method_table_or_set():
    board = _leaderboard()
    results = _results(vos=(52.35, 87.0))
    assert leaderboard_comparison(load_config("digits_vos_tiny.yaml", ["SOLVER.MAX_ITER", "300"]), results, board) is None
    official = load_config("digits_vos_tiny.yaml", ["TEST.OOD.PROTOCOL", "vos_official"])
    assert leaderboard_comparison(official, results, board) is None  # no table of that protocol
    other_sets = {"ood": {"digits_det_val": results["ood"]["digits_det_test"]}}
    assert leaderboard_comparison(load_config("digits_vos_tiny.yaml", []), other_sets, board) is None


def test_the_main_job_is_compared_with_the_recorded_leaderboard(tmp_path, caplog):
    """The repository's leaderboard has the main job's config (method vos) and its score."""
    with open(LEADERBOARD_FILE) as f:
        board = json.load(f)
    cfg = load_config("digits_vos_tiny.yaml", [])
    assert find_leaderboard_method(cfg, board) == "vos"
    assert find_leaderboard_method(load_config("digits_vanilla_tiny.yaml", []), board) == "vanilla"
    recorded = leaderboard_comparison(cfg, _results(vos=(52.35, 87.72)), board)
    assert recorded["rows"][0]["score"] == "vos" and recorded["machine"] == board["machine"]["cpu"]
    path = tmp_path / "ood_leaderboard.json"
    path.write_text(json.dumps(_leaderboard()))
    with caplog.at_level("INFO", logger="vos_det.evaluation.leaderboard"):
        comparison = log_leaderboard_comparison(cfg, _results(vos=(52.35, 87.72)), [str(path)])
    assert comparison["rows"][0]["FPR95"]["verdict"] == "within"
    assert "This run against the OOD leaderboard" in caplog.text and "| digits_det_ood | vos" in caplog.text
