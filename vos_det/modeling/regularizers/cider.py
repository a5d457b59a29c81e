"""CIDER: compactness and dispersion losses on a hyperspherical projection (Ming et al.,
"How to Exploit Hyperspherical Embeddings for Out-of-Distribution Detection?", ICLR 2023)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..config_options import options_from_config
from .embedding_losses import EMBEDDING_LOSS_REGISTRY
from .hypersphere import HypersphereEmbedding

__all__ = ["CIDERLoss"]


@EMBEDDING_LOSS_REGISTRY.register()
class CIDERLoss(HypersphereEmbedding):
    """CIDER's losses on z = normalize(g(h)), g a two-layer projection head.

    With class prototypes mu_k on the unit sphere and temperature tau:

    * dispersion: L_dis = 1/K' sum_i log( 1/(K'-1) sum_{j != i} exp(mu_i . mu_j / tau) ), over
      the K' >= 2 classes seen so far, on the prototypes updated with this batch (the
      gradient reaches the features through the update);
    * compactness: L_comp = -1/N sum_i log( exp(z_i . mu_{c(i)} / tau) / sum_j exp(z_i . mu_j / tau) ),
      on the same updated prototypes, detached (the gradient goes to z only);

    both scaled by tau / 0.1 as in the authors' code, and weighted by lambda_comp and
    lambda_dis. The prototypes are updated by the per-sample EMA of
    :func:`~.hypersphere.sequential_prototype_update` and kept in a buffer. Only the foreground boxes
    enter: the background is not a class with a prototype.
    """

    @configurable
    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        *,
        embedding_dim: int,
        temperature: float,
        prototype_momentum: float,
        compactness_weight: float,
        dispersion_weight: float,
    ):
        """
        Args:
            feature_dim: D, the dimension of the box features h.
            num_classes: K, the number of foreground classes.
            embedding_dim: d, the dimension of the hyperspherical embedding z.
            temperature: tau.
            prototype_momentum: alpha of the prototype EMA, in [0, 1).
            compactness_weight: lambda_comp.
            dispersion_weight: lambda_dis.
        """
        projection = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, embedding_dim)
        )
        super().__init__(projection, num_classes, embedding_dim, prototype_momentum, "MODEL.EMBEDDING.CIDER")
        if temperature <= 0:
            raise ValueError(f"MODEL.EMBEDDING.CIDER.TEMPERATURE must be > 0, got {temperature}")
        self.temperature = temperature
        self.compactness_weight = compactness_weight
        self.dispersion_weight = dispersion_weight

    @classmethod
    def from_config(cls, cfg, feature_dim, num_classes):
        options = options_from_config(
            cfg.MODEL.EMBEDDING.CIDER,
            "embedding_dim", "temperature", "prototype_momentum", "compactness_weight", "dispersion_weight",
        )
        return {"feature_dim": feature_dim, "num_classes": num_classes, **options}

    def forward(self, features, labels):
        """
        Args:
            features (Tensor): (N, D) foreground box features.
            labels (Tensor): (N,) their classes in [0, K).

        Returns:
            dict[str, Tensor]: ``loss_cider_comp`` and ``loss_cider_dis``, weighted; in
            training mode the stored prototypes are updated.
        """
        embeddings = self.embed(features)
        zero = embeddings.sum() * 0.0
        if features.shape[0] == 0:
            return {"loss_cider_comp": zero, "loss_cider_dis": zero}
        updated = self.updated_prototypes(embeddings, labels)
        compactness = F.cross_entropy(embeddings @ updated.detach().t() / self.temperature, labels)
        scale = self.temperature / 0.1
        return {
            "loss_cider_comp": self.compactness_weight * scale * compactness,
            "loss_cider_dis": self.dispersion_weight * scale * self.dispersion(updated, zero),
        }

    def dispersion(self, prototypes, zero):
        """L_dis over the prototypes of the classes seen so far; ``zero`` if fewer than 2.

        Args:
            prototypes (Tensor): (K, d) prototypes, zero rows for unseen classes.
            zero (Tensor): a zero scalar connected to the graph.
        """
        seen = prototypes.norm(dim=1) > 0
        num_seen = int(seen.sum())
        if num_seen < 2:
            return zero
        seen_prototypes = prototypes[seen]
        similarities = seen_prototypes @ seen_prototypes.t() / self.temperature
        off_diagonal = ~torch.eye(num_seen, dtype=torch.bool, device=prototypes.device)
        similarities = similarities.masked_fill(~off_diagonal, float("-inf"))
        return (torch.logsumexp(similarities, dim=1) - math.log(num_seen - 1)).mean()
