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
import sys
import time
from collections import OrderedDict

from _common import REPO_ROOT, RESULTS_DIR, machine_info, parse_seeds, run_logged, table, training_env, write_json

from vos_det.evaluation.statistics import mean_ci, paired_difference

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
METRICS = [("accuracy", "accuracy"), ("FPR95", "FPR95"), ("AUROC", "AUROC")]
PROTOCOL = (
    "every image of each set scored (the whole image is the one box); FPR95 with ID as the "
    "positive class, at the first ROC point keeping >= 95% of ID images"
)


def train(model_dir, config, overrides, seed, env):
    """Train one (method, seed) unless its ood_results.json exists; returns that file's path."""
    results = os.path.join(model_dir, "ood_results.json")
    if not os.path.exists(results):
        os.makedirs(model_dir, exist_ok=True)
        run_logged(
            [sys.executable, "tools/train_net.py", "--config", config, *overrides,
             "SEED", str(seed), "OUTPUT_DIR", model_dir],
            os.path.join(model_dir, "train.log"),
            env,
        )
    return results


def model_summary(results_path):
    """{score: {"accuracy", "FPR95", "AUROC"}} of one trained model's ood_results.json."""
    with open(results_path) as f:
        results = json.load(f)["results"]
    accuracy = results[TEST]["classification"]["accuracy"]
    return {
        score: {"accuracy": accuracy, "FPR95": metrics["FPR95"], "AUROC": metrics["AUROC"]}
        for score, metrics in results["ood"][TEST][OOD].items()
    }


def aggregate(per_model, confidence=0.95):
    """Rows (method, score) -> {metric: {"mean": MeanCI, "diff": MeanCI or None}} over seeds."""
    reference_method, reference_score = REFERENCE
    reference = per_model[reference_method]
    rows = OrderedDict()
    for method, seeds in per_model.items():
        scores = sorted(set.intersection(*(set(summary) for summary in seeds.values())))
        for score in scores:
            row = OrderedDict(seeds=sorted(seeds))
            paired = [seed for seed in sorted(seeds) if seed in reference]
            for key, _ in METRICS:
                values = [seeds[seed][score][key] for seed in sorted(seeds)]
                diff = None
                if (method, score) != REFERENCE and len(paired) >= 2:
                    diff = paired_difference(
                        [seeds[seed][score][key] for seed in paired],
                        [reference[seed][reference_score][key] for seed in paired],
                        confidence,
                    )
                row[key] = {"mean": mean_ci(values, confidence), "diff": diff}
            rows[(method, score)] = row
    return rows


def format_rows(rows):
    headers = ["method", "score", "seeds"]
    for _, title in METRICS:
        headers += [title, f"{title} vs ref"]
    cells = []
    for (method, score), row in rows.items():
        line = [method, score, len(row["seeds"])]
        for key, _ in METRICS:
            mean, diff = row[key]["mean"], row[key]["diff"]
            spread = f" ± {mean.half_width:.2f}" if mean.half_width is not None else ""
            line.append(f"{mean.mean:.2f}{spread}")
            if diff is None:
                line.append("ref" if (method, score) == REFERENCE else "")
            else:
                star = "*" if diff.significant else ""
                line.append(f"{diff.mean:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]{star}")
        cells.append(line)
    return cells, headers


def target_verdict(rows):
    """The target on digits-cls: FPR95 -30% relative against (vanilla, energy) with the
    paired interval below 0, accuracy within 1 point. Returns the pairs that meet it."""
    reference_fpr = rows[REFERENCE]["FPR95"]["mean"].mean
    winners = []
    for pair, row in rows.items():
        fpr, accuracy = row["FPR95"]["diff"], row["accuracy"]["diff"]
        if fpr is None or accuracy is None:
            continue
        if fpr.high < 0 and fpr.mean <= -0.3 * reference_fpr and accuracy.mean >= -1.0:
            winners.append(pair)
    return winners


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
    rows = aggregate(per_model, args.confidence)
    winners = target_verdict(rows)
    cells, headers = format_rows(rows)
    title = (
        f"digits-cls, seeds {','.join(map(str, seeds))}: mean ± {args.confidence:.0%} CI; paired difference "
        f"against {REFERENCE[0]} {REFERENCE[1]} [{args.confidence:.0%} CI], * = excludes 0. Protocol: {PROTOCOL}."
    )
    verdict = "Target (FPR95 -30% relative, paired CI below 0, accuracy within 1 point): " + (
        ", ".join(f"{m} {s}" for m, s in winners) if winners else "met by no (method, score) pair."
    )
    text = table(cells, headers, title=title)
    print(verdict)
    payload = {
        "benchmark": "digits_cls_seeds",
        "machine": machine_info("cpu"),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - started,
        "protocol": PROTOCOL,
        "reference": list(REFERENCE),
        "methods": {name: {"config": METHODS[name][0], "overrides": METHODS[name][1]} for name in methods},
        "per_model": per_model,
        "rows": [
            {"method": method, "score": score, "seeds": row["seeds"],
             **{key: {"mean": row[key]["mean"].to_dict(), "diff": row[key]["diff"] and row[key]["diff"].to_dict()}
                for key, _ in METRICS}}
            for (method, score), row in rows.items()
        ],
        "target_met_by": [list(pair) for pair in winners],
    }
    write_json(args.output, payload)
    md_path = os.path.splitext(args.output)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(title + "\n\n" + text + "\n\n" + verdict + "\n")
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
