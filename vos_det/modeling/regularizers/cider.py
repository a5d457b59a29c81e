"""CIDER: compactness and dispersion losses on a hyperspherical projection (Ming et al.,
"How to Exploit Hyperspherical Embeddings for Out-of-Distribution Detection?", ICLR 2023)."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..config_options import options_from_config
from .embedding_losses import EMBEDDING_LOSS_REGISTRY

__all__ = ["CIDERLoss", "sequential_prototype_update"]

_NORM_EPS = 1e-12


def sequential_prototype_update(prototypes, embeddings, labels, momentum: float):
    """The prototypes after CIDER's per-sample EMA over the batch, in batch order.

    For each sample i in turn: mu_{c(i)} <- normalize(momentum * mu_{c(i)} + (1 - momentum) z_i).
    Samples of different classes touch different prototypes, so the loop runs over the
    position of a sample within its class (as many steps as the largest class count), each
    step updating every class that has a sample at that position. The result is the same as
    the one-sample-at-a-time loop, and differentiable with respect to ``embeddings``.

    Args:
        prototypes (Tensor): (K, d) prototypes before the batch (a zero row stays zero until
            its class is seen, then becomes the first embedding's direction).
        embeddings (Tensor): (N, d) unit-norm embeddings z.
        labels (Tensor): (N,) their classes in [0, K).
        momentum (float): alpha in [0, 1).

    Returns:
        Tensor: (K, d) the updated prototypes.
    """
    num_classes = prototypes.shape[0]
    if labels.numel() == 0:
        return prototypes
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    counts = torch.bincount(sorted_labels, minlength=num_classes)
    first_of_class = torch.cumsum(counts, 0) - counts
    position_in_class = torch.arange(labels.numel(), device=labels.device) - first_of_class[sorted_labels]
    for position in range(int(counts.max())):
        at_position = position_in_class == position
        classes = sorted_labels[at_position]
        updated = F.normalize(
            momentum * prototypes[classes] + (1.0 - momentum) * embeddings[order[at_position]], dim=1, eps=_NORM_EPS
        )
        prototypes = prototypes.index_put((classes,), updated)
    return prototypes


@EMBEDDING_LOSS_REGISTRY.register()
class CIDERLoss(nn.Module):
    """CIDER's losses on z = normalize(g(h)), g a two-layer projection head.

    With class prototypes mu_k on the unit sphere and temperature tau:

    * dispersion: L_dis = 1/K' sum_i log( 1/(K'-1) sum_{j != i} exp(mu_i . mu_j / tau) ), over
      the K' >= 2 classes seen so far, on the prototypes updated with this batch (the
      gradient reaches the features through the update);
    * compactness: L_comp = -1/N sum_i log( exp(z_i . mu_{c(i)} / tau) / sum_j exp(z_i . mu_j / tau) ),
      on the same updated prototypes, detached (the gradient goes to z only);

    both scaled by tau / 0.1 as in the authors' code, and weighted by lambda_comp and
    lambda_dis. The prototypes are updated by the per-sample EMA of
    :func:`sequential_prototype_update` and kept in a buffer. Only the foreground boxes
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
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MODEL.EMBEDDING.CIDER.TEMPERATURE must be > 0, got {temperature}")
        if not 0.0 <= prototype_momentum < 1.0:
            raise ValueError(f"MODEL.EMBEDDING.CIDER.PROTOTYPE_MOMENTUM must be in [0, 1), got {prototype_momentum}")
        self.projection = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, embedding_dim)
        )
        self.temperature = temperature
        self.prototype_momentum = prototype_momentum
        self.compactness_weight = compactness_weight
        self.dispersion_weight = dispersion_weight
        self.register_buffer("prototypes", torch.zeros(num_classes, embedding_dim))

    @classmethod
    def from_config(cls, cfg, feature_dim, num_classes):
        options = options_from_config(
            cfg.MODEL.EMBEDDING.CIDER,
            "embedding_dim", "temperature", "prototype_momentum", "compactness_weight", "dispersion_weight",
        )
        return {"feature_dim": feature_dim, "num_classes": num_classes, **options}

    def embed(self, features):
        """(N, D) box features -> (N, d) unit-norm embeddings z."""
        return F.normalize(self.projection(features), dim=1, eps=_NORM_EPS)

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
        stored = self.prototypes.to(embeddings.dtype)
        updated = sequential_prototype_update(stored, embeddings, labels, self.prototype_momentum)
        compactness = F.cross_entropy(embeddings @ updated.detach().t() / self.temperature, labels)
        if self.training:
            self.prototypes.copy_(updated.detach())
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
