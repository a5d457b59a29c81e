"""The table of a seed study: training methods x OOD scores, over seeds, against a reference.

A seed study trains every method once per seed and scores each model with every OOD score it
outputs. :func:`seed_table_rows` makes one row per (method, score) holding, per metric, the
mean over the seeds with its Student-t interval (:func:`~.statistics.mean_ci`) and the paired
difference against the reference (method, score) on the seeds both have
(:func:`~.statistics.paired_difference`); :func:`target_met_by` lists the rows that meet a
:class:`SeedTarget`; :func:`best_rows` picks the row of lowest mean per metric;
:func:`format_seed_table` gives the cells of a printed table. Rows are
plain dicts, ready for JSON. ``benchmarks/ood_leaderboard.py`` runs the two studies
(``--task detection`` and ``--task classification``).

The values come as ``{method: {seed: {score: {metric key: value}}}}``; a metric of the model
whatever the score (AP50, accuracy) is repeated under every score, and a value may be None
(not measured: left out of that row's seeds for the metric).
"""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .statistics import mean_ci, paired_difference

__all__ = [
    "SeedMetric",
    "SeedTarget",
    "best_rows",
    "format_difference",
    "format_mean",
    "format_seed_table",
    "reference_row",
    "seed_table_rows",
    "target_met_by",
]

# values[method][seed][score][metric key]
SeedValues = Mapping[str, Mapping[object, Mapping[str, Mapping[str, Optional[float]]]]]


@dataclass(frozen=True)
class SeedMetric:
    """One metric column of a seed table.

    Attributes:
        key: the metric's key in the values.
        header: the column header; the difference column is "Δ <header>" without a trailing " %".
        paired: whether the table has the paired difference against the reference.
        of_model: the model's value whatever the score (AP50, accuracy): in the rows of the
            reference method the difference is the reference itself, shown as "ref".
    """

    key: str
    header: str
    paired: bool = True
    of_model: bool = False

    @property
    def difference_header(self) -> str:
        return "Δ " + self.header.split(" %")[0]


@dataclass(frozen=True)
class SeedTarget:
    """What a (method, score) must reach against the reference, on the means over seeds.

    Attributes:
        lowered: metric keys whose paired difference must have its interval below 0 and a mean
            of at most ``-relative_drop`` times the reference's mean (e.g. FPR95).
        relative_drop: 0.3 = lowered by at least 30% relative.
        kept: metric keys whose mean paired difference must be at least ``-tolerance`` (e.g. AP50).
        tolerance: in the metric's units.
        not_above_reference: metric keys whose mean must be at most the reference's mean.
    """

    lowered: Tuple[str, ...]
    relative_drop: float = 0.3
    kept: Tuple[str, ...] = ()
    tolerance: float = 1.0
    not_above_reference: Tuple[str, ...] = ()


def _scores_in_order(seeds: Mapping) -> List[str]:
    """The scores of a method's models, in the order they first appear."""
    scores = []
    for by_score in seeds.values():
        scores += [score for score in by_score if score not in scores]
    return scores


def _seed_values(seeds: Mapping, score: str, key: str) -> Dict:
    """{seed: value} of one metric of one score, for the seeds that measured it."""
    values = {}
    for seed, by_score in seeds.items():
        value = by_score.get(score, {}).get(key)
        if value is not None:
            values[seed] = value
    return values


def _cell(values: Dict, reference_values: Optional[Dict], confidence: float) -> Dict:
    """{"mean": MeanCI dict or None, "diff": paired difference dict (with its "seeds") or None}."""
    cell = {"mean": mean_ci(list(values.values()), confidence).to_dict() if values else None, "diff": None}
    common = [seed for seed in values if seed in reference_values] if reference_values is not None else []
    if common:
        diff = paired_difference([values[s] for s in common], [reference_values[s] for s in common], confidence)
        cell["diff"] = {**diff.to_dict(), "seeds": common}
    return cell


def seed_table_rows(
    values: SeedValues, metrics: Sequence[SeedMetric], reference: Tuple[str, str], confidence: float = 0.95
) -> List[Dict]:
    """One row per (method, score): per metric, the mean over seeds and the paired difference.

    Args:
        values: ``{method: {seed: {score: {metric key: value or None}}}}``.
        metrics: the columns.
        reference: the (method, score) every paired difference is taken against, seed by seed
            (the reference's own row gets a zero difference).
        confidence: the coverage of every interval.

    Returns:
        list[dict]: methods in the order of ``values``, scores in the order they first appear:
        ``{"method", "score", "seeds": [seeds with the score], <key>: {"mean": ..., "diff": ...}}``
        with :meth:`MeanCI.to_dict` entries (None without a value; "diff" None for an unpaired
        metric or without a common seed) and the paired seeds as ``diff["seeds"]``.
    """
    reference_seeds = values.get(reference[0], {})
    rows = []
    for method, seeds in values.items():
        for score in _scores_in_order(seeds):
            row = OrderedDict(method=method, score=score, seeds=[seed for seed in seeds if score in seeds[seed]])
            for metric in metrics:
                reference_values = _seed_values(reference_seeds, reference[1], metric.key) if metric.paired else None
                row[metric.key] = _cell(_seed_values(seeds, score, metric.key), reference_values, confidence)
            rows.append(row)
    return rows


def reference_row(rows: Sequence[Dict], reference: Tuple[str, str]) -> Optional[Dict]:
    """The row of the reference (method, score), or None."""
    return next((row for row in rows if (row["method"], row["score"]) == tuple(reference)), None)


def _meets(row: Dict, reference: Dict, target: SeedTarget) -> bool:
    for key in target.lowered:
        diff, reference_mean = row[key]["diff"], reference[key]["mean"]
        if diff is None or diff["high"] is None or not diff["high"] < 0 or reference_mean is None:
            return False
        if not diff["mean"] <= -target.relative_drop * reference_mean["mean"]:
            return False
    for key in target.kept:
        diff = row[key]["diff"]
        if diff is None or not diff["mean"] >= -target.tolerance:
            return False
    for key in target.not_above_reference:
        mean, reference_mean = row[key]["mean"], reference[key]["mean"]
        if mean is None or reference_mean is None or not mean["mean"] <= reference_mean["mean"]:
            return False
    return True


def target_met_by(rows: Sequence[Dict], target: SeedTarget, reference: Tuple[str, str]) -> List[str]:
    """The rows other than the reference that meet ``target``, as "method/score".

    Raises:
        ValueError: ``rows`` has no row of ``reference``.
    """
    reference_values = reference_row(rows, reference)
    if reference_values is None:
        raise ValueError(f"the seed table has no row of the reference {reference[0]}/{reference[1]}")
    return [
        f"{row['method']}/{row['score']}"
        for row in rows
        if row is not reference_values and _meets(row, reference_values, target)
    ]


def best_rows(rows: Sequence[Dict], keys: Sequence[str], methods: Optional[Sequence[str]] = None) -> Dict:
    """The row of lowest mean for each metric (a metric where lower is better: FPR95, false alarms).

    Args:
        rows: the rows of :func:`seed_table_rows`.
        keys: the metric keys.
        methods: only the rows of these methods (None: every row).

    Returns:
        dict: ``{key: row or None}``, None when no row has a mean for the metric; of rows with
        equal means, the first in table order.
    """
    candidates = [row for row in rows if methods is None or row["method"] in methods]
    best = {}
    for key in keys:
        measured = [row for row in candidates if row[key]["mean"] is not None]
        best[key] = min(measured, key=lambda row: row[key]["mean"]["mean"]) if measured else None
    return best


def format_mean(mean: Optional[Dict]) -> str:
    """"mean ± half-width" of a MeanCI dict; "(n=1)" without an interval; "-" for None."""
    if mean is None:
        return "-"
    if mean["half_width"] is None:
        return f"{mean['mean']:.2f} (n=1)"
    return f"{mean['mean']:.2f} ± {mean['half_width']:.2f}"


def format_difference(diff: Optional[Dict]) -> str:
    """"+mean [+low, +high]" of a paired difference, "*" when its interval excludes 0."""
    if diff is None:
        return "-"
    if diff["low"] is None:
        return f"{diff['mean']:+.2f} (n=1)"
    star = "*" if diff["significant"] else ""
    return f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]{star}"


def format_seed_table(
    rows: Sequence[Dict], metrics: Sequence[SeedMetric], reference: Tuple[str, str]
) -> Tuple[List[List[str]], List[str]]:
    """The cells and headers of a seed table: method, score, number of seeds, then per metric
    its mean ± CI half-width and, when paired, its difference ("ref" for the reference).

    Returns:
        tuple[list[list[str]], list[str]]: (cells, headers), e.g. for ``tabulate``.
    """
    headers = ["method", "score", "seeds"]
    for metric in metrics:
        headers += [metric.header] + ([metric.difference_header] if metric.paired else [])
    cells = []
    for row in rows:
        is_reference = (row["method"], row["score"]) == tuple(reference)
        line = [row["method"], row["score"], str(len(row["seeds"]))]
        for metric in metrics:
            line.append(format_mean(row[metric.key]["mean"]))
            if metric.paired:
                same = is_reference or (metric.of_model and row["method"] == reference[0])
                line.append("ref" if same else format_difference(row[metric.key]["diff"]))
        cells.append(line)
    return cells, headers
