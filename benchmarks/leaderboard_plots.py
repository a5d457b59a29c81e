#!/usr/bin/env python
"""The forest plot of the OOD leaderboard: each (method, score) against vanilla energy.

    python benchmarks/leaderboard_plots.py                                   # benchmarks/results/ood_leaderboard.json
    python benchmarks/leaderboard_plots.py benchmarks/results/ood_leaderboard_r18.json

For every row of the leaderboard payload (``benchmarks/ood_leaderboard.py`` writes it, and
calls :func:`plot_leaderboard_forest` at its end), the paired difference against the reference
(vanilla, energy) on the same seeds, with its confidence interval, of the columns the payload
has: near-OOD FPR95, far-OOD FPR95 (shapes drawn sharp; and drawn like the digits, where the
leaderboard has that split) and the false alarms on the covariate-shifted split. One panel
per protocol. Below 0 is better for all; a filled marker is an interval that excludes 0.
The figure goes next to the JSON, as ``<stem>_forest.png``.
"""
import argparse
import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RESULTS_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ood_leaderboard.json")
# (row key of the payload, legend label, colour): the columns drawn, all "lower is better".
COLUMNS = (
    ("near_FPR95", "near-OOD FPR95", "tab:blue"),
    ("far_FPR95", "far-OOD FPR95", "tab:orange"),
    ("far_matched_FPR95", "far-OOD (matched) FPR95", "tab:purple"),
    ("false_alarm", "shifted false alarms %", "tab:green"),
)
# Vertical extent of a row's columns, in row units (the columns are spread evenly over it).
_SPREAD = 0.6
_ROW_HEIGHT_INCHES = 0.24


def forest_path(json_path):
    """The PNG written next to a leaderboard JSON: ``<stem>_forest.png``."""
    return os.path.splitext(json_path)[0] + "_forest.png"


def plot_leaderboard_forest(payload, path):
    """Draw the forest plot of a leaderboard payload.

    Args:
        payload (dict): the leaderboard JSON: ``reference`` [method, score], ``confidence``
            and ``tables`` {protocol: {"rows": [{"method", "score", "seeds", <column>:
            {"diff": {"mean", "low", "high", "significant"}}}]}}.
        path (str): the PNG to write.

    Returns:
        str: ``path``.
    """
    reference = tuple(payload["reference"])
    protocols = list(payload["tables"])
    rows_of = {
        protocol: [row for row in payload["tables"][protocol]["rows"] if (row["method"], row["score"]) != reference]
        for protocol in protocols
    }
    count = max((len(rows) for rows in rows_of.values()), default=0)
    figure = Figure(figsize=(6.0 * len(protocols) + 1.5, 1.6 + _ROW_HEIGHT_INCHES * max(count, 1)))
    confidence = payload.get("confidence", 0.95)
    for index, protocol in enumerate(protocols):
        axes = figure.add_subplot(1, len(protocols), index + 1)
        rows = rows_of[protocol]
        columns = [column for column in COLUMNS if rows and column[0] in rows[0]]
        offsets = [_SPREAD * (i / max(len(columns) - 1, 1) - 0.5) for i in range(len(columns))]
        for (key, label, colour), offset in zip(columns, offsets):
            for position, row in enumerate(rows):
                diff = row[key]["diff"]
                if diff is None:  # no paired difference: the run lacks the reference's seeds
                    continue
                y = position + offset
                axes.plot([diff["low"], diff["high"]], [y, y], color=colour, linewidth=1.2)
                axes.plot(
                    diff["mean"], y, marker="o", markersize=4, color=colour,
                    markerfacecolor=colour if diff.get("significant") else "white",
                )
            axes.plot([], [], marker="o", markersize=4, color=colour, label=label)
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_yticks(range(len(rows)))
        axes.set_yticklabels(
            [f"{row['method']} · {row['score']}" for row in rows] if index == 0 else [""] * len(rows), fontsize=7
        )
        axes.set_ylim(len(rows) - 0.5, -0.5)
        seeds = sorted({len(row["seeds"]) for row in rows})
        axes.set_title(f"protocol {protocol} ({'/'.join(map(str, seeds))} seeds)", fontsize=10)
        axes.set_xlabel(f"difference vs {reference[0]} {reference[1]}, {confidence:.0%} interval (points)", fontsize=8)
        axes.grid(axis="x", alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        "OOD leaderboard, paired differences against the reference on the same seeds: "
        "left of 0 is better; filled = interval excludes 0",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    FigureCanvasAgg(figure)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="?", default=RESULTS_JSON, help="leaderboard JSON (default: %(default)s)")
    parser.add_argument("--output", default=None, help="PNG to write (default: <json stem>_forest.png)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        payload = json.load(f)
    print(f"wrote {plot_leaderboard_forest(payload, args.output or forest_path(args.json))}")


if __name__ == "__main__":
    main()
