"""Threshold-free OOD metrics (FPR95, AUROC, AUPR) as pure numpy functions.

The bottom of the package: these modules import nothing of vos_det, so the model code (its
diagnostics), the evaluation and the engine (score fitting) all read the same formulas.

* :mod:`.ood_metrics`: the ROC / precision-recall points of two score arrays (ties merged);
  from them FPR at a TPR, AUROC, AUPR-In / -Out, and all of them at once.
* :mod:`.ood_metrics_accumulator`: :class:`OODMetrics`, scores accumulated over batches.
"""
from .ood_metrics import FPR_METHODS
from .ood_metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, fpr_at_tpr_ood_positive, ood_metrics, roc_curve
from .ood_metrics_accumulator import OODMetrics

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
