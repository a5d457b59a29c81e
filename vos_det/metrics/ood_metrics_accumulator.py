"""OODMetrics: OOD scores accumulated over batches, then the metrics of :func:`ood_metrics`."""
import numpy as np

from .ood_metrics import FPR_METHODS, ood_metrics, to_numpy

__all__ = ["OODMetrics"]


class OODMetrics:
    """Accumulates OOD scores over batches and computes `ood_metrics` on all of them.

    Example::

        metrics = OODMetrics()
        for scores, is_ood in batches:  # 1-D, any device; scores: larger = more OOD
            metrics.update(scores, is_ood)
        results = metrics.compute()  # {"FPR95": ..., "AUROC": ..., ...}

    Args:
        fpr_method: how "FPR95" reads the ROC curve, see `fpr_at_tpr`.
    """

    def __init__(self, fpr_method="first_at_least"):
        if fpr_method not in FPR_METHODS:
            raise ValueError(f"Unknown fpr_method {fpr_method!r}; expected one of {FPR_METHODS}.")
        self.fpr_method = fpr_method
        self.reset()

    def reset(self):
        """Forget every score added so far."""
        self._id_chunks = []
        self._ood_chunks = []

    def update(self, scores, is_ood):
        """Add a batch of scores.

        Args:
            scores: 1-D numpy array or torch tensor (any device) of OOD scores, larger = more OOD.
                May be empty (e.g. an image where no box was kept).
            is_ood: 1-D boolean (or 0/1) array or tensor of the same length, True for OOD samples.

        Returns:
            OODMetrics: ``self``.

        Raises:
            ValueError: for non-1-D inputs, mismatched lengths, non-binary ``is_ood`` or NaN scores.
        """
        scores = to_numpy(scores).astype(np.float64, copy=False)
        is_ood = to_numpy(is_ood)
        if scores.ndim != 1 or is_ood.ndim != 1:
            raise ValueError(
                f"scores and is_ood must be 1-D, got shapes {scores.shape} and {is_ood.shape}."
            )
        if scores.shape != is_ood.shape:
            raise ValueError(
                f"scores and is_ood must have the same length, got {scores.size} and {is_ood.size}."
            )
        if is_ood.dtype != bool:
            if not np.isin(is_ood, (0, 1)).all():
                raise ValueError("is_ood must be boolean or contain only 0 and 1.")
            is_ood = is_ood.astype(bool)
        nan = np.isnan(scores)
        if nan.any():
            raise ValueError(
                f"scores contain {int(nan.sum())} NaN score(s): {int((nan & ~is_ood).sum())} in "
                f"the ID set and {int((nan & is_ood).sum())} in the OOD set."
            )
        self._id_chunks.append(scores[~is_ood])
        self._ood_chunks.append(scores[is_ood])
        return self

    @property
    def num_id(self):
        """int: number of ID scores accumulated."""
        return sum(chunk.size for chunk in self._id_chunks)

    @property
    def num_ood(self):
        """int: number of OOD scores accumulated."""
        return sum(chunk.size for chunk in self._ood_chunks)

    def compute(self):
        """Metrics of all accumulated scores.

        Returns:
            dict: as `ood_metrics`.

        Raises:
            ValueError: if no ID or no OOD score has been added.
        """
        id_scores = np.concatenate(self._id_chunks) if self._id_chunks else np.zeros(0)
        ood_scores = np.concatenate(self._ood_chunks) if self._ood_chunks else np.zeros(0)
        return ood_metrics(id_scores, ood_scores, fpr_method=self.fpr_method)
