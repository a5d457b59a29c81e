"""ReAct, rectified activations (Sun, Guo and Li, "ReAct: Out-of-distribution Detection With
Rectified Activations", NeurIPS 2021).

The penultimate box features are clipped at c, the ``percentile``-th percentile of the
training boxes' activations (the paper's default: 90; one threshold for all units, as in the
released code), and the clipped features go through the class layer again; the score is the
energy of those logits,

    s(h) = -log sum_k exp(f_k(min(h, c))),   larger = more OOD.

The percentile is taken over the activations above their minimum (0 after a ReLU): the units
that fire. On features without a mass at their minimum, this leaves out one entry of the
paper's rule (over all activations). The box head's features are the output of a fully
connected layer and its ReLU, exactly 0 in most entries (89.9% and 90.6% on two ResNet-18
digits detectors): over all activations, the 90th percentile falls at the edge of that mass
of zeros, 0.01 on the first (4.2 over the units that fire), which clips 99.5% of every box's
activation; its clipped logits classify the training boxes at chance, and the score, a count
of the firing units, ranks near-OOD boxes below chance. On the second it is 0: one vector
for every box.
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


def _percentile(values, percentile: float):
    """:func:`activation_percentile` of a 1-D tensor of any length (torch.quantile takes at most
    2^24 values: beyond, evenly spaced order statistics stand for them)."""
    if values.numel() > _QUANTILE_LIMIT:
        positions = torch.linspace(0, values.numel() - 1, _QUANTILE_LIMIT).round().long()
        values = values.sort().values[positions]
    return activation_percentile(values[:, None], percentile)


def _firing_activations(features):
    """The entries of (N, D) features above their minimum, 1-D float64.

    Raises:
        ValueError: every entry is the same (nothing fires).
    """
    values = features.double().flatten()
    firing = values[values > values.min()]
    if not firing.numel():
        raise ValueError(f"ReAct: all {values.numel()} training activations equal {float(values[0]):g}; nothing to clip")
    return firing


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
        firing = _firing_activations(data.features)
        self.fitted_config = {
            "percentile": self.percentile,
            "threshold_of": "activations above their minimum",
            "minimum_fraction": 1.0 - firing.numel() / data.features.numel(),
        }
        self.set_fitted(threshold=_percentile(firing, self.percentile).float())
        return self

    def forward(self, features, logits, layer_features=None, logits_of=None):
        self.require_fitted()
        if logits_of is None:
            raise RuntimeError("the 'react' OOD score needs the class layer (logits_of)")
        # A tensor bound: no device-to-host read of the threshold per call.
        clipped = features.float().clamp(max=self.threshold)
        return energy(logits_of(clipped).float())
