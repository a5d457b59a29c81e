"""Seed statistics of a benchmark: means with confidence intervals and paired differences.

A training method is run with several seeds; each seed gives one value of a metric (e.g.
FPR95). :func:`mean_ci` summarises those values by their mean and a two-sided Student-t
confidence interval; :func:`paired_difference` compares two (method, score) pairs seed by
seed (the same seeds: one model per seed scored both ways, or two methods trained with the
same seed), which removes the seed-to-seed spread that both share. A difference is
*significant* at the chosen level when its interval excludes 0.

Pure functions of NumPy arrays (the t quantile from ``scipy.stats.t``).
"""
import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "mean_ci", "paired_difference", "prediction_interval"]


@dataclass
class MeanCI:
    """A mean over seeds with its two-sided Student-t confidence interval.

    Attributes:
        mean: the sample mean.
        half_width: the interval is mean +- half_width (None with fewer than 2 values).
        low, high: the interval's ends (None with fewer than 2 values).
        std: the sample standard deviation (ddof=1; None with fewer than 2 values).
        n: number of values (seeds).
        confidence: e.g. 0.95.
    """

    mean: float
    half_width: Optional[float]
    low: Optional[float]
    high: Optional[float]
    std: Optional[float]
    n: int
    confidence: float

    @property
    def significant(self) -> bool:
        """True when the interval exists and excludes 0."""
        return self.low is not None and (self.low > 0.0 or self.high < 0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """The mean of ``values`` and its Student-t confidence interval.

    half_width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n), s the sample standard
    deviation (ddof=1).

    Args:
        values: (n,) one value per seed, no NaN.
        confidence: the interval's coverage, in (0, 1).

    Returns:
        MeanCI: with ``half_width``, ``low``, ``high``, ``std`` None when n < 2.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no value to average")
    if np.isnan(values).any():
        raise ValueError(f"{int(np.isnan(values).sum())} NaN value(s) among {values.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(values.mean())
    if values.size < 2:
        return MeanCI(mean, None, None, None, None, int(values.size), confidence)
    std = float(values.std(ddof=1))
    half_width = float(stats.t.ppf(0.5 * (1.0 + confidence), values.size - 1)) * std / math.sqrt(values.size)
    return MeanCI(mean, half_width, mean - half_width, mean + half_width, std, int(values.size), confidence)


def paired_difference(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and confidence interval of ``values - reference``, paired element by element.

    The paired t interval: both arrays hold one value per seed, in the same seed order.

    Args:
        values: (n,) the compared pair's values.
        reference: (n,) the reference pair's values on the same seeds.
        confidence: the interval's coverage.

    Returns:
        MeanCI: of the n differences.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    if values.shape != reference.shape:
        raise ValueError(f"paired values need the same seeds: {values.size} values vs {reference.size}")
    return mean_ci(values - reference, confidence)


def prediction_interval(mean: float, std: float, n: int, confidence: float = 0.95):
    """The two-sided Student-t interval in which one more draw falls with ``confidence``.

    For n values with sample mean m and standard deviation s (ddof=1), a new independent draw
    lies in m +- t_{(1 + confidence) / 2, n - 1} * s * sqrt(1 + 1 / n): wider than the mean's
    confidence interval, which shrinks with n while single draws do not.

    Args:
        mean, std: the sample mean and standard deviation (ddof=1) of the n values.
        n: number of values (>= 2).
        confidence: the coverage, in (0, 1).

    Returns:
        tuple[float, float]: (low, high).
    """
    if n < 2:
        raise ValueError(f"a prediction interval needs at least 2 values, got {n}")
    half_width = float(stats.t.ppf(0.5 * (1.0 + confidence), n - 1)) * std * math.sqrt(1.0 + 1.0 / n)
    return mean - half_width, mean + half_width
