"""OOD evaluation of vos_det: threshold-free OOD metrics (see ood_metrics)."""
from .ood_metrics import (
    FPR_METHODS,
    OODMetrics,
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_tpr,
    fpr_at_tpr_ood_positive,
    ood_metrics,
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
]

from .box_scores import BoxOODScoreCollector
from .report import format_ood_table

__all__ += ["BoxOODScoreCollector", "format_ood_table"]
