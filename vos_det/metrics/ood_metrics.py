"""Threshold-free OOD metrics (FPR95, AUROC, AUPR-In, AUPR-Out) in plain numpy.

Conventions used everywhere in this module:

* An *OOD score* is larger for samples that look more out-of-distribution (energy-based
  scores must be negated by the caller if they are "larger = more ID").
* Every function takes two 1-D arrays: ``id_ood_scores``, the OOD scores of the
  in-distribution samples (boxes or images), and ``ood_ood_scores``, the OOD scores of the
  out-of-distribution samples.
* ``FPR95`` follows the detection literature (and the official VOS code): **ID is the positive
  class**. A sample is accepted as ID when its OOD score is at most a threshold; FPR95 is the
  fraction of OOD samples accepted at the threshold that keeps 95% of the ID samples.
  ``fpr_at_tpr_ood_positive`` gives the OpenOOD / pytorch-ood variant (OOD positive), which is a
  different number in general.
* Ties of scores are merged: all samples with the same score fall on the same side of every
  threshold, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``.

The first half of the module is the curves behind the metrics, generic in the positive and
negative class (larger score = more positive); the metrics apply the ID/OOD conventions by
calling them with the signs and the roles of their two score sets. Numpy only; scikit-learn is
used by the tests as a reference. :class:`.OODMetrics` accumulates scores over batches for
:func:`ood_metrics`.
"""
import numpy as np

__all__ = [
    "FPR_METHODS",
    "aupr_in",
    "aupr_out",
    "auroc",
    "fpr_at_tpr",
    "fpr_at_tpr_ood_positive",
    "ood_metrics",
    "roc_curve",
    "to_numpy",
]

# TPR (recall of the positive class) at which the FPR95 keys of `ood_metrics` are read.
_FPR95_TPR = 0.95

_CONVENTION = (
    "FPR95: ID positive; fraction of OOD accepted when 95% of ID kept; "
    "higher OOD score = more OOD"
)
_METHOD_DESCRIPTIONS = {
    "first_at_least": "threshold = first ROC point with TPR >= 95%, ties of scores merged",
    "official_closest": (
        "threshold = ROC point with TPR closest to 95% (official VOS code), ties of scores merged"
    ),
}


# Ways to read the FPR at a TPR level off the ROC curve (see `fpr_at_tpr`).
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


def fpr_at_tpr(id_ood_scores, ood_ood_scores, tpr=0.95, *, method="first_at_least"):
    """False positive rate at a true positive rate, **ID being the positive class** (FPR95).

    This is the detection literature's FPR95 (VOS, energy-based OOD): the fraction of OOD
    samples accepted as ID at the threshold that keeps (accepts) ``tpr`` of the ID samples. A
    sample is accepted when its OOD score is <= the threshold.

    The ROC curve is built with ID as positive class and ``score = -ood_score``, merging tied
    scores (every distinct score value is one threshold), as
    ``sklearn.metrics.roc_curve(y_true=is_id, y_score=-ood_score, drop_intermediate=False)``
    does, with the origin (0, 0) as first point. The point is then chosen by ``method``:

    * ``"first_at_least"`` (default): the first ROC point (highest threshold) whose TPR >= ``tpr``,
      i.e. the smallest FPR among thresholds that keep at least ``tpr`` of ID. Equals
      ``fpr[np.searchsorted(tpr_curve, tpr, side="left")]`` on sklearn's ``roc_curve`` output
      (with or without ``drop_intermediate``), and a brute-force sweep over all thresholds.
    * ``"official_closest"``: the ROC point whose TPR is closest to ``tpr`` (it may be below
      ``tpr``), as ``fpr_and_fdr_at_recall`` in the official VOS code; among points equally
      close, the one with the lowest threshold (so the largest FPR when several thresholds share
      that TPR). Use it to compare with numbers from the official code; the two methods
      differ only by the OOD samples whose scores lie between the ID scores around the
      ``tpr`` point, which is small for large score sets.

    Args:
        id_ood_scores: 1-D array or tensor, OOD scores of the ID samples (larger = more OOD).
        ood_ood_scores: 1-D array or tensor, OOD scores of the OOD samples.
        tpr: fraction of ID samples to keep, in [0, 1].
        method: one of ``FPR_METHODS``, see above.

    Returns:
        float: the FPR, a fraction in [0, 1].

    Raises:
        ValueError: for empty, non-1-D or NaN-containing inputs, ``tpr`` outside [0, 1] or an
            unknown ``method``.
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    return fpr_at_level(-id_scores, -ood_scores, tpr, method)


def fpr_at_tpr_ood_positive(id_ood_scores, ood_ood_scores, tpr=0.95):
    """False positive rate at a true positive rate, **OOD being the positive class**.

    The OpenOOD / pytorch-ood convention: the fraction of ID samples flagged as OOD (OOD score
    >= threshold) at the threshold that catches ``tpr`` of the OOD samples. Ties merged and the
    first ROC point with TPR >= ``tpr`` taken, as ``sklearn.metrics.roc_curve(is_ood, ood_score)``
    followed by ``fpr[np.argmax(tpr_curve >= tpr)]`` (OpenOOD) does. Not the same number as the
    ID-positive `fpr_at_tpr` in general.

    Args:
        id_ood_scores: 1-D array or tensor, OOD scores of the ID samples (larger = more OOD).
        ood_ood_scores: 1-D array or tensor, OOD scores of the OOD samples.
        tpr: fraction of OOD samples to catch, in [0, 1].

    Returns:
        float: the fraction of ID samples flagged as OOD, in [0, 1].

    Raises:
        ValueError: for empty, non-1-D or NaN-containing inputs, or ``tpr`` outside [0, 1].
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    return fpr_at_level(ood_scores, id_scores, tpr, "first_at_least")


def roc_curve(id_ood_scores, ood_ood_scores):
    """The ROC curve with **ID as the positive class** (the curve behind FPR95 and AUROC).

    A sample is accepted as ID when its OOD score is <= a threshold; the thresholds run over
    the distinct score values in increasing order (tied scores merged), after the origin.

    Args:
        id_ood_scores: 1-D array or tensor, OOD scores of the ID samples (larger = more OOD).
        ood_ood_scores: 1-D array or tensor, OOD scores of the OOD samples.

    Returns:
        tuple[np.ndarray, np.ndarray, np.ndarray]: ``(fpr, tpr, thresholds)`` of shape
        (K + 1,): fraction of OOD accepted, fraction of ID accepted, and the threshold of
        each point (-inf for the origin).

    Raises:
        ValueError: for empty, non-1-D or NaN-containing inputs.
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    fps, tps = binary_clf_curve(-id_scores, -ood_scores)
    thresholds = np.unique(np.concatenate([id_scores, ood_scores]))
    return (
        np.r_[0, fps] / fps[-1],
        np.r_[0, tps] / tps[-1],
        np.r_[-np.inf, thresholds],
    )


def auroc(id_ood_scores, ood_ood_scores):
    """Area under the ROC curve, ID positive (equal to the OOD-positive AUROC).

    Trapezoidal area over the tie-merged ROC curve, i.e. the probability that a random ID
    sample has a lower OOD score than a random OOD sample, ties counting one half. Equals
    ``sklearn.metrics.roc_auc_score``.

    Args:
        id_ood_scores: 1-D array or tensor, OOD scores of the ID samples (larger = more OOD).
        ood_ood_scores: 1-D array or tensor, OOD scores of the OOD samples.

    Returns:
        float: AUROC in [0, 1]; 1 when every ID score is below every OOD score.

    Raises:
        ValueError: for empty, non-1-D or NaN-containing inputs.
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    return area_under_roc(-id_scores, -ood_scores)


def aupr_in(id_ood_scores, ood_ood_scores):
    """Area under the precision-recall curve with ID as positive class (score = -OOD score).

    Computed as average precision, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds
    (ties merged), as ``sklearn.metrics.average_precision_score(is_id, -ood_score)``; the AUPR
    reported by the official VOS code.

    Args:
        id_ood_scores: 1-D array or tensor, OOD scores of the ID samples (larger = more OOD).
        ood_ood_scores: 1-D array or tensor, OOD scores of the OOD samples.

    Returns:
        float: AUPR-In in [0, 1].

    Raises:
        ValueError: for empty, non-1-D or NaN-containing inputs.
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    return average_precision(-id_scores, -ood_scores)


def aupr_out(id_ood_scores, ood_ood_scores):
    """`aupr_in` with OOD as the positive class (score = OOD score): AUPR-Out in [0, 1].

    Equal to ``sklearn.metrics.average_precision_score(is_ood, ood_score)``; same arguments
    and errors as `aupr_in`.
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    return average_precision(ood_scores, id_scores)


def ood_metrics(id_ood_scores, ood_ood_scores, *, fpr_method="first_at_least"):
    """All OOD metrics of one ID/OOD pair of score sets, as percentages.

    Args:
        id_ood_scores: 1-D array or tensor, OOD scores of the ID samples (larger = more OOD).
        ood_ood_scores: 1-D array or tensor, OOD scores of the OOD samples.
        fpr_method: how "FPR95" reads the ROC curve, see `fpr_at_tpr`.

    Returns:
        dict: with keys

        * ``"FPR95"``: `fpr_at_tpr` at 95%, ID positive (fraction of OOD accepted when 95% of
          ID is kept), in percent.
        * ``"AUROC"``, ``"AUPR-In"``, ``"AUPR-Out"``: in percent.
        * ``"FPR95-OOD-positive"``: `fpr_at_tpr_ood_positive` at 95% (OpenOOD / pytorch-ood
          convention), in percent.
        * ``"num_id"``, ``"num_ood"``: number of ID and OOD scores (int).
        * ``"convention"``: a string stating the FPR95 convention and sign rule.

    Raises:
        ValueError: for empty, non-1-D or NaN-containing inputs, or an unknown ``fpr_method``.
    """
    id_scores, ood_scores = check_score_pair(id_ood_scores, ood_ood_scores)
    if fpr_method not in FPR_METHODS:
        raise ValueError(f"Unknown fpr_method {fpr_method!r}; expected one of {FPR_METHODS}.")
    return {
        "FPR95": 100.0 * fpr_at_level(-id_scores, -ood_scores, _FPR95_TPR, fpr_method),
        "AUROC": 100.0 * area_under_roc(-id_scores, -ood_scores),
        "AUPR-In": 100.0 * average_precision(-id_scores, -ood_scores),
        "AUPR-Out": 100.0 * average_precision(ood_scores, id_scores),
        "FPR95-OOD-positive": 100.0
        * fpr_at_level(ood_scores, id_scores, _FPR95_TPR, "first_at_least"),
        "num_id": int(id_scores.size),
        "num_ood": int(ood_scores.size),
        "convention": f"{_CONVENTION}; {_METHOD_DESCRIPTIONS[fpr_method]}",
    }

