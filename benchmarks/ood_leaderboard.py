#!/usr/bin/env python
"""The OOD seed studies: training methods x OOD scores, over seeds, with 95% CIs.

Two tasks (``--task``), one procedure. Every training method is the task's VOS config with a
few config keys changed (``METHODS``, or ``--methods-file``), trained once per seed (``SEED``)
with ``tools/train_net.py`` in ``OUTPUT_ROOT/<method>/seed<k>`` unless that folder holds the
task's ``DONE_FILE``, and scored with every OOD score it outputs. The seed table
(:mod:`vos_det.evaluation.seed_table`) has one row per (method, score): the mean over seeds
with its 95% Student-t interval, and the paired difference against (vanilla, energy) on the
same seeds with its 95% interval (``*`` = the interval excludes 0). Printed, and written to a
JSON file and a Markdown file next to it.

``--task detection`` (the default), the digits-det OOD leaderboard: the config is
``configs/Digits-Detection/digits_vos_tiny.yaml`` (1200 iterations; ``--detector r18``:
``digits_vos_r18.yaml``). For each model the script

1. trains it, its end-of-training evaluation skipped, unless ``model_final.pth`` exists;
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

One table per protocol, in ``benchmarks/results/ood_leaderboard.json`` and ``.md``
(``ood_leaderboard_r18`` for the r18 detector), with a forest plot.

``--task classification``, digits-cls: the config is
``configs/Digits-Classification/digits_vos_classifier.yaml`` (methods vanilla, vos and
vos_npos unless ``--methods`` says otherwise). A model's end-of-training evaluation writes
``ood_results.json``: accuracy on digits_cls_test (180 images) and FPR95 / AUROC of
digits_cls_test vs digits_cls_ood (179 images of digits 5-9) for every OOD score, every image
scored. One table, in ``benchmarks/results/digits_cls_seeds.json`` and ``.md``.

    .venv/bin/python benchmarks/ood_leaderboard.py                      # everything (hours on 2 cores)
    .venv/bin/python benchmarks/ood_leaderboard.py --methods vanilla,vos --seeds 0,1,2
    .venv/bin/python benchmarks/ood_leaderboard.py --train-only          # only what needs training
    .venv/bin/python benchmarks/ood_leaderboard.py --methods-file variants.txt   # "name KEY VALUE ..." lines
    .venv/bin/python benchmarks/ood_leaderboard.py --task classification # 3 methods x 5 seeds, ~35 min on 2 cores
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
from vos_det.config.renamed_keys import current_overrides
from vos_det.engine import Trainer, load_trained_model
from vos_det.engine.ood_evaluation import collect_records, ood_rule_of
from vos_det.evaluation import DetectionRecords, OODRule, evaluate_ood
from vos_det.evaluation.box_selection import PROTOCOL_DESCRIPTIONS
from vos_det.evaluation.box_selection import PROTOCOLS as LIBRARY_PROTOCOLS
from vos_det.evaluation.leaderboard import LEADERBOARD_ID_SET, LEADERBOARD_OOD_SETS
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
from vos_det.evaluation.statistics import mean_ci, paired_difference
from vos_det.modeling.ood_scores.state_file import POST_HOC_STATE_FILE, read_post_hoc_info

# Benchmark detector -> the VOS config every method of it starts from. "tiny" is the plain
# conv-FPN of the main job; "r18" detectron2's ResNet-18-FPN, built like the paper's detector.
DETECTORS = OrderedDict([("tiny", "digits_vos_tiny.yaml"), ("r18", "digits_vos_r18.yaml")])
# The VOS config of the classification task: the image classifier of digits-cls.
CLASSIFIER_CONFIG = "digits_vos_classifier.yaml"
CONFIG = DETECTORS["tiny"]  # set by --task and --detector
TASKS = ("detection", "classification")
# The file whose presence in a model's folder means it is trained: a detector's weights (it is
# evaluated here), a classifier's end-of-training evaluation (its result).
DONE_FILE = {"detection": "model_final.pth", "classification": "ood_results.json"}
SEEDS = (0, 1, 2, 3, 4)
# The config without VOS, scored by energy: what digits_vanilla_tiny.yaml and
# digits_vanilla_classifier.yaml say.
_VANILLA = ["MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "energy"]
# Training method -> config overrides of CONFIG, for both tasks. "vos" is the config as it is;
# "vos_npos" and "vos_balanced" the synthesis variants (NPOS-style outliers with the
# class-balanced uncertainty loss and 20 kept per class; the class-balanced loss alone);
# "vos_mlp" the released code's final head (branch main-MLP: an MLP on the weighted energy,
# trained with binary cross-entropy) ranked by the score that code evaluates with.
# "cider" and "siren" train the vanilla detector with an embedding loss instead of VOS, as
# their papers do, at the defaults of MODEL.EMBEDDING.CIDER / .SIREN (detection only); they
# are judged by their own test-time scores, "knn" for CIDER and "siren" or "knn_embedding"
# (SIREN-KNN) for SIREN.
# "vanilla_fc64" and "vos_fc64" narrow the box head's penultimate layer from 128 to 64, the
# width a re-implementation of VOS for classification found to work where wider ones failed.
METHODS = OrderedDict(
    [
        ("vanilla", _VANILLA),
        ("vos", []),
        (
            "vos_npos",
            ["MODEL.VOS.OUTLIER_SYNTHESIS", "npos", "MODEL.VOS.BALANCED_LOSS", "True", "MODEL.VOS.SELECT", "20"],
        ),
        ("vos_balanced", ["MODEL.VOS.BALANCED_LOSS", "True"]),
        ("vos_mlp", ["MODEL.VOS.UNCERTAINTY_HEAD", "mlp", "MODEL.OOD.SCORE", "vos_release"]),
        ("cider", [*_VANILLA, "MODEL.EMBEDDING.LOSSES", '["CIDERLoss"]']),
        ("siren", [*_VANILLA, "MODEL.EMBEDDING.LOSSES", '["SIRENLoss"]']),
        ("vanilla_fc64", [*_VANILLA, "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]),
        ("vos_fc64", ["MODEL.ROI_BOX_HEAD.FC_DIM", "64"]),
    ]
)
# The methods the classification task trains unless --methods names others.
CLASSIFICATION_METHODS = ("vanilla", "vos", "vos_npos")
# Methods of the box predictor's embedding losses, which the image classifier does not have.
DETECTION_ONLY_METHODS = ("cider", "siren")
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
# The two parts of the fused score, as its table names them.
FUSED_ROLES = ("logit part", "feature part")
# SAFE's FGSM pass costs about 0.7 s per training image on 2 CPU cores: it is fitted on 300
# of the 1200 (about 750 predicted boxes), which bounds a model's fit to minutes.
SAFE_FIT = ["MODEL.OOD.POST_HOC.SAFE.MAX_IMAGES", "300"]
TIMING_FILE = "leaderboard_seconds.json"  # in each model's folder: seconds spent training, fitting


# --- training ------------------------------------------------------------------------------


def _status(path, lines):
    if path:
        with open(path, "w") as f:
            f.write("# OOD leaderboard status\n\n" + time.strftime("Updated %H:%M:%S UTC\n\n", time.gmtime()))
            f.write("\n".join(f"- {line}" for line in lines) + "\n")


def _log(message):
    print(message, flush=True)


def _timing(model_dir):
    """The seconds recorded in a model's folder: {step: seconds}, empty when none were."""
    path = os.path.join(model_dir, TIMING_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _record_seconds(model_dir, step, seconds):
    timing = _timing(model_dir)
    timing[step] = seconds
    with open(os.path.join(model_dir, TIMING_FILE), "w") as f:
        json.dump(timing, f)


def train(model_dir, overrides, seed, env, task="detection"):
    """Train one (method, seed) of ``task`` unless its folder holds the task's DONE_FILE.

    A detector's end-of-training evaluation is skipped (its records are evaluated here); a
    classifier's is its result.
    """
    started = time.perf_counter()
    no_evaluation = ["DATASETS.TEST", "()", "DATASETS.OOD_TEST", "()"] if task == "detection" else []
    overrides = [*overrides, *no_evaluation]
    if train_in_child(CONFIG, overrides, seed, model_dir, env, log_name="leaderboard.log", done_file=DONE_FILE[task]):
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
    post_hoc = os.path.join(model_dir, POST_HOC_STATE_FILE)
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
    return ["MODEL.OOD.POST_HOC.STATE", post_hoc]


def train_missing(jobs, args, env):
    """Train, in order, every model of ``jobs`` whose folder lacks the task's DONE_FILE,
    keeping ``--status-file`` current.

    Returns:
        list[str]: "method/seed<k>" of every job (all trained now).
    """
    trained = []
    for index, (method, seed, model_dir) in enumerate(jobs):
        if not os.path.exists(os.path.join(model_dir, DONE_FILE[args.task])):
            queued = ", ".join(f"{m}/seed{s}" for m, s, _ in jobs[index + 1:]) or "none"
            _status(args.status_file, [f"trained: {', '.join(trained) or 'none'}",
                                       f"training now: {method}/seed{seed}", f"queued: {queued}"])
            _log(f"[{method} seed {seed}] training in {model_dir} ...")
            train(model_dir, args.known[method], seed, env, args.task)
        trained.append(f"{method}/seed{seed}")
    return trained


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
    when cached there with the same ``key`` (:func:`same_evaluation`), else from one inference
    pass per set (then cached).

    Returns:
        tuple[dict[str, DetectionRecords], OODRule]
    """
    folder = os.path.join(model_dir, "leaderboard", "records")
    paths = {name: os.path.join(folder, f"{name}.pth") for name in RECORD_SETS}
    cached = {}
    for name, path in paths.items():
        if os.path.exists(path):
            stored = torch.load(path, weights_only=False)  # written below: plain arrays and dicts
            if same_evaluation(stored["key"], key):
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


def evaluation_key(model_dir, overrides, posthoc_opts):
    """The key of a model's cached records and results: the config, its overrides, the
    post-hoc overrides, the modification times of the weights and post-hoc files, the sets."""
    weights = os.path.join(model_dir, "model_final.pth")
    return {
        "config": CONFIG,
        "overrides": list(overrides),
        "posthoc": list(posthoc_opts),
        "files_mtime": {
            path: os.path.getmtime(path) for path in [weights] + [p for p in posthoc_opts if os.path.isfile(p)]
        },
        "datasets": RECORD_SETS,
    }


def same_evaluation(stored, key):
    """Whether a cache entry's key ``stored`` (None when it has none) is :func:`evaluation_key`'s
    ``key``, whichever names of the moved config keys (MODEL.VOS.OOD_SCORE, now
    MODEL.OOD.SCORE, ...) either was written with: an entry cached before a key moved is
    still found."""
    if stored is None:
        return False
    layout_free = [
        {**k, "overrides": current_overrides(k["overrides"]), "posthoc": current_overrides(k["posthoc"])}
        for k in (stored, key)
    ]
    return layout_free[0] == layout_free[1]


def evaluate_cached(model_dir, overrides, protocols, posthoc_opts, rerun, log):
    """evaluate() unless ``<model>/leaderboard/<protocol>.json`` holds a result of the same
    weights, overrides and post-hoc files (:func:`same_evaluation`; ``rerun``: evaluate the
    cached records again); returns {protocol: summary}."""
    key = evaluation_key(model_dir, overrides, posthoc_opts)
    paths = {protocol: os.path.join(model_dir, "leaderboard", f"{protocol}.json") for protocol in protocols}
    cached = {}
    for protocol, path in paths.items():
        if os.path.exists(path) and not rerun:
            with open(path) as f:
                stored = json.load(f)
            if same_evaluation(stored.get("key"), key):
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


def target_verdict(rows, reference=REFERENCE, target=TARGET):
    """The pairs meeting ``target``: ``{"met_by": ["method/score", ...]}``, with a "note" when
    the table has no reference row."""
    if reference_row(rows, reference) is None:
        return {"met_by": [], "note": f"no {reference} row"}
    return {"met_by": target_met_by(rows, target, reference)}


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


# The rows of the "which score for which shift" table: metric key -> what the shift is.
SHIFTS = OrderedDict(
    [
        ("near_FPR95", "near-OOD FPR95: unseen digits 5-9"),
        ("far_matched_FPR95", "far-OOD FPR95: shapes drawn like the digits (meaning only)"),
        ("far_FPR95", "far-OOD FPR95: shapes drawn sharp (meaning and rendering)"),
        ("false_alarm", "covariate shift: % of ID boxes on new canvases flagged OOD"),
    ]
)


def _guide_cell(row, key, reference):
    """"method / score: mean ± half-width, Δ [low, high]" of one row's metric."""
    if row is None:
        return "-"
    text = f"{row['method']} / {row['score']}: {format_mean(row[key]['mean'])}"
    if (row["method"], row["score"]) != tuple(reference):
        text += f", Δ {format_difference(row[key]['diff'])}"
    return text


def shift_guide(rows, protocol, confidence=0.95, reference=REFERENCE):
    """Which score for which shift: per shift, the (method, score) of lowest mean on the
    reference's detector and over every method, with its paired difference.

    Returns:
        tuple[dict, str]: ``{metric key: {"reference_detector": "method/score", "any_method":
        "method/score"}}`` and the Markdown section.
    """
    keys = [key for key in SHIFTS if rows and rows[0].get(key) is not None]
    on_reference, anywhere = best_rows(rows, keys, methods=[reference[0]]), best_rows(rows, keys)
    ref = reference_row(rows, reference)
    cells, choices = [], OrderedDict()
    for key in keys:
        cells.append([SHIFTS[key], _guide_cell(ref, key, reference), _guide_cell(on_reference[key], key, reference),
                      _guide_cell(anywhere[key], key, reference)])
        choices[key] = {name: f"{row['method']}/{row['score']}" if row else None
                        for name, row in (("reference_detector", on_reference[key]), ("any_method", anywhere[key]))}
    title = (
        f"Which score for which shift (protocol {protocol}; lower is better): the (method, score) of "
        f"lowest mean over seeds, on the {reference[0]} detector (post-hoc scores, no retraining) and "
        f"over every method, with the paired difference against ({reference[0]}, {reference[1]}) "
        f"[{confidence:.0%} CI], * = CI excludes 0. The lowest mean is picked on the test splits: it describes "
        "this table, it is not a validated choice."
    )
    headers = ["shift", f"{reference[0]} / {reference[1]}", f"best on {reference[0]}", "best of all"]
    text = table(cells, headers, title=title)
    return choices, "\n".join([f"#### Which score for which shift (`{protocol}`)", "", title, "", text, ""])


def fused_parts(model_dir):
    """(logit part, feature part) of the fused score fitted for one model (its
    ``post_hoc_scores.pth``), or None when it has none."""
    path = os.path.join(model_dir, POST_HOC_STATE_FILE)
    if not os.path.exists(path):
        return None
    chosen = read_post_hoc_info(path).get("fused_validation", {}).get("chosen")
    return None if chosen is None else (chosen["logit_part"], chosen["feature_part"])


def fused_against_parts(per_model, parts, protocol, confidence=0.95):
    """The fused score against the better of its two parts, per method and shift (:data:`SHIFTS`).

    A seed's parts are the logit part and the feature part fitted for that model (they may
    differ between seeds); the better part of a shift is the role (logit or feature part)
    of lower mean over the method's seeds; Δ = paired difference fused - that part on the
    same seeds. The fused score is "not worse" where the interval of Δ reaches 0 or below.

    Args:
        per_model (dict): ``{method: {seed: {protocol: summary}}}``.
        parts (dict): ``{method: {seed: (logit part, feature part) or None}}``.
        protocol (str): which protocol's summaries to use.
        confidence (float): of every interval.

    Returns:
        tuple[list[dict], str]: the rows and the Markdown section ("" without rows).
    """
    rows = []
    for method, seeds in per_model.items():
        usable = [
            seed for seed, summaries in seeds.items()
            if protocol in summaries and parts.get(method, {}).get(seed) and "fused" in summaries[protocol]["scores"]
        ]
        if not usable:
            continue
        scores = [seeds[seed][protocol]["scores"] for seed in usable]
        chosen = [parts[method][seed] for seed in usable]
        for key in SHIFTS:
            fused = [table["fused"][key] for table in scores]
            by_role = {
                role: [table[names[index]][key] for table, names in zip(scores, chosen)]
                for index, role in enumerate(FUSED_ROLES)
            }
            better = min(FUSED_ROLES, key=lambda role: np.mean(by_role[role]))
            diff = paired_difference(fused, by_role[better], confidence)
            rows.append({
                "method": method, "shift": key, "seeds": list(usable),
                "parts": [list(names) for names in chosen], "better_part": better,
                "fused": mean_ci(fused, confidence).to_dict(), "better": mean_ci(by_role[better], confidence).to_dict(),
                "diff": diff.to_dict(), "not_worse": diff.low is not None and diff.low <= 0.0,
            })
    if not rows:
        return rows, ""
    cells = [
        [row["method"], SHIFTS[row["shift"]], str(len(row["seeds"])),
         ", ".join(sorted({" + ".join(names) for names in row["parts"]})), format_mean(row["fused"]),
         f"{row['better_part']}: {format_mean(row['better'])}", format_difference(row["diff"]),
         "yes" if row["not_worse"] else "no"]
        for row in rows
    ]
    title = (
        f"The fused score against the better of its two parts (protocol {protocol}; lower is better): per "
        "seed its parts are those fitted for that model; the better part is the role (logit or feature part) "
        f"of lower mean over seeds; Δ = paired difference fused - better part [{confidence:.0%} CI], * = CI "
        "excludes 0; not worse = the CI reaches 0 or below."
    )
    headers = ["method", "shift", "seeds", "parts (logit + feature)", "fused", "better part", "Δ", "not worse"]
    text = table(cells, headers, title=title)
    return rows, "\n".join([f"#### The fused score against its parts (`{protocol}`)", "", title, "", text, ""])


def leaderboard_tables(per_model, diagnostics, protocols, confidence=0.95, parts=None):
    """The tables of every protocol and of the training diagnostics (also printed).

    Args:
        per_model (dict): ``{method: {seed: {protocol: summary}}}``.
        diagnostics (dict): ``{method: {seed: training_diagnostics(...)}}``.
        protocols (list[str]): the tables to make, in order.
        confidence (float): of every interval.
        parts (dict, optional): ``{method: {seed: fused parts}}`` (:func:`fused_parts`), for
            :func:`fused_against_parts`.

    Returns:
        tuple[OrderedDict, str]: ``{protocol: {"title", "rows", "target", "shift_guide",
        "fused_against_parts"}}`` and the Markdown text of the results file.
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
        guide, guide_text = shift_guide(rows, protocol, confidence)
        fused_rows, fused_text = fused_against_parts(per_model, parts or {}, protocol, confidence)
        markdown += [f"### Protocol `{protocol}`", "", title, "", text, "", line, "", guide_text]
        markdown += [fused_text] if fused_text else []
        tables[protocol] = {
            "title": title, "rows": rows, "target": verdict, "shift_guide": guide, "fused_against_parts": fused_rows
        }
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


# --- the detection task's results ---------------------------------------------------------


def evaluate_detectors(jobs, args, env, trained):
    """Fit the post-hoc scores of every trained detector of ``jobs`` and evaluate it (cached).

    Args:
        jobs (list[tuple[str, int, str]]): (method, seed, model folder) of every model.
        args (argparse.Namespace): of :func:`parse_arguments`.
        env (dict): the environment of the fitting subprocesses.
        trained (list[str]): "method/seed<k>" of the trained models, for the status file.

    Returns:
        tuple[OrderedDict, OrderedDict]: ``{method: {seed: {protocol: summary}}}`` and
        ``{"method/seed<k>": {step: seconds}}``.
    """
    per_model, timing = OrderedDict(), OrderedDict()
    for method, seed, model_dir in jobs:
        _status(args.status_file, [f"trained: {', '.join(trained)}", f"evaluating now: {method}/seed{seed}"])
        overrides = args.known[method]
        posthoc_opts = fit_posthoc(model_dir, overrides, env)
        summaries = evaluate_cached(model_dir, overrides, args.protocols, posthoc_opts, args.rerun, _log)
        per_model.setdefault(method, OrderedDict())[seed] = summaries
        timing[f"{method}/seed{seed}"] = {
            **_timing(model_dir), "evaluate": sum(summary["seconds"] for summary in summaries.values())
        }
    _status(args.status_file, [f"trained: {', '.join(trained)}", "evaluation finished; nothing running"])
    return per_model, timing


def detection_results(jobs, args, env, trained):
    """The detection task's results: :func:`evaluate_detectors`, the training diagnostics and
    the tables of every protocol.

    Returns:
        tuple[dict, str, OrderedDict]: the task's entries of the results JSON, its Markdown
        text and ``{"method/seed<k>": {step: seconds}}``.
    """
    per_model, timing = evaluate_detectors(jobs, args, env, trained)
    diagnostics = OrderedDict(
        (method, OrderedDict((seed, training_diagnostics(model_dir)) for m, seed, model_dir in jobs if m == method))
        for method in args.methods
    )
    parts = OrderedDict()
    for method, seed, model_dir in jobs:
        parts.setdefault(method, OrderedDict())[seed] = fused_parts(model_dir)
    tables, markdown = leaderboard_tables(per_model, diagnostics, args.protocols, args.confidence, parts)
    entries = {
        "protocols": {name: PROTOCOLS[name] for name in args.protocols},
        "tables": tables,
        "training_diagnostics": diagnostics,
        "per_model": per_model,
    }
    return entries, markdown, timing


# --- the classification task --------------------------------------------------------------

CLASSIFICATION_TEST, CLASSIFICATION_OOD = "digits_cls_test", "digits_cls_ood"
# Metric columns, each with its paired difference against REFERENCE; accuracy is the model's.
CLASSIFICATION_METRICS = [
    SeedMetric("accuracy", "accuracy", of_model=True),
    SeedMetric("FPR95", "FPR95"),
    SeedMetric("AUROC", "AUROC"),
]
# FPR95 lowered by >= 30% relative to the reference, the paired interval below 0; accuracy
# within 1 point.
CLASSIFICATION_TARGET = SeedTarget(lowered=("FPR95",), kept=("accuracy",))
CLASSIFICATION_PROTOCOL = (
    "every image of each set scored (the whole image is the one box); FPR95 with ID as the "
    "positive class, at the first ROC point keeping >= 95% of ID images"
)


def classifier_summary(results_path):
    """{score: {"accuracy", "FPR95", "AUROC"}} of one trained classifier's ood_results.json."""
    with open(results_path) as f:
        results = json.load(f)["results"]
    accuracy = results[CLASSIFICATION_TEST]["classification"]["accuracy"]
    return {
        score: {"accuracy": accuracy, "FPR95": metrics["FPR95"], "AUROC": metrics["AUROC"]}
        for score, metrics in results["ood"][CLASSIFICATION_TEST][CLASSIFICATION_OOD].items()
    }


def classification_tables(per_model, confidence=0.95):
    """The rows, the target's verdict and the Markdown text of the classification task.

    Args:
        per_model (dict): ``{method: {seed: classifier_summary(...)}}``.
        confidence (float): of every interval.

    Returns:
        tuple[list[dict], dict, str]: the rows of
        :func:`vos_det.evaluation.seed_table.seed_table_rows`, :func:`target_verdict` of
        :data:`CLASSIFICATION_TARGET`, and the text (also printed).
    """
    rows = seed_table_rows(per_model, CLASSIFICATION_METRICS, REFERENCE, confidence)
    verdict = target_verdict(rows, REFERENCE, CLASSIFICATION_TARGET)
    cells, headers = format_seed_table(rows, CLASSIFICATION_METRICS, REFERENCE)
    seeds = sorted({seed for summaries in per_model.values() for seed in summaries})
    title = (
        f"digits-cls, seeds {','.join(map(str, seeds))}: mean ± {confidence:.0%} CI; paired difference "
        f"against {REFERENCE[0]} {REFERENCE[1]} [{confidence:.0%} CI], * = excludes 0. "
        f"Protocol: {CLASSIFICATION_PROTOCOL}."
    )
    line = "Target (FPR95 -30% relative, paired CI below 0, accuracy within 1 point): met by " + (
        ", ".join(verdict["met_by"]) or "no (method, score) pair"
    ) + "."
    text = table(cells, headers, title=title)
    print(line)
    return rows, verdict, title + "\n\n" + text + "\n\n" + line + "\n"


def classification_results(jobs, confidence=0.95):
    """The classification task's results, read from each trained model's ood_results.json.

    Args:
        jobs (list[tuple[str, int, str]]): (method, seed, model folder) of every model.
        confidence (float): of every interval.

    Returns:
        tuple[dict, str, OrderedDict]: the task's entries of the results JSON, its Markdown
        text and ``{"method/seed<k>": {step: seconds}}``.
    """
    per_model, timing = OrderedDict(), OrderedDict()
    for method, seed, model_dir in jobs:
        summary = classifier_summary(os.path.join(model_dir, DONE_FILE["classification"]))
        per_model.setdefault(method, OrderedDict())[seed] = summary
        timing[f"{method}/seed{seed}"] = _timing(model_dir)
    rows, verdict, markdown = classification_tables(per_model, confidence)
    entries = {"protocol": CLASSIFICATION_PROTOCOL, "rows": rows, "target": verdict, "per_model": per_model}
    return entries, markdown, timing


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


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", default="detection", choices=TASKS,
        help="detection: the digits-det leaderboard (default); classification: the digits-cls study",
    )
    parser.add_argument(
        "--methods", default=None,
        help=f"comma-separated training methods (default: all known; {','.join(CLASSIFICATION_METHODS)} "
        "and those of --methods-file for classification)",
    )
    parser.add_argument("--methods-file", default=None, help="extra methods, one 'name KEY VALUE ...' per line")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0-4)")
    parser.add_argument(
        "--protocols", default=None, help=f"detection: comma-separated subset of {list(PROTOCOLS)} (default all)"
    )
    parser.add_argument(
        "--detector", default=None, choices=list(DETECTORS),
        help="detection: the benchmark detector (default tiny): "
        + ", ".join(f"{name} ({config})" for name, config in DETECTORS.items()),
    )
    parser.add_argument(
        "--output-root", default=None,
        help="where the models are trained (default output/leaderboard, output/leaderboard_<detector> for "
        "other detectors, output/digits_cls_seeds for classification)",
    )
    parser.add_argument(
        "--output", default=None,
        help="JSON file, .md next to it (default benchmarks/results/ood_leaderboard[_<detector>].json, "
        "benchmarks/results/digits_cls_seeds.json for classification)",
    )
    parser.add_argument("--train-only", action="store_true", help="train what is missing, evaluate nothing")
    parser.add_argument(
        "--skip-untrained", action="store_true",
        help="train nothing: evaluate and tabulate the models that exist (e.g. while another run trains)",
    )
    parser.add_argument(
        "--rerun", action="store_true", help="detection: evaluate the cached records again (models are not run)"
    )
    parser.add_argument("--status-file", default=None, help="a Markdown file kept up to date with the progress")
    parser.add_argument("--confidence", type=float, default=0.95, help="coverage of the intervals")
    parser.add_argument(
        "--train-threads", type=int, default=None,
        help="OMP_NUM_THREADS of the trainings (1 is faster on a loaded 2-core machine)",
    )
    return parser


# The options of the detection task, with their values when not given.
_DETECTION_OPTIONS = {"detector": None, "protocols": None, "rerun": False}


def parse_arguments(argv=None):
    """The command line with the task's defaults filled in; a parser error when it is wrong.

    Returns:
        argparse.Namespace: the options, with ``config`` (the task's VOS config), ``known``
        (every method: name -> overrides), ``methods``, ``protocols`` (none for
        classification) and ``seeds`` as lists, ``output`` and ``output_root`` set.
    """
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.task == "classification":
        given = [f"--{name}" for name, unset in _DETECTION_OPTIONS.items() if getattr(args, name) != unset]
        if given:
            parser.error(f"{', '.join(given)}: option(s) of --task detection only")
        args.config, default_methods, args.protocols = CLASSIFIER_CONFIG, list(CLASSIFICATION_METHODS), []
        root = output = "digits_cls_seeds"
    else:
        args.detector = args.detector or "tiny"
        args.config, default_methods = DETECTORS[args.detector], list(METHODS)
        suffix = "" if args.detector == "tiny" else f"_{args.detector}"
        root, output = f"leaderboard{suffix}", f"ood_leaderboard{suffix}"
        args.protocols = args.protocols.split(",") if args.protocols else list(PROTOCOLS)
        unknown = [name for name in args.protocols if name not in PROTOCOLS]
        if unknown:
            parser.error(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    args.output_root = args.output_root or str(REPO_ROOT / "output" / root)
    args.output = args.output or str(RESULTS_DIR / f"{output}.json")
    args.known = OrderedDict(METHODS)
    if args.methods_file:
        extra = read_methods_file(args.methods_file)
        args.known.update(extra)
        default_methods += [name for name in extra if name not in default_methods]
    args.methods = args.methods.split(",") if args.methods else default_methods
    unknown = [name for name in args.methods if name not in args.known]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; known: {list(args.known)} (add some with --methods-file)")
    detection_only = [name for name in args.methods if name in DETECTION_ONLY_METHODS]
    if args.task == "classification" and detection_only:
        parser.error(f"method(s) {detection_only} of --task detection only (the image classifier has no embedding losses)")
    if args.train_only and args.skip_untrained:
        parser.error("--train-only and --skip-untrained exclude each other")
    args.seeds = parse_seeds(parser, args.seeds)
    return args


def main(argv=None):
    args = parse_arguments(argv)
    global CONFIG
    CONFIG = args.config
    env = training_env(args.train_threads)
    started = time.perf_counter()
    # Seed-major order: an interrupted run leaves every method with about as many seeds.
    jobs = [
        (method, seed, os.path.join(args.output_root, method, f"seed{seed}"))
        for seed in args.seeds
        for method in args.methods
    ]
    if args.skip_untrained:
        jobs = [job for job in jobs if os.path.exists(os.path.join(job[2], DONE_FILE[args.task]))]
    trained = train_missing(jobs, args, env)
    if args.train_only:
        _status(args.status_file, [f"trained: {', '.join(trained)}", "training finished; nothing running"])
        return
    if args.task == "detection":
        entries, markdown, timing = detection_results(jobs, args, env, trained)
    else:
        entries, markdown, timing = classification_results(jobs, args.confidence)
    command = sys.argv[1:] if argv is None else list(argv)
    payload = {
        "machine": machine_info("cpu"),
        "command": " ".join([os.path.relpath(__file__, REPO_ROOT), *command]),
        "task": args.task,
        "config": CONFIG,
        "methods": {name: args.known[name] for name in args.methods},
        "seeds": args.seeds,
        "reference": list(REFERENCE),
        "confidence": args.confidence,
        **entries,
        "seconds": {"this_run": time.perf_counter() - started, "per_model": timing},
    }
    # Every model's summaries under both protocols: indented, five methods already passed 2 MiB.
    write_json(args.output, payload, indent=0)
    md_path = os.path.splitext(args.output)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown)
    print(f"wrote {md_path}")
    if args.task == "detection":
        print(f"wrote {plot_leaderboard_forest(payload, forest_path(args.output))}")


if __name__ == "__main__":
    main()
