#!/usr/bin/env python
"""digits-cls over seeds: the vanilla classifier, VOS and a VOS variant, with 95% CIs.

The image-classification counterpart of ``ood_leaderboard.py``: the VOS variant measured on
digits-cls against the vanilla classifier. Every method is a digits-cls
config with a few keys changed (``METHODS``), trained once per seed with
``tools/train_net.py`` in ``OUTPUT_ROOT/<method>/seed<k>``; its end-of-training evaluation
writes ``ood_results.json``: accuracy on digits_cls_test (180 images) and FPR95 / AUROC of
digits_cls_test vs digits_cls_ood (179 images of digits 5-9) for every OOD score the model
outputs, every image scored. A folder that already holds ``ood_results.json`` is not trained
again.

One row per (method, score): the mean over seeds with its Student-t interval and the paired
difference against (vanilla, energy) on the same seeds (``*`` = the interval excludes 0).
Printed, and written to ``benchmarks/results/digits_cls_seeds.json`` and ``.md``.

    .venv/bin/python benchmarks/digits_cls_seeds.py                  # 3 methods x 5 seeds, ~35 min on 2 cores
    .venv/bin/python benchmarks/digits_cls_seeds.py --methods vanilla,vos --seeds 0,1,2
"""
import argparse
import json
import os
import time
from collections import OrderedDict

from _common import REPO_ROOT, RESULTS_DIR, machine_info, parse_seeds, table, train_in_child, training_env, write_json

from vos_det.evaluation.seed_table import SeedMetric, SeedTarget, format_seed_table, seed_table_rows, target_met_by

SEEDS = (0, 1, 2, 3, 4)
# Training method -> (config, overrides). vos_npos is the leaderboard's VOS variant:
# NPOS-style outliers, class-balanced uncertainty loss, 20 outliers kept per class.
METHODS = OrderedDict(
    [
        ("vanilla", ("digits_vanilla_classifier.yaml", [])),
        ("vos", ("digits_vos_classifier.yaml", [])),
        (
            "vos_npos",
            (
                "digits_vos_classifier.yaml",
                ["MODEL.VOS.OUTLIER_SYNTHESIS", "npos", "MODEL.VOS.BALANCED_LOSS", "True", "MODEL.VOS.SELECT", "20"],
            ),
        ),
    ]
)
REFERENCE = ("vanilla", "energy")
TEST, OOD = "digits_cls_test", "digits_cls_ood"
# Metric columns, each with its paired difference against REFERENCE; accuracy is the model's.
METRICS = [
    SeedMetric("accuracy", "accuracy", of_model=True),
    SeedMetric("FPR95", "FPR95"),
    SeedMetric("AUROC", "AUROC"),
]
# FPR95 lowered by >= 30% relative to the reference, the paired interval below 0; accuracy
# within 1 point.
TARGET = SeedTarget(lowered=("FPR95",), kept=("accuracy",))
PROTOCOL = (
    "every image of each set scored (the whole image is the one box); FPR95 with ID as the "
    "positive class, at the first ROC point keeping >= 95% of ID images"
)


def train(model_dir, config, overrides, seed, env):
    """Train one (method, seed) unless its ood_results.json exists; returns that file's path."""
    train_in_child(config, overrides, seed, model_dir, env, done_file="ood_results.json")
    return os.path.join(model_dir, "ood_results.json")


def model_summary(results_path):
    """{score: {"accuracy", "FPR95", "AUROC"}} of one trained model's ood_results.json."""
    with open(results_path) as f:
        results = json.load(f)["results"]
    accuracy = results[TEST]["classification"]["accuracy"]
    return {
        score: {"accuracy": accuracy, "FPR95": metrics["FPR95"], "AUROC": metrics["AUROC"]}
        for score, metrics in results["ood"][TEST][OOD].items()
    }


def seed_tables(per_model, confidence=0.95):
    """The rows, the pairs meeting :data:`TARGET` and the Markdown text of the results file.

    Args:
        per_model (dict): ``{method: {seed: model_summary(...)}}``.
        confidence (float): of every interval.

    Returns:
        tuple[list[dict], list[str], str]: the rows of
        :func:`vos_det.evaluation.seed_table.seed_table_rows`, the "method/score" pairs meeting
        the target, and the text (also printed).
    """
    rows = seed_table_rows(per_model, METRICS, REFERENCE, confidence)
    winners = target_met_by(rows, TARGET, REFERENCE)
    cells, headers = format_seed_table(rows, METRICS, REFERENCE)
    seeds = sorted({seed for summaries in per_model.values() for seed in summaries})
    title = (
        f"digits-cls, seeds {','.join(map(str, seeds))}: mean ± {confidence:.0%} CI; paired difference "
        f"against {REFERENCE[0]} {REFERENCE[1]} [{confidence:.0%} CI], * = excludes 0. Protocol: {PROTOCOL}."
    )
    verdict = "Target (FPR95 -30% relative, paired CI below 0, accuracy within 1 point): met by " + (
        ", ".join(winners) or "no (method, score) pair"
    ) + "."
    text = table(cells, headers, title=title)
    print(verdict)
    return rows, winners, title + "\n\n" + text + "\n\n" + verdict + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0-4)")
    parser.add_argument("--output-root", default=str(REPO_ROOT / "output" / "digits_cls_seeds"))
    parser.add_argument(
        "--output", default=str(RESULTS_DIR / "digits_cls_seeds.json"), help="JSON file (.md next to it)"
    )
    parser.add_argument("--train-threads", type=int, default=None, help="OMP_NUM_THREADS of the trainings")
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [name for name in methods if name not in METHODS]
    if unknown or REFERENCE[0] not in methods:
        parser.error(f"--methods must name known methods {list(METHODS)} and include {REFERENCE[0]!r}")
    seeds = parse_seeds(parser, args.seeds)
    env = training_env(args.train_threads)

    started = time.perf_counter()
    per_model = OrderedDict()
    for seed in seeds:  # seed-major: an interrupted run leaves every method with about as many seeds
        for method in methods:
            config, overrides = METHODS[method]
            model_dir = os.path.join(args.output_root, method, f"seed{seed}")
            print(f"[{method} seed {seed}] {model_dir}", flush=True)
            path = train(model_dir, config, overrides, seed, env)
            per_model.setdefault(method, OrderedDict())[seed] = model_summary(path)
    rows, winners, markdown = seed_tables(per_model, args.confidence)
    payload = {
        "benchmark": "digits_cls_seeds",
        "machine": machine_info("cpu"),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - started,
        "protocol": PROTOCOL,
        "reference": list(REFERENCE),
        "methods": {name: {"config": METHODS[name][0], "overrides": METHODS[name][1]} for name in methods},
        "per_model": per_model,
        "rows": rows,
        "target_met_by": winners,
    }
    write_json(args.output, payload)
    md_path = os.path.splitext(args.output)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown)
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
