"""The VOS OOD-detection evaluation protocol of detectors, shared by ``Trainer.test`` and tools.

This is the detection front of the OOD evaluation; the back half, shared with image
classification, is :func:`vos_det.evaluation.ood_summary.summarize_ood_evaluation`.

1. One inference pass per dataset (ID test sets, OOD sets, and the calibration set if it is
   not an ID test set) records every detection with its class score and all its OOD scores.
2. ID detection quality comes from the detection evaluators of the same pass (COCO-style
   AP / AP50 / AP75 and, for VOC-format sets, the VOC AP).
3. The protocol's box selection (``TEST.OOD.PROTOCOL``, see :mod:`.box_selection`) is
   resolved on each ID set to a score threshold; the detections of the ID set and of every
   OOD set whose score reaches it are kept ("vos_official": the proposal's maximum
   foreground probability against the released code's threshold; "vos_det": the class
   score against ``TEST.OOD.BOX_SELECTION``'s).
4. Optionally the OOD threshold is calibrated on the kept boxes of an ID validation set and
   saved with the model.
5. The back half: for each (ID set, OOD set) pair and each OOD score, FPR95 (ID positive; the
   ROC point closest to 95% ID recall under "vos_official", ``TEST.OOD.FPR95_METHOD`` under
   "vos_det"), AUROC, AUPR-In, AUPR-Out and the OOD-positive FPR95; the table is printed and
   written to JSON, the ROC curves and histograms to PNG.
"""
import logging
import os
from collections import OrderedDict

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.utils import comm

from ..data.catalog import get_ood_role
from .box_scores import collect_detections
from .box_selection import PROTOCOL_DESCRIPTIONS, PROTOCOLS, select_boxes_for_config
from .calibration import calibrate_on_samples, find_ood_head
from .detection import build_detection_evaluator
from .gallery import plot_detection_examples, plot_failure_gallery
from .plots import safe_file_name
from .ood_summary import OOD_RESULTS_FILE, PLOTS_DIR, numbers_only, summarize_ood_evaluation
from ..metrics.score_curves import FPR_METHODS
from .scored_sets import Comparison, ScoredSet

# OOD_RESULTS_FILE and PLOTS_DIR: the files evaluate_ood_protocol writes, named here too.
__all__ = ["OOD_RESULTS_FILE", "PLOTS_DIR", "calibrate_on_dataset", "evaluate_ood_protocol", "fpr95_method"]

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


def _check_calibration_set(dataset_name):
    role = get_ood_role(dataset_name)
    if role != "id":
        raise ValueError(f"calibration set {dataset_name!r} has ood_role {role!r}; it must be an ID set")


def calibrate_on_dataset(cfg, model, dataset_name: str, *, records, selection=None, output_dir=None):
    """Calibrate the OOD threshold of ``model`` on the kept boxes of an ID validation set.

    The detections are kept by the box selection of ``cfg.TEST.OOD.PROTOCOL`` on that set
    itself (its optimal-F1 threshold uses its ground truth), and the threshold keeps
    ``cfg.TEST.OOD.CALIBRATION_ID_KEEP`` of them (see :mod:`.calibration`).

    Args:
        cfg (CfgNode): the config.
        model (nn.Module): the detector; its threshold buffer is set.
        dataset_name: a registered ID set with ground truth.
        records (DetectionRecords): its detections (:func:`collect_detections`).
        selection (BoxSelection, optional): its box selection, if already resolved.
        output_dir (str, optional): where the main process saves the calibrated model.

    Returns:
        Calibration
    """
    _check_calibration_set(dataset_name)
    selection = selection or select_boxes_for_config(cfg, records, dataset_name)
    return calibrate_on_samples(
        model,
        selection.apply(records).ood_scores,
        cfg.TEST.OOD.CALIBRATION_ID_KEEP,
        output_dir=output_dir,
        weights=cfg.MODEL.WEIGHTS,
        dataset=dataset_name,
        box_selection=selection.describe(),
        protocol=selection.protocol,
    )


def _collect(cfg, model, build_test_loader, evaluators, other_sets):
    """One inference pass per set: the ID sets' detection metrics and every set's detections.

    Args:
        evaluators (OrderedDict[str, DatasetEvaluator]): each ID set's detection evaluator.
        other_sets (list[str]): the OOD sets and the calibration set, run without evaluator
            (unless already run as an ID set).

    Returns:
        tuple[OrderedDict, dict]: ``{id_set: {task: {metric: float}}}`` and
        ``{set: DetectionRecords}``.
    """
    metrics, records = OrderedDict(), {}
    for name, evaluator in evaluators.items():
        results, records[name] = collect_detections(model, build_test_loader(cfg, name), evaluator)
        metrics[name] = {task: numbers_only(values) for task, values in results.items() if isinstance(values, dict)}
    for name in other_sets:
        if name not in records:
            records[name] = collect_detections(model, build_test_loader(cfg, name))[1]
    return metrics, records


def _box_counts(comparison):
    """Per set of a comparison: its images, detections and the detections kept."""
    return {
        name: {"images": kept.num_images, "detections": kept.num_candidates, "selected": kept.num_kept}
        for name, kept in comparison.sets.items()
    }


def _kept(records, selection):
    """The boxes of ``records`` that ``selection`` keeps, as the back half's ScoredSet."""
    kept = selection.apply(records)
    return ScoredSet(kept.ood_scores, len(kept), len(records), records.num_images)


def _verdict_rule(model, calibration):
    """(score, threshold) behind ``is_ood``: the new calibration's, else the model's; None for
    a model without a VOS OOD head."""
    if calibration is not None:
        return calibration.ood_score, float(calibration.threshold)
    try:
        head = find_ood_head(model)
    except TypeError:
        return None
    return head.ood_score, float(head.current_ood_threshold())


def _image_files(dataset_name):
    """image id -> file name of a registered dataset."""
    return {d["image_id"]: d["file_name"] for d in DatasetCatalog.get(dataset_name)}


def draw_pictures(model, records, selections, ood_datasets, plots_dir, calibration=None):
    """The failure gallery and the detection examples of every (ID set, OOD set) pair.

    Args:
        model (nn.Module): the detector (its OOD score and threshold label the pictures).
        records (dict[str, DetectionRecords]): every detection of each set.
        selections (dict[str, BoxSelection]): the box selection of each ID set.
        ood_datasets (list[str]): the OOD sets.
        plots_dir (str): where ``gallery__<id>__<ood>.png`` and ``examples__<id>__<ood>.png`` go.
        calibration (Calibration, optional): the threshold calibrated in this evaluation.

    Returns:
        list[str]: the paths written.
    """
    rule = _verdict_rule(model, calibration)
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


def evaluate_ood_protocol(
    cfg, model, *, output_dir, id_datasets=None, ood_datasets=None, build_test_loader=None,
    detection_evaluators=None, build_evaluator=None, calibration_dataset=None, draw_plots=None,
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
    protocol, fpr_method = cfg.TEST.OOD.PROTOCOL, fpr95_method(cfg)
    if detection_evaluators is not None and len(detection_evaluators) != len(id_datasets):
        raise ValueError(
            f"got {len(detection_evaluators)} evaluators for {len(id_datasets)} ID test sets"
        )
    if build_evaluator is None:
        def build_evaluator(name):
            return build_detection_evaluator(name, os.path.join(output_dir, "inference", name))

    for name, role in ((name, get_ood_role(name)) for name in ood_datasets):
        if role != "ood":
            logger.warning("OOD test set %s has ood_role %r", name, role)
    if calibration_dataset:
        _check_calibration_set(calibration_dataset)  # before any inference pass

    evaluators = OrderedDict()
    for index, name in enumerate(id_datasets):
        evaluator = detection_evaluators[index] if detection_evaluators is not None else None
        evaluators[name] = evaluator if evaluator is not None else build_evaluator(name)
    detection_results, records = _collect(
        cfg, model, build_test_loader, evaluators, ood_datasets + ([calibration_dataset] if calibration_dataset else [])
    )
    selections = OrderedDict((name, select_boxes_for_config(cfg, records[name], name)) for name in id_datasets)
    calibration = None
    if calibration_dataset:
        calibration = calibrate_on_dataset(
            cfg,
            model,
            calibration_dataset,
            records=records[calibration_dataset],
            selection=selections.get(calibration_dataset),
            output_dir=output_dir,
        )

    comparisons = [
        Comparison(
            id_name,
            OrderedDict((name, _kept(records[name], selection)) for name in [id_name] + ood_datasets),
            ood_datasets,
            "Box selection: " + selection.describe(),
        )
        for id_name, selection in selections.items()
    ]
    draw_plots = cfg.TEST.OOD.PLOTS if draw_plots is None else draw_plots
    pictures = []
    if draw_plots and comm.is_main_process():
        plots_dir = os.path.join(output_dir, PLOTS_DIR)
        pictures = draw_pictures(model, records, selections, ood_datasets, plots_dir, calibration)
    return summarize_ood_evaluation(
        comparisons,
        unit="boxes",
        fpr_method=fpr_method,
        model=model,
        output_dir=output_dir,
        results=detection_results,
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
        draw_plots=draw_plots,
        log_report=log_report,
    )
