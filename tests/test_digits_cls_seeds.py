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

    rows = seeds_benchmark.aggregate(per_model)

    assert list(rows) == [("vanilla", "energy"), ("vanilla", "msp"), ("vos", "energy"), ("vos", "vos")]
    fpr = rows[("vos", "energy")]["FPR95"]
    assert fpr["mean"].mean == pytest.approx(np.mean(vos_fpr))
    differences = np.subtract(vos_fpr, vanilla_fpr)
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / np.sqrt(5)
    assert fpr["diff"].mean == pytest.approx(differences.mean())
    assert fpr["diff"].half_width == pytest.approx(half)
    assert rows[("vanilla", "energy")]["FPR95"]["diff"] is None
    assert rows[("vos", "vos")]["FPR95"]["diff"].mean == pytest.approx(0.0)
    assert rows[("vos", "energy")]["accuracy"]["diff"].mean == pytest.approx(-0.2)
    # Half the FPR95 on every seed, accuracy 0.2 lower: the target is met by (vos, energy) only.
    assert seeds_benchmark.target_verdict(rows) == [("vos", "energy")]
    cells, headers = seeds_benchmark.format_rows(rows)
    assert cells[0][headers.index("FPR95 vs ref")] == "ref"
    assert cells[2][headers.index("FPR95 vs ref")].endswith("*")
