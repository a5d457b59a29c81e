"""ReAct, rectified activations (Sun, Guo and Li, "ReAct: Out-of-distribution Detection With
Rectified Activations", NeurIPS 2021).

The penultimate box features are clipped at c, the ``percentile``-th percentile of all the
training boxes' activations (the paper's default: 90), and the clipped features go through
the class layer again; the score is the energy of those logits,

    s(h) = -log sum_k exp(f_k(min(h, c))),   larger = more OOD.

The box head's features are post-ReLU and can be sparse: when more than ``percentile`` % of
the training activations are at their minimum (0), c is that minimum, every clipped feature is
the same vector and the score is one constant for every box (FPR95 100 / AUROC 50 on every
split, as seen on a vanilla ResNet-18 digits detector; the seed-0 vanilla R-18 of the leaderboard
has c = 0.14, just short of it). c is then the ``percentile``-th
percentile of the activations above the minimum (the units that fire), and the fitted config
says so; on dense features nothing changes.
"""
import logging

import torch

from .base import OOD_SCORE_REGISTRY, PostHocScore
from .energy import energy

__all__ = ["ReActScore", "activation_percentile"]

logger = logging.getLogger(__name__)

_QUANTILE_LIMIT = 2**24


def activation_percentile(features, percentile: float):
    """The ``percentile``-th percentile (0-100) of all entries of (N, D) features, a scalar.

    Linear interpolation between order statistics, as ``numpy.percentile``.
    """
    return torch.quantile(features.double().flatten(), percentile / 100.0)


def _percentile(values, percentile: float):
    """:func:`activation_percentile` of a 1-D tensor of any length (torch.quantile takes at most
    2^24 values: beyond, evenly spaced order statistics stand for them)."""
    if values.numel() > _QUANTILE_LIMIT:
        positions = torch.linspace(0, values.numel() - 1, _QUANTILE_LIMIT).round().long()
        values = values.sort().values[positions]
    return activation_percentile(values[:, None], percentile)


@OOD_SCORE_REGISTRY.register()
class ReActScore(PostHocScore):
    """ReAct + energy (fitted: the clipping threshold c)."""

    name = "react"

    def __init__(self, percentile: float = 90.0):
        super().__init__()
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"MODEL.OOD.POST_HOC.REACT.PERCENTILE must lie in (0, 100], got {percentile}")
        self.percentile = percentile

    @classmethod
    def from_config(cls, cfg):
        return cls(percentile=cfg.MODEL.OOD.POST_HOC.REACT.PERCENTILE)

    def fit(self, data):
        values = data.features.double().flatten()
        self.fitted_config = {"percentile": self.percentile, "threshold_of": "all activations"}
        threshold = _percentile(values, self.percentile)
        lowest = values.min()
        if threshold <= lowest:
            # Clipping at the minimum would map every box to one vector: a constant score.
            active = values[values > lowest]
            if active.numel():
                fraction = 1.0 - active.numel() / values.numel()
                logger.warning(
                    "ReAct: %.1f%% of the training activations are at their minimum %g, so the "
                    "%g-th percentile clips every box to one vector; taking it over the %d activations "
                    "above the minimum", 100 * fraction, float(lowest), self.percentile, active.numel(),
                )
                threshold = _percentile(active, self.percentile)
                self.fitted_config.update(threshold_of="activations above their minimum", minimum_fraction=fraction)
        self.set_fitted(threshold=threshold.float())
        return self

    def forward(self, features, logits, layer_features=None, logits_of=None):
        self.require_fitted()
        if logits_of is None:
            raise RuntimeError("the 'react' OOD score needs the class layer (logits_of)")
        # A tensor bound: no device-to-host read of the threshold per call.
        clipped = features.float().clamp(max=self.threshold)
        return energy(logits_of(clipped).float())
