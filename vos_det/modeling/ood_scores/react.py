"""ReAct, rectified activations (Sun, Guo and Li, "ReAct: Out-of-distribution Detection With
Rectified Activations", NeurIPS 2021).

The penultimate box features are clipped at c, the ``percentile``-th percentile of all the
training boxes' activations (the paper's default: 90), and the clipped features go through
the class layer again; the score is the energy of those logits,

    s(h) = -log sum_k exp(f_k(min(h, c))),   larger = more OOD.
"""
import torch

from .base import OOD_SCORE_REGISTRY, PostHocScore
from .energy import energy

__all__ = ["ReActScore", "activation_percentile"]

_QUANTILE_LIMIT = 2**24


def activation_percentile(features, percentile: float):
    """The ``percentile``-th percentile (0-100) of all entries of (N, D) features, a scalar.

    Linear interpolation between order statistics, as ``numpy.percentile``.
    """
    return torch.quantile(features.double().flatten(), percentile / 100.0)


@OOD_SCORE_REGISTRY.register()
class ReActScore(PostHocScore):
    """ReAct + energy (fitted: the clipping threshold c)."""

    name = "react"

    def __init__(self, percentile: float = 90.0):
        super().__init__()
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"MODEL.VOS.POST_HOC.REACT.PERCENTILE must lie in (0, 100], got {percentile}")
        self.percentile = percentile

    @classmethod
    def from_config(cls, cfg):
        return cls(percentile=cfg.MODEL.VOS.POST_HOC.REACT.PERCENTILE)

    def fit(self, data):
        values = data.features.double().flatten()
        if values.numel() > _QUANTILE_LIMIT:
            # torch.quantile takes at most 2^24 values: keep evenly spaced order statistics.
            positions = torch.linspace(0, values.numel() - 1, _QUANTILE_LIMIT).round().long()
            values = values.sort().values[positions]
        self.fitted_config = {"percentile": self.percentile}
        self.set_fitted(threshold=activation_percentile(values[:, None], self.percentile).float())
        return self

    def forward(self, features, logits, layer_features=None, logits_of=None):
        self.require_fitted()
        if logits_of is None:
            raise RuntimeError("the 'react' OOD score needs the class layer (logits_of)")
        # A tensor bound: no device-to-host read of the threshold per call.
        clipped = features.float().clamp(max=self.threshold)
        return energy(logits_of(clipped).float())
