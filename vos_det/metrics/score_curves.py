"""The curves behind the OOD metrics: tie-merged ROC counts, FPR at a TPR level, areas.

Generic in the positive and negative class (larger score = more positive), numpy only; the
ID/OOD conventions are applied by :mod:`.ood_metrics`, which calls these with the signs and the
roles of its two score sets. Tied scores are merged: all samples with the same score fall on
the same side of every threshold, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
"""
import numpy as np

__all__ = [
    "FPR_METHODS",
    "area_under_roc",
    "average_precision",
    "binary_clf_curve",
    "check_level",
    "check_score_pair",
    "check_scores",
    "fpr_at_level",
    "to_numpy",
]

# Ways to read the FPR at a TPR level off the ROC curve (see `ood_metrics.fpr_at_tpr`).
FPR_METHODS = ("first_at_least", "official_closest")


def to_numpy(x):
    """Return ``x`` as a numpy array; torch tensors may live on any device and have any dtype."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here.
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # Also covers float16 / bfloat16, which numpy cannot take directly.
        x = x.numpy()
    return np.asarray(x)


def check_scores(scores, name):
    """Convert one set of OOD scores to a float64 1-D array and validate it.

    Args:
        scores: 1-D array-like or torch tensor of OOD scores.
        name: how to call the set in error messages, e.g. ``"ID scores (id_ood_scores)"``.

    Returns:
        np.ndarray: float64 array of shape (N,), N > 0.

    Raises:
        ValueError: if the input is not 1-D, is empty, or contains NaN.
    """
    arr = to_numpy(scores).astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: OOD metrics need at least one ID and one OOD score.")
    num_nan = int(np.isnan(arr).sum())
    if num_nan:
        raise ValueError(f"{name} contains {num_nan} NaN score(s) out of {arr.size}.")
    return arr


def check_score_pair(id_ood_scores, ood_ood_scores):
    """Both score sets of a pair, converted and validated (see `check_scores`)."""
    return (
        check_scores(id_ood_scores, "ID scores (id_ood_scores)"),
        check_scores(ood_ood_scores, "OOD scores (ood_ood_scores)"),
    )


def check_level(tpr):
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must be in [0, 1], got {tpr}.")


def binary_clf_curve(pos_scores, neg_scores):
    """Counts of positives and negatives above each distinct threshold.

    A sample is predicted positive when its score is >= the threshold; thresholds run over the
    distinct score values in decreasing order, so tied scores are merged into one ROC point.

    Args:
        pos_scores: float64 array (P,), scores of the positive class (larger = more positive).
        neg_scores: float64 array (N,), scores of the negative class.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``(fps, tps)``, int64 arrays of shape (K,), K = number of
        distinct scores: negatives and positives with score >= the k-th largest distinct score.
        Both are non-decreasing; ``fps[-1] == N`` and ``tps[-1] == P``.
    """
    scores = np.concatenate([pos_scores, neg_scores])
    is_pos = np.concatenate(
        [np.ones(pos_scores.size, dtype=bool), np.zeros(neg_scores.size, dtype=bool)]
    )
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    is_pos = is_pos[order]
    # Last index of every run of equal scores (`!=`, not np.diff, so that ties of +-inf merge).
    threshold_idxs = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    tps = np.cumsum(is_pos, dtype=np.int64)[threshold_idxs]
    fps = threshold_idxs + 1 - tps
    return fps, tps


def fpr_at_level(pos_scores, neg_scores, tpr, method):
    """FPR at a TPR level for generic positive/negative score sets (larger = more positive)."""
    check_level(tpr)
    if method not in FPR_METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {FPR_METHODS}.")
    fps, tps = binary_clf_curve(pos_scores, neg_scores)
    num_pos, num_neg = tps[-1], fps[-1]
    if method == "first_at_least":
        # The ROC curve of sklearn.metrics.roc_curve(drop_intermediate=False): origin first.
        tpr_curve = np.r_[0, tps] / num_pos
        fpr_curve = np.r_[0, fps] / num_neg
        # First point whose TPR >= tpr; it exists because tpr_curve[-1] == 1 >= tpr.
        return float(fpr_curve[np.searchsorted(tpr_curve, tpr, side="left")])
    # "official_closest": fpr_and_fdr_at_recall of the official VOS / Outlier Exposure code.
    # Points from the first one reaching full recall back to the highest threshold; argmin
    # returns the first minimum in that order, i.e. among points equally close to `tpr` the one
    # with the lowest threshold (largest TPR, then largest FPR).
    last_ind = int(np.searchsorted(tps, num_pos, side="left"))
    recall = tps[last_ind::-1] / num_pos
    cutoff = last_ind - int(np.argmin(np.abs(recall - tpr)))
    return float(fps[cutoff] / num_neg)


def area_under_roc(pos_scores, neg_scores):
    """Area under the ROC curve (trapezoids, ties merged) for larger = more positive scores."""
    fps, tps = binary_clf_curve(pos_scores, neg_scores)
    fps = np.r_[0, fps].astype(np.float64)
    tps = np.r_[0, tps].astype(np.float64)
    twice_area = np.sum(np.diff(fps) * (tps[1:] + tps[:-1]))
    return float(twice_area / (2.0 * tps[-1] * fps[-1]))


def average_precision(pos_scores, neg_scores):
    """Average precision sum_k (R_k - R_{k-1}) P_k over the distinct thresholds (ties merged)."""
    fps, tps = binary_clf_curve(pos_scores, neg_scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))

