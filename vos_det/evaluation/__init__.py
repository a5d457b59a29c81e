"""OOD evaluation of vos_det: threshold-free OOD metrics, box selection, calibration, reports."""
from .ood_metrics import (
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

__all__ = [
    "FPR_METHODS",
    "OODMetrics",
    "aupr_in",
    "aupr_out",
    "auroc",
    "fpr_at_tpr",
    "fpr_at_tpr_ood_positive",
    "ood_metrics",
    "roc_curve",
]

from .box_scores import BoxOODScoreCollector, DetectionRecords, collect_detections
from .box_selection import (
    BOX_SELECTION_RULES,
    PROTOCOLS,
    BoxSelection,
    coco_optimal_f1_threshold,
    load_ground_truth,
    optimal_f1_threshold,
    select_boxes,
    select_boxes_for_config,
)
from .calibration import Calibration, calibrate_on_dataset, calibrate_threshold, threshold_keeping
from .detection import VOCDetectionEvaluator, build_detection_evaluator
from .protocol import evaluate_ood_protocol
from .report import format_ood_report, format_ood_table

__all__ += [
    "BOX_SELECTION_RULES",
    "PROTOCOLS",
    "BoxOODScoreCollector",
    "BoxSelection",
    "Calibration",
    "DetectionRecords",
    "VOCDetectionEvaluator",
    "build_detection_evaluator",
    "calibrate_on_dataset",
    "calibrate_threshold",
    "coco_optimal_f1_threshold",
    "collect_detections",
    "evaluate_ood_protocol",
    "format_ood_report",
    "format_ood_table",
    "load_ground_truth",
    "optimal_f1_threshold",
    "select_boxes",
    "select_boxes_for_config",
    "threshold_keeping",
]
