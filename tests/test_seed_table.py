"""The seed table of a seed study (vos_det.evaluation.seed_table) against scipy's t intervals."""
from collections import OrderedDict

import numpy as np
import pytest
from scipy import stats

from vos_det.evaluation.seed_table import (
    SeedMetric,
    SeedTarget,
    best_rows,
    format_difference,
    format_mean,
    format_seed_table,
    reference_row,
    seed_table_rows,
    target_met_by,
)

METRICS = [SeedMetric("accuracy", "accuracy", of_model=True), SeedMetric("FPR95", "FPR95"),
           SeedMetric("alarms", "alarms %", paired=False)]
REFERENCE = ("vanilla", "energy")


def _values(seeds=range(5), drop=0.5, accuracy_loss=0.2):
    """Two methods over seeds; "better"/"energy" has ``drop`` times the reference's FPR95 (plus noise)."""
    rng = np.random.default_rng(0)
    values = OrderedDict(vanilla=OrderedDict(), better=OrderedDict())
    for seed in seeds:
        base = 40.0 + 8.0 * rng.standard_normal()  # a seed effect both methods share
        values["vanilla"][seed] = {
            "energy": {"accuracy": 99.0, "FPR95": base, "alarms": 5.0},
            "msp": {"accuracy": 99.0, "FPR95": base + 3.0, "alarms": None},
        }
        values["better"][seed] = {
            "energy": {"accuracy": 99.0 - accuracy_loss, "FPR95": drop * base + rng.normal(), "alarms": 4.0},
        }
    return values


def _column(values, method, score, key):
    return np.array([values[method][seed][score][key] for seed in values[method]])


def test_rows_hold_t_intervals_of_the_means_and_of_the_paired_differences():
    values = _values()
    rows = seed_table_rows(values, METRICS, REFERENCE, confidence=0.9)
    pairs = [(r["method"], r["score"]) for r in rows]
    assert pairs == [("vanilla", "energy"), ("vanilla", "msp"), ("better", "energy")]
    better = rows[2]
    fpr = _column(values, "better", "energy", "FPR95")
    reference = _column(values, "vanilla", "energy", "FPR95")
    low, high = stats.t.interval(0.9, fpr.size - 1, loc=fpr.mean(), scale=stats.sem(fpr))
    mean = better["FPR95"]["mean"]
    assert (mean["mean"], mean["low"], mean["high"]) == (
        pytest.approx(fpr.mean()), pytest.approx(low), pytest.approx(high)
    )
    interval = stats.ttest_rel(fpr, reference).confidence_interval(0.9)
    diff = better["FPR95"]["diff"]
    assert diff["mean"] == pytest.approx((fpr - reference).mean())
    assert (diff["low"], diff["high"]) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert diff["significant"] and diff["seeds"] == [0, 1, 2, 3, 4]
    assert better["accuracy"]["diff"]["mean"] == pytest.approx(-0.2)
    # An unpaired metric has no difference; a None value is no value.
    assert better["alarms"]["diff"] is None and rows[1]["alarms"]["mean"] is None
    # The reference against itself: a zero difference.
    assert rows[0]["FPR95"]["diff"]["mean"] == 0.0 and not rows[0]["FPR95"]["diff"]["significant"]


def test_only_common_seeds_are_paired():
    values = _values()
    del values["better"][4]
    del values["vanilla"][0]
    better = seed_table_rows(values, METRICS, REFERENCE)[2]
    assert better["seeds"] == [0, 1, 2, 3] and better["FPR95"]["mean"]["n"] == 4
    assert better["FPR95"]["diff"]["seeds"] == [1, 2, 3] and better["FPR95"]["diff"]["n"] == 3
    one_seed = seed_table_rows(_values(seeds=[7]), METRICS, REFERENCE)
    assert one_seed[2]["FPR95"]["mean"]["half_width"] is None
    assert format_mean(one_seed[2]["FPR95"]["mean"]).endswith("(n=1)")
    assert format_difference(one_seed[2]["FPR95"]["diff"]).endswith("(n=1)")


def test_target_needs_every_condition():
    target = SeedTarget(lowered=("FPR95",), relative_drop=0.3, kept=("accuracy",), not_above_reference=("alarms",))
    assert target_met_by(seed_table_rows(_values(), METRICS, REFERENCE), target, REFERENCE) == ["better/energy"]
    # Lowered by about 20% only: significant, but not the 30% asked for.
    assert target_met_by(seed_table_rows(_values(drop=0.8), METRICS, REFERENCE), target, REFERENCE) == []
    # 1.5 points of accuracy lost.
    assert target_met_by(seed_table_rows(_values(accuracy_loss=1.5), METRICS, REFERENCE), target, REFERENCE) == []
    more_alarms = _values()
    for seed in more_alarms["better"]:
        more_alarms["better"][seed]["energy"]["alarms"] = 6.0
    assert target_met_by(seed_table_rows(more_alarms, METRICS, REFERENCE), target, REFERENCE) == []
    rows = seed_table_rows(_values(), METRICS, ("vos", "energy"))
    assert reference_row(rows, ("vos", "energy")) is None
    with pytest.raises(ValueError, match="vos/energy"):
        target_met_by(rows, target, ("vos", "energy"))


def test_table_cells():
    rows = seed_table_rows(_values(), METRICS, REFERENCE)
    cells, headers = format_seed_table(rows, METRICS, REFERENCE)
    assert headers == ["method", "score", "seeds", "accuracy", "Δ accuracy", "FPR95", "Δ FPR95", "alarms %"]
    mean, diff = rows[2]["FPR95"]["mean"], rows[2]["FPR95"]["diff"]
    assert cells[2][:3] == ["better", "energy", "5"]
    assert cells[2][5] == f"{mean['mean']:.2f} ± {mean['half_width']:.2f}"
    assert cells[2][6] == f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]*"
    # The reference row, and the model's own metric in the reference method's other rows, are "ref".
    assert cells[0][4] == cells[0][6] == "ref" and cells[1][4] == "ref"
    assert cells[1][6] == "+3.00 [+3.00, +3.00]*"
    assert cells[1][7] == "-"


def test_best_rows_pick_the_lowest_mean_per_metric_among_the_methods_asked_for():
    values = _values()
    values["vanilla"][0]["msp"]["alarms"] = 1.0  # msp has alarms on one seed only: mean 1.0
    rows = seed_table_rows(values, METRICS, REFERENCE)
    means = {(row["method"], row["score"]): {k: row[k]["mean"]["mean"] if row[k]["mean"] else None
                                               for k in ("FPR95", "alarms")} for row in rows}
    best = best_rows(rows, ["FPR95", "alarms"])
    assert (best["FPR95"]["method"], best["FPR95"]["score"]) == min(means, key=lambda pair: means[pair]["FPR95"])
    assert (best["FPR95"]["method"], best["FPR95"]["score"]) == ("better", "energy")
    assert (best["alarms"]["method"], best["alarms"]["score"]) == ("vanilla", "msp")
    on_vanilla = best_rows(rows, ["FPR95"], methods=["vanilla"])["FPR95"]
    assert (on_vanilla["method"], on_vanilla["score"]) == ("vanilla", "energy")
    assert best_rows(rows, ["FPR95"], methods=["nope"]) == {"FPR95": None}
