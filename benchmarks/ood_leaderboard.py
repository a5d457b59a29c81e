#!/usr/bin/env python
"""The digits-det OOD leaderboard: training methods x OOD scores, over seeds, with 95% CIs.

Every training method is ``configs/Digits-Detection/digits_vos_tiny.yaml`` (1200 iterations)
with a few config keys changed (``METHODS``, or ``--methods-file``), trained once per seed
(``SEED``) in ``OUTPUT_ROOT/<method>/seed<k>``. For each model the script

1. trains it with ``tools/train_net.py`` (end-of-training evaluation skipped) unless
   ``model_final.pth`` exists;
2. fits the post-hoc OOD scores on digits_det_train (:func:`fit_posthoc`) unless their files
   exist;
3. runs the model once over digits_det_test, _val, _shifted_test and the OOD sets
   (:func:`vos_det.engine.ood_evaluation.collect_records`), caching the records of each set in
   ``<model>/leaderboard/records/<set>.pth``, and evaluates those records with
   :func:`vos_det.evaluation.evaluate_ood` under every protocol of ``PROTOCOLS``
   (``TEST.OOD.PROTOCOL``): AP50 on the test and shifted sets; FPR95 / AUROC of test vs
   near-OOD (digits_det_ood) and far-OOD (digits_det_far_ood) boxes for every OOD score the
   model outputs; and the false-alarm rate on the covariate-shifted set: the percentage of its
   kept boxes flagged OOD at the threshold calibrated on digits_det_val (keeping 95% of its
   kept ID boxes), one threshold per score (the library's ``flagged_by_score``). The result
   is cached in ``<model>/leaderboard/<protocol>.json`` (``--rerun`` evaluates the cached
   records again, without running the model; delete ``records/`` to run it again).

Then, per protocol, one row per (method, score): the mean over seeds with its 95% Student-t
interval, and the paired difference against (vanilla, energy) on the same seeds with its 95%
interval (``*`` = the interval excludes 0). Printed, and written to
``benchmarks/results/ood_leaderboard.json`` and ``.md``.

    .venv/bin/python benchmarks/ood_leaderboard.py                      # everything (hours on 2 cores)
    .venv/bin/python benchmarks/ood_leaderboard.py --methods vanilla,vos --seeds 0,1,2
    .venv/bin/python benchmarks/ood_leaderboard.py --train-only          # only what needs training
    .venv/bin/python benchmarks/ood_leaderboard.py --methods-file variants.txt   # "name KEY VALUE ..." lines
"""
import argparse
import json
import os
import shlex
import sys
import time
from collections import OrderedDict
from dataclasses import asdict

import numpy as np
import torch

from _common import (
    REPO_ROOT,
    RESULTS_DIR,
    machine_info,
    parse_seeds,
    run_logged,
    table,
    train_in_child,
    training_env,
    write_json,
)
from leaderboard_plots import forest_path, plot_leaderboard_forest

# vos_det registers digits-det at import, under $DETECTRON2_DATASETS: the repository's
# datasets/ unless set, wherever the script is run from.
os.environ.setdefault("DETECTRON2_DATASETS", str(REPO_ROOT / "datasets"))

from vos_det.config import load_config
from vos_det.engine import Trainer, load_trained_model
from vos_det.engine.ood_evaluation import collect_records, ood_rule_of
from vos_det.evaluation import DetectionRecords, OODRule, evaluate_ood
from vos_det.evaluation.box_selection import PROTOCOL_DESCRIPTIONS
from vos_det.evaluation.box_selection import PROTOCOLS as LIBRARY_PROTOCOLS
from vos_det.evaluation.leaderboard import LEADERBOARD_ID_SET, LEADERBOARD_OOD_SETS
from vos_det.evaluation.seed_table import (
    SeedMetric,
    SeedTarget,
    format_mean,
    format_seed_table,
    reference_row,
    seed_table_rows,
    target_met_by,
)
from vos_det.evaluation.statistics import mean_ci

# Benchmark detector -> the VOS config every method of it starts from. "tiny" is the plain
# conv-FPN of the main job; "r18" detectron2's ResNet-18-FPN, built like the paper's detector.
DETECTORS = OrderedDict([("tiny", "digits_vos_tiny.yaml"), ("r18", "digits_vos_r18.yaml")])
CONFIG = DETECTORS["tiny"]  # set by --detector
SEEDS = (0, 1, 2, 3, 4)
_VANILLA = ["MODEL.VOS.ENABLED", "False", "MODEL.VOS.OOD_SCORE", "energy"]
# Training method -> config overrides of CONFIG. "vos" is the config as it is; "vos_npos" and
# "vos_balanced" the synthesis variants (NPOS-style outliers with the class-balanced
# uncertainty loss and 20 kept per class; the class-balanced loss alone).
METHODS = OrderedDict(
    [
        ("vanilla", _VANILLA),
        ("vos", []),
        (
            "vos_npos",
            ["MODEL.VOS.OUTLIER_SYNTHESIS", "npos", "MODEL.VOS.BALANCED_LOSS", "True", "MODEL.VOS.SELECT", "20"],
        ),
        ("vos_balanced", ["MODEL.VOS.BALANCED_LOSS", "True"]),
    ]
)
# Evaluation protocols (TEST.OOD.PROTOCOL): every one vos_det knows. The table header says how
# each keeps boxes and reads FPR95 under this config (BOX_SELECTION optimal_f1, FPR95_METHOD
# first_at_least); a protocol missing here is described by vos_det's own sentence.
PROTOCOLS = OrderedDict((name, PROTOCOL_DESCRIPTIONS[name]) for name in LIBRARY_PROTOCOLS)
PROTOCOLS.update(
    vos_official=(
        "boxes kept when their proposal's maximum foreground probability reaches the ID test "
        "set's optimal-F1 threshold (COCOeval precision, IoU .50:.95); FPR95 at the ROC point "
        "whose ID recall is closest to 95%"
    ),
    vos_det=(
        "boxes kept when their own class score reaches the ID test set's optimal-F1 threshold "
        "(exact VOC matching, IoU 0.5); FPR95 at the first ROC point keeping >= 95% of ID boxes"
    ),
)
REFERENCE = ("vanilla", "energy")
TRAIN, VAL, SHIFTED = "digits_det_train", "digits_det_val", "digits_det_shifted_test"
OOD_VAL = "digits_det_ood_val"  # OOD validation set: the only OOD data a hyperparameter is chosen on
# The ID test set and the OOD sets by column prefix: the library's, which compares a run with them.
TEST, OOD_SETS = LEADERBOARD_ID_SET, LEADERBOARD_OOD_SETS
# The sets a model is run over, once each.
RECORD_SETS = [TEST, VAL, SHIFTED, *OOD_SETS.values()]
# The target is judged on the splits that differ from ID in meaning only.
TARGET_SETS = ("near", "far_matched")
# Metric columns; AP50 and shifted AP50 are the model's, whatever the score. Every column but
# shifted AP50 also gets the paired difference against REFERENCE.
METRICS = [
    SeedMetric("AP50", "AP50", of_model=True),
    SeedMetric("shifted_AP50", "shifted AP50", paired=False, of_model=True),
]
for _kind in OOD_SETS:
    METRICS += [SeedMetric(f"{_kind}_FPR95", f"{_kind} FPR95"), SeedMetric(f"{_kind}_AUROC", f"{_kind} AUROC")]
METRICS += [SeedMetric("false_alarm", "shifted false alarms %")]
# FPR95 lowered by >= 30% relative to the reference on every set of TARGET_SETS, the paired
# interval below 0; AP50 within 1 point; false alarms on the shifted set at most the reference's.
TARGET = SeedTarget(
    lowered=tuple(f"{kind}_FPR95" for kind in TARGET_SETS), kept=("AP50",), not_above_reference=("false_alarm",)
)
# SAFE's FGSM pass costs about 0.7 s per training image on 2 CPU cores: it is fitted on 300
# of the 1200 (about 750 predicted boxes), which bounds a model's fit to minutes.
SAFE_FIT = ["MODEL.VOS.POST_HOC.SAFE.MAX_IMAGES", "300"]
TIMING_FILE = "leaderboard_seconds.json"  # in each model's folder: seconds spent training, fitting


# --- training ------------------------------------------------------------------------------


def _record_seconds(model_dir, step, seconds):
    path = os.path.join(model_dir, TIMING_FILE)
    timing = {}
    if os.path.exists(path):
        with open(path) as f:
            timing = json.load(f)
    timing[step] = seconds
    with open(path, "w") as f:
        json.dump(timing, f)


def train(model_dir, overrides, seed, env):
    """Train one (method, seed) unless its model_final.pth exists."""
    started = time.perf_counter()
    no_evaluation = ["DATASETS.TEST", "()", "DATASETS.OOD_TEST", "()"]
    if train_in_child(CONFIG, [*overrides, *no_evaluation], seed, model_dir, env, log_name="leaderboard.log"):
        _record_seconds(model_dir, "train", time.perf_counter() - started)


def fit_posthoc(model_dir, overrides, env):
    """Fit the post-hoc OOD scores of one model on TRAIN unless their file exists.

    ``tools/fit_ood_scores.py`` fits k-NN, ReAct, ViM, the multi-layer Gaussians and SAFE (k of
    k-NN chosen on VAL vs OOD_VAL, never on a test split). (The penultimate-layer Mahalanobis
    score of ``tools/fit_mahalanobis.py`` is left out: its multi-layer version is in.)

    Returns:
        list[str]: the config overrides that load them (each detection then carries their
        ``ood_scores_<name>`` fields).
    """
    post_hoc = os.path.join(model_dir, "post_hoc_scores.pth")
    if not os.path.exists(post_hoc):
        started = time.perf_counter()
        run_logged(
            [sys.executable, "tools/fit_ood_scores.py", "--config", CONFIG,
             "--weights", os.path.join(model_dir, "model_final.pth"), "--dataset", TRAIN,
             "--val-id", VAL, "--val-ood", OOD_VAL, "--output", post_hoc, *overrides, *SAFE_FIT],
            os.path.join(model_dir, "leaderboard.log"),
            env,
        )
        _record_seconds(model_dir, "fit", time.perf_counter() - started)
    return ["MODEL.VOS.POST_HOC.STATE", post_hoc]


# --- evaluation ----------------------------------------------------------------------------


def false_alarms(report):
    """Per OOD score, the percentage of the shifted set's kept boxes flagged OOD.

    The library's ``flagged_by_score`` of the protocol's calibration: the threshold of each
    score keeps TEST.OOD.CALIBRATION_ID_KEEP of the validation set's kept boxes, and the
    shifted set's boxes are kept by the ID test set's selection, as an OOD set's are.

    Returns:
        dict: score -> {"threshold", "false_alarm" (percent), "num_boxes"}.
    """
    calibration = report["calibration"]
    return {
        score: {
            "threshold": calibration["score_thresholds"][score],
            "false_alarm": 100.0 * share,
            "num_boxes": report["boxes"][TEST][SHIFTED]["selected"],
        }
        for score, share in calibration["flagged_by_score"][TEST][SHIFTED].items()
    }


def _summary(results, report, alarms):
    """A model's leaderboard numbers under one protocol: {score: {metric: value}}, AP50s."""
    ood = results["ood"][TEST]
    scores = sorted(set.intersection(*(set(ood.get(name, {})) for name in OOD_SETS.values())))
    per_score = OrderedDict()
    for score in scores:
        row = {}
        for kind, name in OOD_SETS.items():
            row[f"{kind}_FPR95"] = ood[name][score]["FPR95"]
            row[f"{kind}_AUROC"] = ood[name][score]["AUROC"]
        row["false_alarm"] = alarms[score]["false_alarm"] if score in alarms else None
        per_score[score] = row
    return {
        "AP50": results[TEST]["bbox"]["AP50"],
        "shifted_AP50": results[SHIFTED]["bbox"]["AP50"],
        "scores": per_score,
        "boxes": report["boxes"][TEST],
        "box_selection": {name: report["box_selection"][name] for name in (TEST, VAL)},
        "convention": report["convention"],
        "false_alarms": alarms,
        "calibration": report.get("calibration", {}),
        "shift_vs_test": {score: m for score, m in ood.get(SHIFTED, {}).items()},
    }


def _evaluation_config(overrides, posthoc_opts, weights):
    """The config of a model's evaluation: its sets, calibrated on VAL, no plots."""
    cfg = load_config(
        CONFIG,
        list(overrides) + list(posthoc_opts) + ["MODEL.WEIGHTS", weights, "TEST.OOD.PLOTS", "False"],
        freeze=False,
    )
    cfg.DATASETS.TEST = (TEST, VAL, SHIFTED)
    cfg.DATASETS.OOD_TEST = tuple(OOD_SETS.values()) + (SHIFTED,)
    cfg.TEST.OOD.CALIBRATION_DATASET = VAL
    return cfg


def model_records(model_dir, cfg, key, log):
    """The records of every set and the model's is_ood rule, from ``<model>/leaderboard/records``
    when cached there with the same ``key``, else from one inference pass per set (then cached).

    Returns:
        tuple[dict[str, DetectionRecords], OODRule]
    """
    folder = os.path.join(model_dir, "leaderboard", "records")
    paths = {name: os.path.join(folder, f"{name}.pth") for name in RECORD_SETS}
    cached = {}
    for name, path in paths.items():
        if os.path.exists(path):
            stored = torch.load(path, weights_only=False)  # written below: plain arrays and dicts
            if stored["key"] == key:
                cached[name] = stored
    if len(cached) == len(paths):
        rule = OODRule(**next(iter(cached.values()))["ood_rule"])
        return {name: DetectionRecords.from_dict(stored["records"]) for name, stored in cached.items()}, rule
    log(f"  running {model_dir} over {', '.join(RECORD_SETS)} ...")
    model = load_trained_model(cfg)
    cfg.OUTPUT_DIR = os.path.join(model_dir, "leaderboard")  # the evaluators' COCO conversions
    records = collect_records(
        cfg, model, lambda name: Trainer.build_test_loader(cfg, name), lambda name: Trainer.build_evaluator(cfg, name)
    )
    rule = ood_rule_of(model)
    os.makedirs(folder, exist_ok=True)
    for name, path in paths.items():
        torch.save({"key": key, "records": records[name].to_dict(), "ood_rule": asdict(rule)}, path)
    return records, rule


def evaluate(model_dir, overrides, protocols, posthoc_opts, key, log):
    """Evaluate one trained model's records under every protocol; returns {protocol: summary}."""
    weights = os.path.join(model_dir, "model_final.pth")
    cfg = _evaluation_config(overrides, posthoc_opts, weights)
    records, rule = model_records(model_dir, cfg, key, log)
    summaries = OrderedDict()
    for protocol in protocols:
        started = time.perf_counter()
        cfg_p = cfg.clone()
        cfg_p.TEST.OOD.PROTOCOL = protocol
        cfg_p.OUTPUT_DIR = os.path.join(model_dir, "leaderboard", protocol)
        results, report = evaluate_ood(records, cfg_p, ood_rule=rule, log_report=False)
        summaries[protocol] = _summary(results, report, false_alarms(report))
        summaries[protocol]["seconds"] = time.perf_counter() - started
    return summaries


def evaluate_cached(model_dir, overrides, protocols, posthoc_opts, rerun, log):
    """evaluate() unless ``<model>/leaderboard/<protocol>.json`` holds a result of the same
    weights, overrides and post-hoc files (``rerun``: evaluate the cached records again);
    returns {protocol: summary}."""
    weights = os.path.join(model_dir, "model_final.pth")
    key = {
        "config": CONFIG,
        "overrides": list(overrides),
        "posthoc": list(posthoc_opts),
        "files_mtime": {
            path: os.path.getmtime(path) for path in [weights] + [p for p in posthoc_opts if os.path.isfile(p)]
        },
        "datasets": RECORD_SETS,
    }
    paths = {protocol: os.path.join(model_dir, "leaderboard", f"{protocol}.json") for protocol in protocols}
    cached = {}
    for protocol, path in paths.items():
        if os.path.exists(path) and not rerun:
            with open(path) as f:
                stored = json.load(f)
            if stored.get("key") == key:
                cached[protocol] = stored["summary"]
    missing = [protocol for protocol in protocols if protocol not in cached]
    if missing:
        log(f"  evaluating {model_dir} under {', '.join(missing)} ...")
        for protocol, summary in evaluate(model_dir, overrides, missing, posthoc_opts, key, log).items():
            os.makedirs(os.path.dirname(paths[protocol]), exist_ok=True)
            with open(paths[protocol], "w") as f:
                json.dump({"key": key, "summary": summary}, f, indent=1)
            cached[protocol] = summary
    return OrderedDict((protocol, cached[protocol]) for protocol in protocols)


# --- statistics and tables -----------------------------------------------------------------


def seed_values(per_model, protocol):
    """The values of one protocol's seed table: ``{method: {seed: {score: {metric key: value}}}}``.

    Args:
        per_model (dict): ``{method: {seed: {protocol: summary}}}``; a model without a summary
            of ``protocol`` is left out.
    """
    values = OrderedDict()
    for method, seeds in per_model.items():
        for seed, summaries in seeds.items():
            if protocol not in summaries:
                continue
            summary = summaries[protocol]
            model = {"AP50": summary["AP50"], "shifted_AP50": summary["shifted_AP50"]}
            values.setdefault(method, OrderedDict())[seed] = OrderedDict(
                (score, {**model, **metrics}) for score, metrics in summary["scores"].items()
            )
    return values


def aggregate(per_model, protocol, reference=REFERENCE, confidence=0.95):
    """The rows of one protocol's table (:func:`vos_det.evaluation.seed_table.seed_table_rows`).

    Args:
        per_model (dict): ``{method: {seed: {protocol: summary}}}``.
        protocol (str): which protocol's summaries to use.
        reference (tuple[str, str]): the (method, score) the paired differences are against.
        confidence (float): of every interval.
    """
    return seed_table_rows(seed_values(per_model, protocol), METRICS, reference, confidence)


def target_verdict(rows, reference=REFERENCE):
    """The pairs meeting :data:`TARGET`: ``{"met_by": ["method/score", ...]}``, with a "note"
    when the table has no reference row."""
    if reference_row(rows, reference) is None:
        return {"met_by": [], "note": f"no {reference} row"}
    return {"met_by": target_met_by(rows, TARGET, reference)}


def table_title(protocol, confidence=0.95, reference=REFERENCE):
    sets = ", ".join(f"{kind} = {TEST} vs {name}" for kind, name in OOD_SETS.items())
    return (
        f"digits-det OOD leaderboard, protocol {protocol}: {PROTOCOLS[protocol]}. "
        f"Mean ± {100 * confidence:.0f}% CI half-width over seeds (Student t); Δ = paired difference "
        f"against ({reference[0]}, {reference[1]}) on the same seeds [{100 * confidence:.0f}% CI], "
        f"* = CI excludes 0. AP50: {TEST} (COCO-style); {sets} "
        f"boxes; FPR95 (%, ID positive: OOD boxes accepted at the threshold keeping 95% of ID boxes, "
        f"lower is better), AUROC (%, higher is better); shifted false alarms: % of {SHIFTED} kept "
        f"boxes (all ID) flagged OOD at the per-score threshold keeping 95% of {VAL} kept boxes; "
        f"shifted AP50 on {SHIFTED}. Larger OOD score = more OOD."
    )


# --- command line --------------------------------------------------------------------------


def read_methods_file(path):
    """Training methods from a text file: one ``name KEY VALUE ...`` per line.

    ``#`` starts a comment; a leading ``-`` / ``*`` bullet, backticks and a ``:`` after the
    name are ignored (so a Markdown list works). The overrides must come in KEY VALUE pairs.

    Returns:
        OrderedDict: name -> list of overrides.
    """
    methods = OrderedDict()
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].replace("`", "").strip().lstrip("-*").strip()
            if not line:
                continue
            name, *overrides = shlex.split(line)
            name = name.rstrip(":")
            if len(overrides) % 2:
                raise SystemExit(f"error: {path}:{number}: method {name!r} has an odd number of KEY VALUE tokens")
            methods[name] = overrides
    return methods


# Uncertainty-head scalars (logged to metrics.json while synthesis runs): key,
# header. "gap" is derived: mean outlier energy minus mean ID-box energy.
TRAINING_DIAGNOSTICS = [
    ("vos/loss_over_prior_entropy", "loss_vos / prior entropy"),
    ("gap", "outlier - ID energy"),
    ("vos/id_accuracy", "head accuracy on ID"),
    ("vos/outlier_accuracy", "head accuracy on outliers"),
]


def training_diagnostics(model_dir, last_iterations=200):
    """The uncertainty head's logged scalars averaged over the last iterations of training.

    Args:
        model_dir (str): a trained model's folder (its ``metrics.json``).
        last_iterations (int): average the entries logged at iterations within this many of
            the last one.

    Returns:
        dict or None: {key of TRAINING_DIAGNOSTICS: mean}, None for a model without synthesis
        (no ``vos/`` scalar logged).
    """
    entries = []
    with open(os.path.join(model_dir, "metrics.json")) as f:
        for line in f:
            entry = json.loads(line)
            if "vos/id_energy" in entry:
                entries.append(entry)
    if not entries:
        return None
    last = entries[-1]["iteration"]
    entries = [entry for entry in entries if entry["iteration"] > last - last_iterations]
    summary = {
        key: float(np.mean([entry[key] for entry in entries]))
        for key, _ in TRAINING_DIAGNOSTICS if key != "gap"
    }
    summary["gap"] = float(np.mean([entry["vos/outlier_energy"] - entry["vos/id_energy"] for entry in entries]))
    return summary


def diagnostics_table(per_model_diagnostics, confidence=0.95):
    """Rows (method) of the training diagnostics, mean +- CI over seeds; returns (cells, headers)."""
    cells = []
    for method, seeds in per_model_diagnostics.items():
        values = [summary for summary in seeds.values() if summary is not None]
        if not values:
            continue
        row = [method, len(values)]
        for key, _ in TRAINING_DIAGNOSTICS:
            stat = mean_ci([summary[key] for summary in values], confidence)
            row.append(format_mean(stat.to_dict()))
        cells.append(row)
    return cells, ["method", "seeds"] + [header for _, header in TRAINING_DIAGNOSTICS]


def leaderboard_tables(per_model, diagnostics, protocols, confidence=0.95):
    """The tables of every protocol and of the training diagnostics (also printed).

    Args:
        per_model (dict): ``{method: {seed: {protocol: summary}}}``.
        diagnostics (dict): ``{method: {seed: training_diagnostics(...)}}``.
        protocols (list[str]): the tables to make, in order.
        confidence (float): of every interval.

    Returns:
        tuple[OrderedDict, str]: ``{protocol: {"title", "rows", "target"}}`` and the Markdown
        text of the results file.
    """
    tables, markdown = OrderedDict(), []
    for protocol in protocols:
        rows = aggregate(per_model, protocol, confidence=confidence)
        verdict = target_verdict(rows)
        cells, headers = format_seed_table(rows, METRICS, REFERENCE)
        title = table_title(protocol, confidence)
        text = table(cells, headers, title=title)
        met = ", ".join(verdict["met_by"]) or "no (method, score) pair"
        line = (f"Target (FPR95 -30% relative on {' and '.join(TARGET_SETS)}, paired CI below 0, AP50 within 1, "
                f"false alarms <= the reference's): met by {met}.")
        print(line)
        markdown += [f"### Protocol `{protocol}`", "", title, "", text, "", line, ""]
        tables[protocol] = {"title": title, "rows": rows, "target": verdict}
    cells, headers = diagnostics_table(diagnostics, confidence)
    if cells:
        title = (
            "Uncertainty head at the end of training (metrics.json, mean of the last 200 iterations' "
            f"entries; mean ± {confidence:.0%} CI half-width over seeds). The prior entropy is "
            "that of the step's ID/outlier counts; accuracy = share of each kind the head calls right."
        )
        text = table(cells, headers, title=title)
        markdown += ["### Uncertainty head (training diagnostics)", "", title, "", text, ""]
    return tables, "\n".join(markdown)


def _status(path, lines):
    if path:
        with open(path, "w") as f:
            f.write("# OOD leaderboard status\n\n" + time.strftime("Updated %H:%M:%S UTC\n\n", time.gmtime()))
            f.write("\n".join(f"- {line}" for line in lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=None, help="comma-separated training methods (default: all known)")
    parser.add_argument("--methods-file", default=None, help="extra methods, one 'name KEY VALUE ...' per line")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0-4)")
    parser.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help=f"comma-separated subset of {list(PROTOCOLS)}"
    )
    parser.add_argument(
        "--detector", default="tiny", choices=list(DETECTORS),
        help="benchmark detector: " + ", ".join(f"{name} ({config})" for name, config in DETECTORS.items()),
    )
    parser.add_argument(
        "--output-root", default=None,
        help="where the models are trained (default output/leaderboard, output/leaderboard_<detector> for others)",
    )
    parser.add_argument(
        "--output", default=None,
        help="JSON file, .md next to it (default benchmarks/results/ood_leaderboard[_<detector>].json)",
    )
    parser.add_argument("--train-only", action="store_true", help="train what is missing, evaluate nothing")
    parser.add_argument(
        "--skip-untrained", action="store_true",
        help="train nothing: evaluate and tabulate the models that exist (e.g. while another run trains)",
    )
    parser.add_argument("--rerun", action="store_true", help="evaluate the cached records again (models are not run)")
    parser.add_argument("--status-file", default=None, help="a Markdown file kept up to date with the progress")
    parser.add_argument("--confidence", type=float, default=0.95, help="coverage of the intervals")
    parser.add_argument(
        "--train-threads", type=int, default=None,
        help="OMP_NUM_THREADS of the trainings (1 is faster on a loaded 2-core machine)",
    )
    args = parser.parse_args()
    global CONFIG
    CONFIG = DETECTORS[args.detector]
    suffix = "" if args.detector == "tiny" else f"_{args.detector}"
    args.output_root = args.output_root or str(REPO_ROOT / "output" / f"leaderboard{suffix}")
    args.output = args.output or str(RESULTS_DIR / f"ood_leaderboard{suffix}.json")

    known = OrderedDict(METHODS)
    if args.methods_file:
        known.update(read_methods_file(args.methods_file))
    methods = args.methods.split(",") if args.methods else list(known)
    unknown = [name for name in methods if name not in known]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; known: {list(known)} (add some with --methods-file)")
    protocols = args.protocols.split(",")
    unknown = [name for name in protocols if name not in PROTOCOLS]
    if unknown:
        parser.error(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    seeds = parse_seeds(parser, args.seeds)
    env = training_env(args.train_threads)

    def log(message):
        print(message, flush=True)

    started = time.perf_counter()
    # Seed-major order: an interrupted run leaves every method with about as many seeds.
    jobs = [
        (method, seed, os.path.join(args.output_root, method, f"seed{seed}")) for seed in seeds for method in methods
    ]
    done, timing = [], OrderedDict()
    if args.train_only and args.skip_untrained:
        parser.error("--train-only and --skip-untrained exclude each other")
    if args.skip_untrained:
        jobs = [job for job in jobs if os.path.exists(os.path.join(job[2], "model_final.pth"))]
    for index, (method, seed, model_dir) in enumerate(jobs):
        if os.path.exists(os.path.join(model_dir, "model_final.pth")):
            done.append(f"{method}/seed{seed}")
            continue
        _status(args.status_file, [f"trained: {', '.join(done) or 'none'}", f"training now: {method}/seed{seed}",
                                   f"queued: {', '.join(f'{m}/seed{s}' for m, s, _ in jobs[index + 1:]) or 'none'}"])
        log(f"[{method} seed {seed}] training in {model_dir} ...")
        train(model_dir, known[method], seed, env)
        done.append(f"{method}/seed{seed}")
    if args.train_only:
        _status(args.status_file, [f"trained: {', '.join(done)}", "training finished; nothing running"])
        return

    per_model = OrderedDict()
    for method, seed, model_dir in jobs:
        _status(args.status_file, [f"trained: {', '.join(done)}", f"evaluating now: {method}/seed{seed}"])
        posthoc_opts = fit_posthoc(model_dir, known[method], env)
        per_model.setdefault(method, OrderedDict())[seed] = evaluate_cached(
            model_dir, known[method], protocols, posthoc_opts, args.rerun, log
        )
        timing_file = os.path.join(model_dir, TIMING_FILE)
        if os.path.exists(timing_file):
            with open(timing_file) as f:
                timing[f"{method}/seed{seed}"] = json.load(f)
        timing.setdefault(f"{method}/seed{seed}", {})["evaluate"] = sum(
            summary["seconds"] for summary in per_model[method][seed].values()
        )
    _status(args.status_file, [f"trained: {', '.join(done)}", "evaluation finished; nothing running"])

    diagnostics = OrderedDict(
        (method, OrderedDict((seed, training_diagnostics(model_dir)) for m, seed, model_dir in jobs if m == method))
        for method in methods
    )
    tables, markdown = leaderboard_tables(per_model, diagnostics, protocols, args.confidence)
    elapsed = time.perf_counter() - started
    payload = {
        "machine": machine_info("cpu"),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:]),
        "config": CONFIG,
        "methods": {name: known[name] for name in methods},
        "seeds": seeds,
        "reference": list(REFERENCE),
        "confidence": args.confidence,
        "protocols": {name: PROTOCOLS[name] for name in protocols},
        "tables": tables,
        "training_diagnostics": diagnostics,
        "per_model": per_model,
        "seconds": {"this_run": elapsed, "per_model": timing},
    }
    write_json(args.output, payload)
    md_path = os.path.splitext(args.output)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown)
    print(f"wrote {md_path}")
    print(f"wrote {plot_leaderboard_forest(payload, forest_path(args.output))}")


if __name__ == "__main__":
    main()
