"""Multi-layer Mahalanobis distance of a box (the feature-concatenation variant of Lee, Lee,
Lee and Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018).

Each box is ROI-pooled from several feature maps (FPN levels / backbone stages, see
:mod:`.box_pooling`); the pooled vectors, and by default the penultimate box feature, are
concatenated into x. Class Gaussians with one shared covariance are fitted to the training
boxes' x (:class:`~.mahalanobis.GaussianDiscriminant`), and the score is the minimum squared
Mahalanobis distance to a class mean, larger = more OOD. A new class can be
added from its boxes alone (:meth:`MultiLayerMahalanobisScore.add_class`), as a refit would.
"""
from typing import Sequence

import torch

from .base import OOD_SCORE_REGISTRY, PostHocScore
from .mahalanobis import GaussianDiscriminant

__all__ = ["MultiLayerMahalanobisScore"]


@OOD_SCORE_REGISTRY.register()
class MultiLayerMahalanobisScore(PostHocScore):
    """Mahalanobis distance on concatenated multi-layer box features (fitted: the Gaussians)."""

    name = "mahalanobis_multilayer"

    def __init__(self, in_features: Sequence[str] = (), include_box_features: bool = True, eps: float = 1e-6):
        """
        Args:
            in_features: the feature maps to pool (e.g. "p2".."p5", or "res4").
            include_box_features: append the penultimate box feature.
            eps: diagonal regulariser of the shared covariance.
        """
        super().__init__()
        self.in_features = tuple(in_features)
        self.include_box_features = include_box_features
        self.eps = eps

    @classmethod
    def from_config(cls, cfg):
        multilayer = cfg.MODEL.OOD.POST_HOC.MULTILAYER
        return cls(
            in_features=multilayer.IN_FEATURES or cfg.MODEL.ROI_HEADS.IN_FEATURES,
            include_box_features=multilayer.INCLUDE_BOX_FEATURES,
        )

    def layer_names(self):
        return tuple(self.fitted_config.get("in_features", self.in_features))

    def _input(self, features, layer_features):
        parts = [self._layer_input(layer_features, self.layer_names())]
        if self.fitted_config.get("include_box_features", self.include_box_features):
            parts.append(features.float())
        return torch.cat(parts, dim=1)

    def fit(self, data):
        x = self._input(data.features, data.layer_features)
        self.fitted_config = {
            "in_features": list(self.in_features),
            "include_box_features": self.include_box_features,
            "feature_dim": x.shape[1],
        }
        self.after_load()
        self.gaussians.fit(x, data.labels, data.num_classes)
        return self

    def after_load(self):
        self.gaussians = GaussianDiscriminant(self.fitted_config["feature_dim"], self.eps).to(self.device)

    def add_class(self, features, layer_features) -> int:
        """Add a class from the (n, D) box features and pooled maps of its boxes; its index."""
        self.require_fitted()
        return self.gaussians.add_class(self._input(features, layer_features))

    def forward(self, features, logits, layer_features=None, logits_of=None):
        self.require_fitted()
        return self.gaussians.ood_scores(self._input(features, layer_features)).float()
