#!/usr/bin/env python
"""VOS against its neighbouring methods on digits-det: one schedule, one seed, one table.

Every variant is ``configs/Digits-Detection/digits_vos_tiny.yaml`` (1200 iterations, seed 0)
with a few keys changed (``VARIANTS``). For each one, in its own folder under
``--output-root``, the script

1. trains it with ``tools/train_net.py`` (the evaluation at the end of training is skipped),
2. fits the post-hoc class Gaussians with ``tools/fit_mahalanobis.py`` on digits_det_train,
3. evaluates it with ``tools/ood_eval.py`` with those Gaussians loaded: ID AP50 on
   digits_det_test, and FPR95 / AUROC of digits_det_test vs digits_det_ood boxes (optimal-F1
   box selection) for the energy, VOS and Mahalanobis scores,

then prints one table and writes it with every number of the reports to
``benchmarks/results/compare_ood_methods.json``. A variant whose ``ood_results.json``
exists is not run again, so an interrupted comparison resumes; ``--rerun`` evaluates again
(training and fitting are redone only where their files are missing: delete a variant's
folder to train it again).

    .venv/bin/python benchmarks/compare_ood_methods.py                       # all, ~1.5 h on 2 cores
    .venv/bin/python benchmarks/compare_ood_methods.py --variants vanilla,vos
    .venv/bin/python benchmarks/compare_ood_methods.py --quick                # 20 iterations each, a smoke run
    .venv/bin/python benchmarks/compare_ood_methods.py --variants cosface MODEL.EMBEDDING.COSFACE.SCALE 20.0
"""
import json
import os
import sys
import time
from collections import OrderedDict

from _common import REPO_ROOT, RESULTS_DIR, machine_info, run_logged, table, write_json

from vos_det.cli import ToolParser, load_config, run_tool

# Keys that turn the VOS config into each variant. "vos" is the config as it is.
_VANILLA = ["MODEL.VOS.ENABLED", "False", "MODEL.VOS.OOD_SCORE", "energy"]
VARIANTS = OrderedDict(
    [
        ("vanilla", _VANILLA),
        ("vos", []),
        ("l2_softmax", _VANILLA + ["MODEL.EMBEDDING.CLASSIFIER", "L2SoftmaxClassifier"]),
        ("cosface", _VANILLA + ["MODEL.EMBEDDING.CLASSIFIER", "CosFaceClassifier"]),
        ("arcface", _VANILLA + ["MODEL.EMBEDDING.CLASSIFIER", "ArcFaceClassifier"]),
        ("sphereface", _VANILLA + ["MODEL.EMBEDDING.CLASSIFIER", "SphereFaceClassifier"]),
        ("center_loss", _VANILLA + ["MODEL.EMBEDDING.LOSSES", "['CenterLoss']"]),
        ("cider", _VANILLA + ["MODEL.EMBEDDING.LOSSES", "['CIDERLoss']"]),
        ("vos_cider", ["MODEL.EMBEDDING.LOSSES", "['CIDERLoss']"]),
    ]
)
CONFIG = "digits_vos_tiny.yaml"
ID_TEST, OOD_TEST, ID_TRAIN = "digits_det_test", "digits_det_ood", "digits_det_train"
SCORES = ("energy", "vos", "mahalanobis")


def run_variant(name, overrides, output_dir, extra_opts, env):
    """Train, fit the Gaussians (each unless its file exists) and evaluate one variant.

    Returns:
        dict: its ood_results.json, plus the seconds spent.
    """
    python = sys.executable
    weights = os.path.join(output_dir, "model_final.pth")
    stats = os.path.join(output_dir, "mahalanobis_stats.pth")
    log_path = os.path.join(output_dir, "compare.log")
    os.makedirs(output_dir, exist_ok=True)
    opts = overrides + extra_opts
    started = time.perf_counter()
    timing = {}
    if not os.path.exists(weights):
        run_logged(
            [python, "tools/train_net.py", "--config", CONFIG, *opts, "OUTPUT_DIR", output_dir,
             "DATASETS.TEST", "()", "DATASETS.OOD_TEST", "()"],
            log_path,
            env,
        )
        timing["train"] = time.perf_counter() - started
    if not os.path.exists(stats):
        run_logged([python, "tools/fit_mahalanobis.py", "--config", CONFIG, "--weights", weights, "--dataset", ID_TRAIN,
              "--output", stats, *opts], log_path, env)
    run_logged(
        [python, "tools/ood_eval.py", "--config", CONFIG, "--output-dir", os.path.join(output_dir, "ood_eval"),
         *opts, "MODEL.WEIGHTS", weights, "MODEL.VOS.MAHALANOBIS_STATS", stats, "TEST.OOD.PLOTS", "False"],
        log_path,
        env,
    )
    with open(os.path.join(output_dir, "ood_eval", "ood_results.json")) as f:
        report = json.load(f)
    timing["total"] = time.perf_counter() - started
    report["timing_seconds"] = timing
    return report


def summarise(report):
    """The table row of one report: AP50 and FPR95 / AUROC of each score (None if absent)."""
    results = report["results"]
    ood = results["ood"][ID_TEST][OOD_TEST]
    row = {"AP50": results[ID_TEST]["bbox"]["AP50"]}
    for score in SCORES:
        row[f"{score} FPR95"] = ood[score]["FPR95"] if score in ood else None
        row[f"{score} AUROC"] = ood[score]["AUROC"] if score in ood else None
    row["ID boxes"] = report["boxes"][ID_TEST][ID_TEST]["selected"]
    row["OOD boxes"] = report["boxes"][ID_TEST][OOD_TEST]["selected"]
    return row


def _cell(value):
    """A table cell: numbers with 2 decimals, absent values as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def argument_parser():
    parser = ToolParser(description=__doc__.split("\n\n")[0], config=False)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}"
    )
    parser.add_argument("--output-root", default=str(REPO_ROOT / "output" / "compare_ood_methods"))
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/compare_ood_methods.json)")
    parser.add_argument("--quick", action="store_true", help="20 iterations per variant: a smoke run")
    parser.add_argument("--rerun", action="store_true", help="evaluate variants whose results exist again")
    return parser


def main(args):
    """Options and KEY VALUE overrides (for every variant) in any order; checked first."""
    variants = args.variants.split(",")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    for name in variants:  # every variant's keys and the overrides, before hours of training
        load_config(CONFIG, VARIANTS[name] + list(args.opts), training=True)

    extra_opts = list(args.opts)
    suffix = ""
    if args.quick:
        extra_opts += ["SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "(15,)", "SOLVER.WARMUP_ITERS", "5",
                       "MODEL.VOS.STARTING_ITER", "10", "MODEL.VOS.SAMPLE_NUMBER", "5"]
        suffix = "_quick"
    output_root = args.output_root + suffix
    env = dict(os.environ)
    env.setdefault("DETECTRON2_DATASETS", str(REPO_ROOT / "datasets"))

    reports, rows = OrderedDict(), []
    for name in variants:
        output_dir = os.path.join(output_root, name)
        results_file = os.path.join(output_dir, "ood_eval", "ood_results.json")
        if os.path.exists(results_file) and not args.rerun:
            with open(results_file) as f:
                reports[name] = json.load(f)
            print(f"[{name}] results found in {results_file}", flush=True)
        else:
            print(f"[{name}] training and evaluating in {output_dir} ...", flush=True)
            reports[name] = run_variant(name, VARIANTS[name], output_dir, extra_opts, env)
        rows.append({"variant": name, **summarise(reports[name])})

    title = (
        f"digits-det, {CONFIG} schedule, seed 0: ID AP50 on {ID_TEST}; FPR95 (ID positive, %) / "
        f"AUROC (%) of {ID_TEST} vs {OOD_TEST} boxes, optimal-F1 box selection"
    )
    headers = list(rows[0])
    cells = [[_cell(row[key]) for key in headers] for row in rows]
    table(cells, headers, title=title)
    output = args.output or str(RESULTS_DIR / f"compare_ood_methods{suffix}.json")
    write_json(
        output,
        {
            "title": title,
            "machine": machine_info("cpu"),
            "config": CONFIG,
            "variants": {name: VARIANTS[name] for name in variants},
            "extra_opts": extra_opts,
            "table": rows,
            "reports": reports,
        },
    )
    print(f"written to {output}")


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    run()
