"""Tests of vos_det.metrics.ood_metrics against scikit-learn and brute-force references."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vos_det.metrics import (
    OODMetrics,
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_tpr,
    fpr_at_tpr_ood_positive,
    ood_metrics,
)

TPR_LEVELS = (0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)


def _random_scores(seed, num_id, num_ood):
    """Continuous scores; OOD shifted up (larger = more OOD) but overlapping ID."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, num_id), rng.normal(1.0, 1.5, num_ood)


def _tied_scores(seed, num_id, num_ood):
    """Integer scores in 0..5: almost every score is tied with many others."""
    rng = np.random.default_rng(seed)
    id_scores = rng.choice(6, size=num_id, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
    ood_scores = rng.choice(6, size=num_ood, p=[0.05, 0.1, 0.15, 0.2, 0.2, 0.3])
    return id_scores.astype(np.float64), ood_scores.astype(np.float64)


SCORE_SETS = [
    _random_scores(0, 200, 300),
    _random_scores(1, 1000, 37),
    _random_scores(2, 20, 5000),
    _tied_scores(3, 200, 300),
    _tied_scores(4, 1000, 37),
    _tied_scores(5, 19, 400),
]


def _labels_and_scores(id_scores, ood_scores):
    is_id = np.r_[np.ones(id_scores.size, dtype=int), np.zeros(ood_scores.size, dtype=int)]
    return is_id, np.r_[id_scores, ood_scores]


def _sklearn_fpr_first_at_least(y_true, y_score, level, drop_intermediate):
    fpr, tpr, _ = roc_curve(y_true, y_score, drop_intermediate=drop_intermediate)
    return fpr[np.searchsorted(tpr, level, side="left")]


def _brute_force_fpr_id_positive(id_scores, ood_scores, level):
    """Smallest fraction of OOD with score <= t over all t keeping >= `level` of ID."""
    thresholds = np.unique(np.r_[id_scores, ood_scores])
    best = 0.0 if level <= 0 else np.inf  # accepting nothing: TPR 0, FPR 0
    for t in thresholds:
        if np.mean(id_scores <= t) >= level:
            best = min(best, np.mean(ood_scores <= t))
    return best


def _brute_force_fpr_ood_positive(id_scores, ood_scores, level):
    """Smallest fraction of ID with score >= t over all t catching >= `level` of OOD."""
    thresholds = np.unique(np.r_[id_scores, ood_scores])
    best = 0.0 if level <= 0 else np.inf  # flagging nothing: TPR 0, FPR 0
    for t in thresholds:
        if np.mean(ood_scores >= t) >= level:
            best = min(best, np.mean(id_scores >= t))
    return best


def _official_fpr_and_fdr_at_recall(y_true, y_score, recall_level):
    """fpr_and_fdr_at_recall of the official VOS code (metric_utils.py), transcribed for tests."""
    y_true = y_true == 1
    desc_score_indices = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[desc_score_indices]
    y_true = y_true[desc_score_indices]
    distinct_value_indices = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct_value_indices, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(np.logical_not(y_true))


def _sklearn_fprs_id_positive(is_id, all_scores, level):
    """The first-at-least FPR on sklearn's ROC curve, with and without drop_intermediate."""
    return [_sklearn_fpr_first_at_least(is_id, -all_scores, level, drop) for drop in (False, True)]


def _openood_fprs_ood_positive(is_id, all_scores, level):
    """OpenOOD: fpr_list[np.argmax(tpr_list >= tpr)] with roc_curve(is_ood, ood_score)."""
    fpr, tpr, _ = roc_curve(1 - is_id, all_scores)
    return [fpr[np.argmax(tpr >= level)]]


# (FPR function, brute-force reference, library references) of each FPR95 convention.
FPR_CONVENTIONS = {
    "id_positive": (fpr_at_tpr, _brute_force_fpr_id_positive, _sklearn_fprs_id_positive),
    "ood_positive": (fpr_at_tpr_ood_positive, _brute_force_fpr_ood_positive, _openood_fprs_ood_positive),
}


@pytest.mark.parametrize("convention", sorted(FPR_CONVENTIONS))
@pytest.mark.parametrize("scores", SCORE_SETS)
def test_fpr_at_tpr_matches_sklearn_and_brute_force(scores, convention):
    fpr_function, brute_force, references = FPR_CONVENTIONS[convention]
    id_scores, ood_scores = scores
    is_id, all_scores = _labels_and_scores(id_scores, ood_scores)
    for level in TPR_LEVELS:
        ours = fpr_function(id_scores, ood_scores, tpr=level)
        assert ours == pytest.approx(brute_force(id_scores, ood_scores, level), abs=1e-12), level
        for reference in references(is_id, all_scores, level):
            assert ours == pytest.approx(reference, abs=1e-12), level


@pytest.mark.parametrize("scores", SCORE_SETS)
def test_official_closest_matches_official_code(scores):
    id_scores, ood_scores = scores
    is_id, all_scores = _labels_and_scores(id_scores, ood_scores)
    for level in TPR_LEVELS[1:]:
        ours = fpr_at_tpr(id_scores, ood_scores, tpr=level, method="official_closest")
        reference = _official_fpr_and_fdr_at_recall(is_id, -all_scores, level)
        assert ours == pytest.approx(reference, abs=1e-12), level


@pytest.mark.parametrize("scores", SCORE_SETS)
def test_auroc_and_aupr_match_sklearn(scores):
    id_scores, ood_scores = scores
    is_id, all_scores = _labels_and_scores(id_scores, ood_scores)
    expected_auroc = roc_auc_score(is_id, -all_scores)
    assert auroc(id_scores, ood_scores) == pytest.approx(expected_auroc, abs=1e-10)
    # Same value with OOD as positive class.
    assert auroc(id_scores, ood_scores) == pytest.approx(
        roc_auc_score(1 - is_id, all_scores), abs=1e-10
    )
    # Mann-Whitney: P(ID score < OOD score) + 0.5 P(tie).
    diff = id_scores[:, None] - ood_scores[None, :]
    assert auroc(id_scores, ood_scores) == pytest.approx(
        np.mean(diff < 0) + 0.5 * np.mean(diff == 0), abs=1e-10
    )
    assert aupr_in(id_scores, ood_scores) == pytest.approx(
        average_precision_score(is_id, -all_scores), abs=1e-10
    )
    assert aupr_out(id_scores, ood_scores) == pytest.approx(
        average_precision_score(1 - is_id, all_scores), abs=1e-10
    )


def test_hand_computed_fpr_conventions():
    # 20 ID scores 0..19; keeping 95% (19) of ID needs threshold 18 (ID <= 18 accepted).
    id_scores = np.arange(20, dtype=np.float64)
    ood_scores = np.array([10.5, 18.5, 19.5, 30.0])
    # First point with TPR >= 0.95: threshold 18 accepts OOD 10.5 only.
    assert fpr_at_tpr(id_scores, ood_scores) == 0.25
    # Official code: among the points with recall 0.95 it takes the lowest threshold (18.5).
    assert fpr_at_tpr(id_scores, ood_scores, method="official_closest") == 0.5
    # OOD positive: catching 95% of 4 OOD needs all 4 (threshold 10.5): ID 11..19 flagged.
    assert fpr_at_tpr_ood_positive(id_scores, ood_scores) == 9 / 20
    # 10 ID scores: recall 0.9 is (in floating point) closer to 0.95 than recall 1.0 is, so the
    # official code reads the FPR below 95% TPR; OOD score 9 ties with the last ID score.
    id_scores = np.arange(10, dtype=np.float64)
    ood_scores = np.array([8.5, 9.0, 20.0])
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(2 / 3)
    assert fpr_at_tpr(id_scores, ood_scores, method="official_closest") == pytest.approx(1 / 3)


def test_ties_with_infinities_are_merged():
    id_scores = np.array([-np.inf, -np.inf, 0.0, 1.0, np.inf])
    ood_scores = np.array([np.inf, np.inf, 0.0, -np.inf])
    for level in TPR_LEVELS:
        assert fpr_at_tpr(id_scores, ood_scores, tpr=level) == pytest.approx(
            _brute_force_fpr_id_positive(id_scores, ood_scores, level)
        ), level
        assert fpr_at_tpr_ood_positive(id_scores, ood_scores, tpr=level) == pytest.approx(
            _brute_force_fpr_ood_positive(id_scores, ood_scores, level)
        ), level
    lower = id_scores[:, None] < ood_scores[None, :]
    ties = id_scores[:, None] == ood_scores[None, :]
    mann_whitney = np.mean(lower) + 0.5 * np.mean(ties)
    assert auroc(id_scores, ood_scores) == pytest.approx(mann_whitney)


def test_perfect_and_reversed_separation():
    id_scores, _ = _random_scores(6, 100, 1)
    ood_scores = id_scores[:80] + 100.0
    results = ood_metrics(id_scores, ood_scores)
    assert results["FPR95"] == 0.0
    assert results["FPR95-OOD-positive"] == 0.0
    assert results["AUROC"] == 100.0
    assert results["AUPR-In"] == pytest.approx(100.0)
    assert results["AUPR-Out"] == pytest.approx(100.0)
    assert (results["num_id"], results["num_ood"]) == (100, 80)

    reversed_results = ood_metrics(id_scores, id_scores[:80] - 100.0)
    assert reversed_results["FPR95"] == 100.0
    assert reversed_results["FPR95-OOD-positive"] == 100.0
    assert reversed_results["AUROC"] == 0.0
    # Worst-case AP: the positives come last, precision P / (P + N) at full recall.
    assert reversed_results["AUPR-In"] < 100.0 * 100 / 180 + 1e-9


def test_all_scores_tied():
    results = ood_metrics(np.zeros(30), np.zeros(10))
    assert results["AUROC"] == 50.0
    assert results["FPR95"] == 100.0
    assert results["FPR95-OOD-positive"] == 100.0
    assert results["AUPR-In"] == pytest.approx(75.0)
    assert results["AUPR-Out"] == pytest.approx(25.0)


def test_ood_metrics_dict():
    id_scores, ood_scores = _tied_scores(7, 300, 200)
    results = ood_metrics(id_scores, ood_scores)
    assert list(results) == [
        "FPR95",
        "AUROC",
        "AUPR-In",
        "AUPR-Out",
        "FPR95-OOD-positive",
        "num_id",
        "num_ood",
        "convention",
    ]
    assert results["FPR95"] == pytest.approx(100.0 * fpr_at_tpr(id_scores, ood_scores))
    assert results["AUROC"] == pytest.approx(100.0 * auroc(id_scores, ood_scores))
    assert results["AUPR-In"] == pytest.approx(100.0 * aupr_in(id_scores, ood_scores))
    assert results["AUPR-Out"] == pytest.approx(100.0 * aupr_out(id_scores, ood_scores))
    assert results["FPR95-OOD-positive"] == pytest.approx(
        100.0 * fpr_at_tpr_ood_positive(id_scores, ood_scores)
    )
    assert results["convention"].startswith(
        "FPR95: ID positive; fraction of OOD accepted when 95% of ID kept; "
        "higher OOD score = more OOD"
    )
    official = ood_metrics(id_scores, ood_scores, fpr_method="official_closest")
    assert official["FPR95"] == pytest.approx(
        100.0 * fpr_at_tpr(id_scores, ood_scores, method="official_closest")
    )
    assert "official" in official["convention"]
    assert all(isinstance(results[key], float) for key in list(results)[:5])


def test_torch_inputs():
    id_scores, ood_scores = _random_scores(8, 50, 60)
    id_t = torch.tensor(id_scores, dtype=torch.float32)
    ood_t = torch.tensor(ood_scores, dtype=torch.float32)
    expected = ood_metrics(id_t.numpy(), ood_t.numpy())
    assert ood_metrics(id_t, ood_t) == expected
    half = ood_metrics(id_t.bfloat16(), ood_t.bfloat16())
    assert half["AUROC"] == pytest.approx(expected["AUROC"], abs=2.0)


@pytest.mark.parametrize("scores", SCORE_SETS[:2] + SCORE_SETS[3:5])
def test_accumulator_chunks_equal_one_shot(scores):
    id_scores, ood_scores = scores
    all_scores = np.r_[id_scores, ood_scores]
    is_ood = np.r_[np.zeros(id_scores.size, bool), np.ones(ood_scores.size, bool)]
    perm = np.random.default_rng(9).permutation(all_scores.size)
    all_scores, is_ood = all_scores[perm], is_ood[perm]

    metrics = OODMetrics()
    bounds = [0, 0, 7, 100, 101, 350, all_scores.size]  # includes an empty chunk
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        chunk_scores, chunk_is_ood = all_scores[start:end], is_ood[start:end]
        if i % 2:  # alternate numpy / torch, bool / int masks
            chunk_scores = torch.from_numpy(chunk_scores)
            chunk_is_ood = torch.from_numpy(chunk_is_ood.astype(np.int64))
        metrics.update(chunk_scores, chunk_is_ood)
    assert (metrics.num_id, metrics.num_ood) == (id_scores.size, ood_scores.size)
    assert metrics.compute() == ood_metrics(id_scores, ood_scores)

    metrics.reset()
    with pytest.raises(ValueError, match="empty"):
        metrics.compute()
    metrics.update(all_scores, is_ood)
    assert metrics.compute() == ood_metrics(id_scores, ood_scores)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accumulator_cuda_tensors():
    id_scores, ood_scores = _random_scores(10, 40, 30)
    metrics = OODMetrics()
    is_ood = torch.zeros(70, dtype=torch.bool, device="cuda")
    is_ood[40:] = True
    metrics.update(torch.tensor(np.r_[id_scores, ood_scores], device="cuda"), is_ood)
    assert metrics.compute() == ood_metrics(id_scores, ood_scores)


def test_errors():
    good = np.arange(5.0)
    with pytest.raises(ValueError, match=r"ID scores \(id_ood_scores\) is empty"):
        ood_metrics(np.array([]), good)
    with pytest.raises(ValueError, match=r"OOD scores \(ood_ood_scores\) is empty"):
        fpr_at_tpr(good, [])
    with pytest.raises(ValueError, match=r"ID scores .* contains 2 NaN score\(s\) out of 5"):
        auroc(np.array([0.0, np.nan, 1.0, np.nan, 2.0]), good)
    with pytest.raises(ValueError, match=r"OOD scores \(ood_ood_scores\) contains 1 NaN"):
        aupr_out(good, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"must be a 1-D array.*\(5, 1\)"):
        aupr_in(good[:, None], good)
    with pytest.raises(ValueError, match="tpr must be in"):
        fpr_at_tpr(good, good, tpr=1.5)
    with pytest.raises(ValueError, match="Unknown method"):
        fpr_at_tpr(good, good, method="closest")
    with pytest.raises(ValueError, match="Unknown fpr_method"):
        OODMetrics(fpr_method="closest")

    metrics = OODMetrics()
    with pytest.raises(ValueError, match="1 NaN score.*0 in the ID set and 1 in the OOD set"):
        metrics.update(np.array([0.0, np.nan]), np.array([False, True]))
    with pytest.raises(ValueError, match="same length"):
        metrics.update(np.zeros(3), np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="1-D"):
        metrics.update(np.zeros((3, 1)), np.zeros((3, 1), dtype=bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.update(np.zeros(3), np.array([0, 1, 2]))
    assert (metrics.num_id, metrics.num_ood) == (0, 0)
    metrics.update(np.zeros(3), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="OOD scores.*empty"):
        metrics.compute()
