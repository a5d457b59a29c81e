"""OOD evaluation of vos_det: the OOD metrics of :mod:`vos_det.metrics`, box selection, calibration, reports.

Records in, report out. :func:`collect_detections` is the inference pass (model + loader ->
:class:`DetectionRecords`); :func:`evaluate_ood` takes the records of every set and returns the
report, without a model. A task-specific front (:func:`evaluate_ood` for detectors,
``ClassificationTrainer.test`` for classifiers) keeps the samples of each set as
:class:`ScoredSet` records; one back half, :func:`summarize_ood_evaluation`, turns them into
metrics, calibration summary, plots, JSON and text.
"""
from ..metrics import (
    FPR_METHODS,
    OODMetrics,
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_tpr,
    fpr_at_tpr_ood_positive,
    ood_metrics,
    roc_curve,
)
from .box_selection import BOX_SELECTION_RULES, PROTOCOLS, BoxSelection, select_boxes, select_boxes_for_config
from .calibration import Calibration, OODRule, calibrate, threshold_keeping
from .coco_optimal_f1 import coco_optimal_f1_threshold
from .ground_truth import GroundTruthBoxes, load_ground_truth
from .protocol import evaluate_ood
from .records import (
    BoxOODScoreCollector,
    DetectionRecords,
    VOCDetectionEvaluator,
    build_detection_evaluator,
    collect_detections,
    computing_all_ood_scores,
    log_detection_results,
)
from .report import (
    OOD_RESULTS_FILE,
    PLOTS_DIR,
    Comparison,
    ScoredSet,
    format_ood_report,
    format_ood_table,
    summarize_ood_evaluation,
)
from .voc_optimal_f1 import match_detections, optimal_f1_threshold

__all__ = [
    "BOX_SELECTION_RULES",
    "BoxOODScoreCollector",
    "BoxSelection",
    "Calibration",
    "Comparison",
    "DetectionRecords",
    "FPR_METHODS",
    "GroundTruthBoxes",
    "OODMetrics",
    "OODRule",
    "OOD_RESULTS_FILE",
    "PLOTS_DIR",
    "PROTOCOLS",
    "ScoredSet",
    "VOCDetectionEvaluator",
    "aupr_in",
    "aupr_out",
    "auroc",
    "build_detection_evaluator",
    "calibrate",
    "coco_optimal_f1_threshold",
    "collect_detections",
    "computing_all_ood_scores",
    "evaluate_ood",
    "format_ood_report",
    "format_ood_table",
    "fpr_at_tpr",
    "fpr_at_tpr_ood_positive",
    "load_ground_truth",
    "log_detection_results",
    "match_detections",
    "ood_metrics",
    "optimal_f1_threshold",
    "roc_curve",
    "select_boxes",
    "select_boxes_for_config",
    "summarize_ood_evaluation",
    "threshold_keeping",
]
