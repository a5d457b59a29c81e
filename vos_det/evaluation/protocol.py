"""The VOS OOD-detection evaluation protocol of detectors: records in, report out.

This is the detection front of the OOD evaluation; the back half, shared with image
classification, is :func:`vos_det.evaluation.report.summarize_ood_evaluation`. It takes
the :class:`~.records.DetectionRecords` of one inference pass per dataset
(:func:`~.records.collect_detections`: ID test sets with their detection metrics, OOD sets,
and the calibration set), never a model:

1. ID detection quality is the records' ``detection_metrics`` (COCO-style AP / AP50 / AP75
   and, for VOC-format sets, the VOC AP).
2. The protocol's box selection (``TEST.OOD.PROTOCOL``, see :mod:`.box_selection`) is
   resolved on each ID set to a score threshold; the detections of the ID set and of every
   OOD set whose score reaches it are kept ("vos_official": the proposal's maximum
   foreground probability against the released code's threshold; "vos_det": the class
   score against ``TEST.OOD.BOX_SELECTION``'s).
3. With ``TEST.OOD.CALIBRATION_DATASET``, the OOD threshold of the model's score (and one
   threshold per other score) is calibrated on the kept boxes of that ID validation set; the
   engine stores it in the model (:mod:`vos_det.engine.ood_evaluation`).
4. The back half: for each (ID set, OOD set) pair and each OOD score, FPR95 (ID positive; the
   ROC point closest to 95% ID recall under "vos_official", ``TEST.OOD.FPR95_METHOD`` under
   "vos_det"), AUROC, AUPR-In, AUPR-Out and the OOD-positive FPR95; the share of each set's
   kept boxes every score flags at its calibrated threshold; the table is printed and written
   to JSON, the ROC curves and histograms to PNG.
"""
import logging
import os
from collections import OrderedDict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..data.catalog import get_ood_role
from .box_selection import PROTOCOL_DESCRIPTIONS, PROTOCOLS, select_boxes_for_config
from .calibration import calibrate
from .plots import plot_detection_examples, plot_failure_gallery, safe_file_name
from .report import OOD_RESULTS_FILE, PLOTS_DIR, Comparison, ScoredSet, summarize_ood_evaluation
from ..metrics import FPR_METHODS

# OOD_RESULTS_FILE and PLOTS_DIR: the files evaluate_ood writes, named here too.
__all__ = ["OOD_RESULTS_FILE", "PLOTS_DIR", "check_calibration_set", "evaluate_ood", "fpr95_method"]

logger = logging.getLogger(__name__)


def fpr95_method(cfg) -> str:
    """How the config's protocol reads FPR95 off the ROC curve (one of FPR_METHODS)."""
    protocol = cfg.TEST.OOD.PROTOCOL
    if protocol not in PROTOCOLS:
        raise ValueError(f"TEST.OOD.PROTOCOL must be one of {PROTOCOLS}, got {protocol!r}")
    method = "official_closest" if protocol == "vos_official" else cfg.TEST.OOD.FPR95_METHOD
    if method not in FPR_METHODS:
        raise ValueError(f"TEST.OOD.FPR95_METHOD must be one of {FPR_METHODS}, got {method!r}")
    return method


def check_calibration_set(dataset_name):
    """Refuse a calibration set that is not an ID set (before any inference pass)."""
    role = get_ood_role(dataset_name)
    if role != "id":
        raise ValueError(f"calibration set {dataset_name!r} has ood_role {role!r}; it must be an ID set")


def _calibrate(cfg, records, dataset_name, selection, ood_rule):
    """The calibration on the boxes of an ID validation set kept by its own box selection."""
    if ood_rule is None:
        raise ValueError(
            f"TEST.OOD.CALIBRATION_DATASET {dataset_name!r}: calibration needs the score behind the "
            "model's is_ood, and the model has no VOS OOD head"
        )
    return calibrate(
        selection.apply(records).ood_score_table,
        ood_rule.ood_score,
        cfg.TEST.OOD.CALIBRATION_ID_KEEP,
        dataset=dataset_name,
        box_selection=selection.describe(),
        protocol=selection.protocol,
    )


def _box_counts(comparison):
    """Per set of a comparison: its images, detections and the detections kept."""
    return {
        name: {"images": kept.num_images, "detections": kept.num_candidates, "selected": kept.num_kept}
        for name, kept in comparison.sets.items()
    }


def _kept(records, selection):
    """The boxes of ``records`` that ``selection`` keeps, as the back half's ScoredSet."""
    kept = selection.apply(records)
    return ScoredSet(kept.ood_score_table, len(kept), len(records), records.num_images)


def _verdict_rule(ood_rule, calibration):
    """(score, threshold) behind ``is_ood``: the new calibration's, else the model's; None for
    a model without a VOS OOD head."""
    if calibration is not None:
        return calibration.ood_score, float(calibration.threshold)
    if ood_rule is None:
        return None
    return ood_rule.ood_score, ood_rule.threshold


def _image_files(dataset_name):
    """image id -> file name of a registered dataset."""
    return {d["image_id"]: d["file_name"] for d in DatasetCatalog.get(dataset_name)}


def draw_pictures(ood_rule, records, selections, ood_datasets, plots_dir, calibration=None):
    """The failure gallery and the detection examples of every (ID set, OOD set) pair.

    Args:
        ood_rule (OODRule or None): the model's is_ood rule (it labels the pictures).
        records (dict[str, DetectionRecords]): every detection of each set.
        selections (dict[str, BoxSelection]): the box selection of each ID set.
        ood_datasets (list[str]): the OOD sets.
        plots_dir (str): where ``gallery__<id>__<ood>.png`` and ``examples__<id>__<ood>.png`` go.
        calibration (Calibration, optional): the threshold calibrated in this evaluation.

    Returns:
        list[str]: the paths written.
    """
    rule = _verdict_rule(ood_rule, calibration)
    if rule is None:
        return []
    score, threshold = rule
    paths = []
    for id_name, selection in selections.items():
        class_names = MetadataCatalog.get(id_name).get("thing_classes", [])
        id_kept, id_files = selection.apply(records[id_name]), _image_files(id_name)
        for ood_name in ood_datasets:
            ood_kept = selection.apply(records[ood_name])
            common = {
                "score": score, "id_files": id_files, "ood_files": _image_files(ood_name),
                "class_names": class_names, "id_name": id_name, "ood_name": ood_name,
            }
            stem = safe_file_name(id_name, ood_name)
            paths.append(
                plot_failure_gallery(id_kept, ood_kept, os.path.join(plots_dir, f"gallery__{stem}.png"), **common)
            )
            paths.append(
                plot_detection_examples(
                    id_kept, ood_kept, os.path.join(plots_dir, f"examples__{stem}.png"), threshold=threshold, **common
                )
            )
    return [path for path in paths if path is not None]


def _check_sets(records_by_set, id_datasets, ood_datasets, calibration_dataset):
    """Every set has records; warn about OOD sets whose role is not "ood"."""
    for name, role in ((name, get_ood_role(name)) for name in ood_datasets):
        if role != "ood":
            logger.warning("OOD test set %s has ood_role %r", name, role)
    if calibration_dataset:
        check_calibration_set(calibration_dataset)
    missing = [
        name for name in id_datasets + ood_datasets + ([calibration_dataset] if calibration_dataset else [])
        if name not in records_by_set
    ]
    if missing:
        raise ValueError(f"no detection records of {missing} (collect_detections of each set first)")


def evaluate_ood(records_by_set, cfg, *, ood_rule=None, log_report=True):
    """Evaluate the detections of every set (see the module doc) and write the report.

    Args:
        records_by_set (dict[str, DetectionRecords]): the records of every set of
            ``DATASETS.TEST`` (with their ``detection_metrics``), ``DATASETS.OOD_TEST`` and
            ``TEST.OOD.CALIBRATION_DATASET``.
        cfg (CfgNode): the config: those sets, the ``TEST.OOD`` keys and ``OUTPUT_DIR``
            (where ``ood_results.json`` and ``ood_plots/`` go).
        ood_rule (OODRule, optional): the evaluated model's ``is_ood`` rule
            (:func:`vos_det.engine.ood_evaluation.ood_rule_of`): the score calibrated on,
            and the threshold the pictures mark; None for a model without OOD head.
        log_report (bool): log the text report (main process).

    Returns:
        tuple[OrderedDict, dict]: ``results``, a nested dict of floats (EvalHook-safe):
        ``{id_set: {"bbox": ..., "voc": ...}, "ood": {id_set: {ood_set: {score: metrics}}},
        "box_selection": {id_set: {"score_threshold": t}}, "calibration": {...}}``; and
        ``report``, everything written to ``ood_results.json`` (rule descriptions,
        conventions, box counts, calibration, plot paths).
    """
    id_datasets, ood_datasets = list(cfg.DATASETS.TEST), list(cfg.DATASETS.OOD_TEST)
    calibration_dataset = cfg.TEST.OOD.CALIBRATION_DATASET
    protocol, fpr_method = cfg.TEST.OOD.PROTOCOL, fpr95_method(cfg)
    _check_sets(records_by_set, id_datasets, ood_datasets, calibration_dataset)
    selections = OrderedDict((name, select_boxes_for_config(cfg, records_by_set[name], name)) for name in id_datasets)
    calibration = None
    if calibration_dataset:
        selection = selections.get(calibration_dataset) or select_boxes_for_config(
            cfg, records_by_set[calibration_dataset], calibration_dataset
        )
        calibration = _calibrate(cfg, records_by_set[calibration_dataset], calibration_dataset, selection, ood_rule)

    comparisons = [
        Comparison(
            id_name,
            OrderedDict((name, _kept(records_by_set[name], selection)) for name in [id_name] + ood_datasets),
            ood_datasets,
            "Box selection: " + selection.describe(),
        )
        for id_name, selection in selections.items()
    ]
    pictures = []
    if cfg.TEST.OOD.PLOTS and comm.is_main_process():
        plots_dir = os.path.join(cfg.OUTPUT_DIR, PLOTS_DIR)
        pictures = draw_pictures(ood_rule, records_by_set, selections, ood_datasets, plots_dir, calibration)
    return summarize_ood_evaluation(
        comparisons,
        unit="boxes",
        fpr_method=fpr_method,
        ood_rule=ood_rule,
        output_dir=cfg.OUTPUT_DIR,
        results=OrderedDict((name, dict(records_by_set[name].detection_metrics)) for name in id_datasets),
        results_tail={
            "box_selection": {name: {"score_threshold": float(s.score_threshold)} for name, s in selections.items()}
        },
        report_head={"protocol": {"name": protocol, "description": PROTOCOL_DESCRIPTIONS[protocol]}},
        selection_report={
            "box_selection": {name: s.to_dict() for name, s in selections.items()},
            "boxes": {c.id_name: _box_counts(c) for c in comparisons},
            "pictures": pictures,
        },
        calibration=calibration,
        draw_plots=cfg.TEST.OOD.PLOTS,
        log_report=log_report,
    )
