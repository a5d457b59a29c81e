"""Where one run's OOD numbers fall in the leaderboard's spread of the same config.

CPU training is repeatable on one machine, not across CPU models: other SIMD kernels round
differently and the training takes another trajectory, so a run elsewhere is another draw of
the seed-to-seed spread (the same commit gave FPR95 52.35 on an Intel Xeon and 38.74 on an
AMD EPYC). ``benchmarks/ood_leaderboard.py`` measures that spread over 5
seeds and writes ``benchmarks/results/ood_leaderboard*.json``; :func:`leaderboard_comparison`
finds the leaderboard method whose config is the run's (same keys, but for where it writes,
its seed and what it is evaluated on) and, for every score of the run with a row there, puts
its FPR95 / AUROC beside the 5-seed mean, the mean's 95% confidence interval and the 95%
range of one run (:func:`~vos_det.evaluation.statistics.prediction_interval`). A run inside
that range is a normal draw; one far outside it is worth a look.
"""
import glob
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

from tabulate import tabulate

from ..config import load_config
from ..config.renamed_keys import current_overrides
from .statistics import prediction_interval

__all__ = [
    "LEADERBOARD_DIR",
    "LEADERBOARD_FILE",
    "LEADERBOARD_ID_SET",
    "LEADERBOARD_OOD_SETS",
    "find_leaderboard_method",
    "format_leaderboard_comparison",
    "leaderboard_comparison",
    "log_leaderboard_comparison",
]

logger = logging.getLogger(__name__)

# The files benchmarks/ood_leaderboard.py writes (ood_leaderboard.json for the tiny detector,
# ood_leaderboard_<detector>.json for another), in the repository holding this package.
LEADERBOARD_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "results"
)
LEADERBOARD_FILE = os.path.join(LEADERBOARD_DIR, "ood_leaderboard.json")
# The leaderboard's ID test set and its OOD sets, by the column prefix of its rows.
LEADERBOARD_ID_SET = "digits_det_test"
# near: digits 5-9; far: drawn shapes, rasterised sharp (a shift of rendering and meaning
# together); far_matched: the shapes made into 8x8 glyphs and rendered exactly like the digits.
LEADERBOARD_OOD_SETS = OrderedDict(
    [("near", "digits_det_ood"), ("far", "digits_det_far_ood"), ("far_matched", "digits_det_far_ood_matched")]
)
# Keys that say where a run writes, its seed, what it is evaluated on and how is_ood is set:
# a run that differs from a leaderboard method only in these is a draw of that method.
_RUN_KEYS = (
    "CUDNN_BENCHMARK",
    "DATALOADER.NUM_WORKERS",
    "DATASETS.OOD_TEST",
    "DATASETS.TEST",
    "MODEL.DEVICE",
    "MODEL.OOD.SCORE",
    "MODEL.OOD.THRESHOLD",
    "MODEL.OOD.POST_HOC.STATE",
    "MODEL.WEIGHTS",
    "OUTPUT_DIR",
    "SEED",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
    "TEST.OOD.CALIBRATION_DATASET",
    "TEST.OOD.CALIBRATION_ID_KEEP",
    "TEST.OOD.PLOTS",
    "TEST.OOD.PROTOCOL",
    "VIS_PERIOD",
)
# Metric -> whether larger is better.
_METRICS = OrderedDict([("FPR95", False), ("AUROC", True)])


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _training_keys(cfg) -> Dict:
    """The config's keys as a flat dict, without :data:`_RUN_KEYS` (nor their children)."""
    return {
        key: value
        for key, value in _flatten(cfg).items()
        if not any(key == run or key.startswith(run + ".") for run in _RUN_KEYS)
    }


def find_leaderboard_method(cfg, leaderboard: Dict) -> Optional[str]:
    """The leaderboard method whose config (its ``config`` file with the method's overrides)
    trains the same model as ``cfg``, or None.

    Args:
        cfg (CfgNode): the run's config.
        leaderboard: the contents of ood_leaderboard.json.
    """
    wanted = _training_keys(cfg)
    for method, overrides in leaderboard.get("methods", {}).items():
        # A leaderboard written before some keys moved names them as they were then.
        if _training_keys(load_config(leaderboard["config"], current_overrides(overrides))) == wanted:
            return method
    return None


def _row(table, method, score):
    return next((r for r in table["rows"] if r["method"] == method and r["score"] == score), None)


def leaderboard_comparison(cfg, results: Dict, leaderboard: Dict) -> Optional[Dict]:
    """The run's FPR95 / AUROC beside the leaderboard's spread for the same method and score.

    Args:
        cfg (CfgNode): the run's config (its TEST.OOD.PROTOCOL picks the table).
        results: the evaluation's results, ``results["ood"][id_set][ood_set][score]`` holding
            "FPR95" and "AUROC" in percent (:meth:`vos_det.engine.Trainer.test`).
        leaderboard: the contents of ood_leaderboard.json.

    Returns:
        dict or None: ``{"method", "protocol", "machine", "rows": [{"set", "ood_set",
        "score", metric: {"value", "mean", "ci", "one_run", "verdict"}}]}``; None when no
        method, protocol table or pair of sets matches.
    """
    table = leaderboard.get("tables", {}).get(cfg.TEST.OOD.PROTOCOL)
    per_ood = results.get("ood", {}).get(LEADERBOARD_ID_SET, {})
    if table is None or not any(name in per_ood for name in LEADERBOARD_OOD_SETS.values()):
        return None
    method = find_leaderboard_method(cfg, leaderboard)
    if method is None:
        return None
    rows = []
    for prefix, ood_set in LEADERBOARD_OOD_SETS.items():
        for score, metrics in per_ood.get(ood_set, {}).items():
            board = _row(table, method, score)
            if board is None:
                continue
            row = {"set": prefix, "ood_set": ood_set, "score": score}
            for metric, larger_is_better in _METRICS.items():
                spread = board.get(f"{prefix}_{metric}", {}).get("mean")
                if not spread or spread.get("std") is None or metric not in metrics:
                    continue
                low, high = prediction_interval(spread["mean"], spread["std"], spread["n"], spread["confidence"])
                value = float(metrics[metric])
                verdict = "within"
                if not low <= value <= high:
                    verdict = "better" if (value > high) == larger_is_better else "worse"
                row[metric] = {
                    "value": value,
                    "mean": spread["mean"],
                    "ci": (spread["low"], spread["high"]),
                    "one_run": (low, high),
                    "n": spread["n"],
                    "verdict": verdict,
                }
            if any(metric in row for metric in _METRICS):
                rows.append(row)
    if not rows:
        return None
    return {
        "method": method,
        "protocol": cfg.TEST.OOD.PROTOCOL,
        "machine": leaderboard.get("machine", {}).get("cpu", "unknown CPU"),
        "rows": rows,
    }


def format_leaderboard_comparison(comparison: Dict, path: str = LEADERBOARD_FILE) -> str:
    """The text of :func:`leaderboard_comparison`: a header line and one table row per
    (OOD set, score)."""
    n = max(row[m]["n"] for row in comparison["rows"] for m in _METRICS if m in row)
    header = (
        f"This run against the OOD leaderboard ({path}: method {comparison['method']!r}, {n} seeds on "
        f"{comparison['machine']}, protocol {comparison['protocol']}). CPU training is repeatable on "
        "one machine, not across CPU models: this run is one draw of that spread. 'one run, 95%' is "
        "where a single run falls 95% of the time; 'within' is a normal run."
    )
    headers = ["OOD set", "score"]
    for metric in _METRICS:
        headers += [metric, f"{metric} mean [95% CI]", "one run, 95%", "verdict"]
    lines = []
    for row in comparison["rows"]:
        cells = [row["ood_set"], row["score"]]
        for metric in _METRICS:
            entry = row.get(metric)
            if entry is None:
                cells += ["-"] * 4
                continue
            cells += [
                f"{entry['value']:.2f}",
                f"{entry['mean']:.2f} [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]",
                f"{entry['one_run'][0]:.2f} - {entry['one_run'][1]:.2f}",
                entry["verdict"],
            ]
        lines.append(cells)
    return header + "\n" + tabulate(lines, headers=headers, tablefmt="pipe")


def log_leaderboard_comparison(cfg, results: Dict, paths: Optional[List[str]] = None) -> Optional[Dict]:
    """Log :func:`format_leaderboard_comparison` of a run against the first leaderboard file
    that has the run's method; nothing when none has.

    Args:
        cfg, results: as for :func:`leaderboard_comparison`.
        paths: leaderboard files; default every ``ood_leaderboard*.json`` of
            :data:`LEADERBOARD_DIR` (none when the package is installed without it).

    Returns:
        dict or None: the comparison.
    """
    if paths is None:
        paths = sorted(glob.glob(os.path.join(LEADERBOARD_DIR, "ood_leaderboard*.json")))
    for path in paths:
        with open(path) as f:
            comparison = leaderboard_comparison(cfg, results, json.load(f))
        if comparison is not None:
            logger.info(format_leaderboard_comparison(comparison, os.path.relpath(path)))
            return comparison
    return None
