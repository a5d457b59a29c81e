"""The digits-cls seed benchmark's bookkeeping (benchmarks/digits_cls_seeds.py) on hand-made results."""
import json
from collections import OrderedDict

import numpy as np
import pytest
from scipy import stats


@pytest.fixture(scope="module")
def seeds_benchmark():
    import digits_cls_seeds  # benchmarks/ is on sys.path (tests/conftest.py)

    return digits_cls_seeds


def _write_results(path, accuracy, per_score):
    """An ood_results.json as the classification evaluation writes it."""
    results = {
        "digits_cls_test": {"classification": {"accuracy": accuracy, "num_images": 180.0}},
        "ood": {"digits_cls_test": {"digits_cls_ood": {
            score: {"FPR95": fpr, "AUROC": auroc, "num_id": 180.0, "num_ood": 179.0}
            for score, (fpr, auroc) in per_score.items()
        }}},
    }
    path.write_text(json.dumps({"results": results}))
    return str(path)


def test_summary_rows_and_target(seeds_benchmark, tmp_path):
    rng = np.random.default_rng(0)
    per_model = OrderedDict(vanilla=OrderedDict(), vos=OrderedDict())
    vanilla_fpr, vos_fpr = [], []
    for seed in range(5):
        base = 30.0 + 5.0 * rng.standard_normal()
        vanilla_fpr.append(base)
        vos_fpr.append(0.5 * base + rng.normal())
        per_model["vanilla"][seed] = seeds_benchmark.model_summary(_write_results(
            tmp_path / f"vanilla{seed}.json", 99.0, {"energy": (base, 90.0), "msp": (base + 4.0, 88.0)}))
        per_model["vos"][seed] = seeds_benchmark.model_summary(_write_results(
            tmp_path / f"vos{seed}.json", 98.8, {"energy": (vos_fpr[-1], 95.0), "vos": (base, 91.0)}))

    rows, winners, markdown = seeds_benchmark.seed_tables(per_model)

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
    assert winners == ["vos/energy"]
    assert "met by vos/energy." in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0][headers.index("Δ FPR95")] == "ref"
    assert cells[2][headers.index("Δ FPR95")].endswith("*")
