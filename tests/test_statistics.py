"""Seed statistics (vos_det.evaluation.statistics) against scipy.stats."""
import numpy as np
import pytest
from scipy import stats

from vos_det.evaluation.statistics import mean_ci, paired_difference


@pytest.mark.parametrize("n", [2, 3, 5, 12])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy_t_interval(n, confidence):
    values = np.random.default_rng(n).normal(40.0, 8.0, size=n)
    result = mean_ci(values, confidence)
    low, high = stats.t.interval(confidence, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert result.mean == pytest.approx(values.mean(), abs=1e-12)
    assert result.low == pytest.approx(low, abs=1e-9)
    assert result.high == pytest.approx(high, abs=1e-9)
    assert result.std == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert result.half_width == pytest.approx((high - low) / 2, abs=1e-9)
    assert result.n == n and result.confidence == confidence


def test_five_seed_interval_uses_t_not_normal():
    # n = 5: t_{0.975, 4} = 2.7764, far from the normal 1.96.
    result = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert result.half_width == pytest.approx(2.7764451 * np.sqrt(2.5) / np.sqrt(5), abs=1e-6)


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_paired_difference_matches_scipy_ttest_rel(confidence):
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(50.0, 10.0, size=5)  # shared by both: cancels when paired
    reference = seed_effect + rng.normal(0.0, 1.0, size=5)
    values = seed_effect - 6.0 + rng.normal(0.0, 1.0, size=5)
    result = paired_difference(values, reference, confidence)
    interval = stats.ttest_rel(values, reference).confidence_interval(confidence_level=confidence)
    assert result.mean == pytest.approx(np.mean(values - reference), abs=1e-12)
    assert result.low == pytest.approx(interval.low, abs=1e-9)
    assert result.high == pytest.approx(interval.high, abs=1e-9)
    # Pairing removes the seed spread: the unpaired interval would straddle 0.
    assert result.significant
    assert not mean_ci(values).high < mean_ci(reference).low


def test_significance_is_the_interval_excluding_zero():
    assert mean_ci([1.0, 1.2, 0.9, 1.1, 1.05]).significant
    assert mean_ci([-1.0, -1.2, -0.9, -1.1, -1.05]).significant
    assert not mean_ci([1.0, -1.0, 0.5, -0.4, 0.1]).significant
    assert mean_ci([1.0, 1.0, 1.0]).to_dict()["significant"]  # zero spread, mean != 0


def test_single_seed_has_no_interval():
    result = mean_ci([3.5])
    assert result.mean == 3.5 and result.n == 1
    assert result.half_width is None and result.low is None and result.std is None
    assert not result.significant


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="no value"):
        mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)
