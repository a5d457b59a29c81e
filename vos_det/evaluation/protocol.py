"""The VOS OOD-detection evaluation protocol, shared by ``Trainer.test`` and tools/ood_eval.py.

1. One inference pass per dataset (ID test sets, OOD sets, and the calibration set if any)
   records every detection with its class score and all its OOD scores.
2. ID detection quality comes from the detection evaluators of the same pass (COCO-style
   AP / AP50 / AP75 and, for VOC-format sets, the VOC AP).
3. The protocol's box selection (``TEST.OOD.PROTOCOL``, see :mod:`.box_selection`) is
   resolved on each ID set to a score threshold; the detections of the ID set and of every
   OOD set whose score reaches it are kept ("vos_official": the proposal's maximum
   foreground probability against the released code's threshold; "vos_det": the class
   score against ``TEST.OOD.BOX_SELECTION``'s).
4. For each (ID set, OOD set) pair and each OOD score: FPR95 (ID positive; the ROC point
   closest to 95% ID recall under "vos_official", ``TEST.OOD.FPR95_METHOD`` under
   "vos_det"), AUROC, AUPR-In, AUPR-Out and the OOD-positive FPR95.
5. Optionally the OOD threshold is calibrated on an ID validation set and saved with the
   model; the table is printed and written to JSON, the ROC curves and histograms to PNG.
"""
import logging
import os
from collections import OrderedDict

import numpy as np

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.utils import comm

from .box_scores import collect_detections
from .box_selection import PROTOCOL_DESCRIPTIONS, PROTOCOLS, select_boxes_for_config
from .calibration import CALIBRATED_MODEL_FILE, THRESHOLD_FILE, calibrate_on_dataset, find_ood_head
from .detection import build_detection_evaluator
from .ood_metrics import FPR_METHODS, ood_metrics
from .plots import plot_roc_curves, plot_score_histograms, safe_file_name
from .report import format_ood_report, write_json

__all__ = ["FPR95_CONVENTION", "OOD_RESULTS_FILE", "PLOTS_DIR", "evaluate_ood_protocol", "fpr95_method"]

logger = logging.getLogger(__name__)

OOD_RESULTS_FILE = "ood_results.json"
PLOTS_DIR = "ood_plots"
FPR95_CONVENTION = (
    "FPR95: ID is the positive class, the percentage of OOD boxes accepted as ID at the "
    "threshold that keeps 95% of ID boxes; larger OOD score = more OOD"
)
_FPR_METHOD_TEXT = {
    "first_at_least": "read at the first ROC point keeping >= 95% of ID boxes",
    "official_closest": "read at the ROC point whose ID recall is closest to 95% (official VOS code)",
}
_OOD_POSITIVE_TEXT = (
    "FPR95 (OOD pos.): OOD is the positive class (OpenOOD convention), the percentage of ID "
    "boxes flagged OOD at the threshold that catches 95% of OOD boxes"
)


def fpr95_method(cfg) -> str:
    """How the config's protocol reads FPR95 off the ROC curve (one of FPR_METHODS)."""
    protocol = cfg.TEST.OOD.PROTOCOL
    if protocol not in PROTOCOLS:
        raise ValueError(f"TEST.OOD.PROTOCOL must be one of {PROTOCOLS}, got {protocol!r}")
    method = "official_closest" if protocol == "vos_official" else cfg.TEST.OOD.FPR95_METHOD
    if method not in FPR_METHODS:
        raise ValueError(f"TEST.OOD.FPR95_METHOD must be one of {FPR_METHODS}, got {method!r}")
    return method


def _numeric(metrics):
    """The float entries of a metrics dict (detectron2's EvalHook accepts only numbers)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))}


def _pair_metrics(id_scores, ood_scores, fpr_method, skipped, pair):
    """OOD metrics per score of one pair; records why a score could not be evaluated."""
    metrics = {}
    for name in sorted(set(id_scores) & set(ood_scores)):
        id_values = id_scores[name][~np.isnan(id_scores[name])]
        ood_values = ood_scores[name][~np.isnan(ood_scores[name])]
        dropped = (id_scores[name].size - id_values.size) + (ood_scores[name].size - ood_values.size)
        if dropped:
            logger.warning("%s, score %s: %d NaN score(s) left out", pair, name, dropped)
        if not id_values.size or not ood_values.size:
            skipped.append(
                f"{pair}, score {name}: {id_values.size} ID and {ood_values.size} OOD boxes kept"
            )
            continue
        metrics[name] = _numeric(ood_metrics(id_values, ood_values, fpr_method=fpr_method))
    return metrics


def evaluate_ood_protocol(
    cfg,
    model,
    *,
    output_dir,
    id_datasets=None,
    ood_datasets=None,
    build_test_loader=None,
    detection_evaluators=None,
    build_evaluator=None,
    calibration_dataset=None,
    draw_plots=None,
    log_report=True,
):
    """Run the whole protocol (see the module doc) and write its files.

    Args:
        cfg (CfgNode): the config (``TEST.OOD`` keys, ``DATASETS.TEST`` / ``OOD_TEST``).
        model (nn.Module): the detector.
        output_dir (str): where ``ood_results.json``, ``ood_plots/``, the COCO conversions
            (``inference/<set>/``) and the calibrated model go.
        id_datasets (list[str], optional): ID test sets; ``cfg.DATASETS.TEST`` by default.
        ood_datasets (list[str], optional): OOD sets; ``cfg.DATASETS.OOD_TEST`` by default.
        build_test_loader (callable, optional): ``(cfg, name) -> loader``.
        detection_evaluators (list, optional): a detection evaluator (or None) per ID set.
        build_evaluator (callable, optional): ``name -> DatasetEvaluator`` for the ID sets
            without one; :func:`build_detection_evaluator` by default.
        calibration_dataset (str, optional): ID validation set to calibrate the OOD threshold
            on; ``cfg.TEST.OOD.CALIBRATION_DATASET`` by default ("" = no calibration).
        draw_plots (bool, optional): ``cfg.TEST.OOD.PLOTS`` by default.
        log_report (bool): log the text report (main process).

    Returns:
        tuple[OrderedDict, dict]: ``results``, a nested dict of floats (EvalHook-safe):
        ``{id_set: {"bbox": ..., "voc": ...}, "ood": {id_set: {ood_set: {score: metrics}}},
        "box_selection": {id_set: {"score_threshold": t}}, "calibration": {...}}``; and
        ``report``, everything written to ``ood_results.json`` (rule descriptions,
        conventions, box counts, calibration, plot paths).
    """
    id_datasets = list(cfg.DATASETS.TEST if id_datasets is None else id_datasets)
    ood_datasets = list(cfg.DATASETS.OOD_TEST if ood_datasets is None else ood_datasets)
    build_test_loader = build_test_loader or build_detection_test_loader
    if calibration_dataset is None:
        calibration_dataset = cfg.TEST.OOD.CALIBRATION_DATASET
    draw_plots = cfg.TEST.OOD.PLOTS if draw_plots is None else draw_plots
    protocol = cfg.TEST.OOD.PROTOCOL
    fpr_method = fpr95_method(cfg)
    if detection_evaluators is not None and len(detection_evaluators) != len(id_datasets):
        raise ValueError(
            f"got {len(detection_evaluators)} evaluators for {len(id_datasets)} ID test sets"
        )
    if build_evaluator is None:
        def build_evaluator(name):
            return build_detection_evaluator(name, os.path.join(output_dir, "inference", name))

    for name in ood_datasets:
        role = MetadataCatalog.get(name).get("ood_role", None)
        if role not in (None, "ood"):
            logger.warning("OOD test set %s has ood_role %r", name, role)

    results = OrderedDict()
    id_records = OrderedDict()
    for index, name in enumerate(id_datasets):
        evaluator = detection_evaluators[index] if detection_evaluators is not None else None
        evaluator = evaluator if evaluator is not None else build_evaluator(name)
        loader = build_test_loader(cfg, name)
        detection_results, id_records[name] = collect_detections(model, loader, evaluator)
        results[name] = {
            task: _numeric(values) for task, values in detection_results.items() if isinstance(values, dict)
        }
    ood_records = OrderedDict(
        (name, collect_detections(model, build_test_loader(cfg, name))[1]) for name in ood_datasets
    )

    calibration = None
    if calibration_dataset:
        calibration = calibrate_on_dataset(
            cfg,
            model,
            calibration_dataset,
            records=id_records.get(calibration_dataset),
            build_test_loader=build_test_loader,
            output_dir=output_dir,
        )

    selections = OrderedDict(
        (name, select_boxes_for_config(cfg, records, name)) for name, records in id_records.items()
    )
    boxes, skipped, ood_results = {}, [], {}
    selected_scores = {}
    for id_name, selection in selections.items():
        kept = OrderedDict(
            [(id_name, selection.apply(id_records[id_name]))]
            + [(ood_name, selection.apply(records)) for ood_name, records in ood_records.items()]
        )
        all_records = {id_name: id_records[id_name], **ood_records}
        boxes[id_name] = {
            name: {
                "images": all_records[name].num_images,
                "detections": len(all_records[name]),
                "selected": len(records),
            }
            for name, records in kept.items()
        }
        selected_scores[id_name] = {name: records.ood_scores for name, records in kept.items()}
        if ood_datasets:
            ood_results[id_name] = {
                ood_name: _pair_metrics(
                    kept[id_name].ood_scores,
                    kept[ood_name].ood_scores,
                    fpr_method,
                    skipped,
                    f"ID {id_name} vs OOD {ood_name}",
                )
                for ood_name in ood_records
            }
    if ood_datasets:
        results["ood"] = ood_results
    results["box_selection"] = {
        name: {"score_threshold": float(s.score_threshold)} for name, s in selections.items()
    }

    report = {
        "protocol": {"name": protocol, "description": PROTOCOL_DESCRIPTIONS[protocol]},
        "results": results,
        "convention": f"{FPR95_CONVENTION} ({_FPR_METHOD_TEXT[fpr_method]}). {_OOD_POSITIVE_TEXT}.",
        "box_selection": {name: s.to_dict() for name, s in selections.items()},
        "boxes": boxes,
        "skipped": skipped,
    }
    if calibration is not None:
        calibration_report = calibration.to_dict()
        calibration_report["description"] = calibration.describe()
        score = calibration.ood_score
        calibration_report["id_kept"] = {
            id_name: float(np.mean(scores[id_name][score] <= calibration.threshold))
            for id_name, scores in selected_scores.items()
            if len(scores[id_name].get(score, ()))
        }
        calibration_report["ood_flagged"] = {
            id_name: {
                name: float(np.mean(values[score] > calibration.threshold))
                for name, values in scores.items()
                if name != id_name and len(values.get(score, ()))
            }
            for id_name, scores in selected_scores.items()
        }
        if comm.is_main_process():
            calibration_report["files"] = {
                "model": os.path.join(output_dir, CALIBRATED_MODEL_FILE),
                "json": os.path.join(output_dir, THRESHOLD_FILE),
            }
        report["calibration"] = calibration_report
        results["calibration"] = {
            "threshold": float(calibration.threshold),
            "kept_percent": 100.0 * calibration.kept_fraction,
        }

    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        if draw_plots and ood_datasets:
            report["plots"] = _draw(
                os.path.join(output_dir, PLOTS_DIR), selected_scores, selections, calibration, model
            )
        write_json(report, os.path.join(output_dir, OOD_RESULTS_FILE))
        if log_report:
            logger.info("OOD evaluation:\n%s", format_ood_report(report))
    return results, report


def _without_nan(scores):
    return {name: values[~np.isnan(values)] for name, values in scores.items()}


def _draw(plots_dir, selected_scores, selections, calibration, model):
    """ROC and histogram PNGs of every (ID set, OOD set) pair; returns their paths."""
    calibrated = None
    if calibration is not None:
        calibrated = (calibration.ood_score, calibration.threshold)
    else:
        try:
            head = find_ood_head(model)
            stored = float(head.calibrated_ood_threshold)
            if np.isfinite(stored):
                calibrated = (head.ood_score, stored)
        except TypeError:
            pass
    paths = []
    for id_name, per_set in selected_scores.items():
        subtitle = "Box selection: " + selections[id_name].describe()
        for ood_name, ood_scores in per_set.items():
            if ood_name == id_name:
                continue
            id_scores = _without_nan(per_set[id_name])
            ood_scores = _without_nan(ood_scores)
            if not any(len(v) for v in id_scores.values()) or not any(len(v) for v in ood_scores.values()):
                continue
            stem = safe_file_name(id_name, ood_name)
            paths.append(
                plot_roc_curves(
                    id_scores, ood_scores, os.path.join(plots_dir, f"roc__{stem}.png"),
                    id_name=id_name, ood_name=ood_name, subtitle=subtitle,
                )
            )
            paths.append(
                plot_score_histograms(
                    id_scores, ood_scores, os.path.join(plots_dir, f"histograms__{stem}.png"),
                    id_name=id_name, ood_name=ood_name, calibrated=calibrated, subtitle=subtitle,
                )
            )
    return paths
