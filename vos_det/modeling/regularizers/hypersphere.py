"""Class prototypes on a hypersphere of projected box features, shared by the losses that
shape the box embedding into per-class directions (CIDER, SIREN).

A projection head g maps each box's features h to z = normalize(g(h)) on the unit sphere; each
class k keeps a prototype mu_k (a buffer, saved with the model) moved by a per-sample EMA of
the embeddings of its boxes (:func:`sequential_prototype_update`), not by gradient.
"""
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["HypersphereEmbedding", "sequential_prototype_update"]

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


class HypersphereEmbedding(nn.Module):
    """A projection head onto the unit sphere and the (K, d) class prototypes on it."""

    def __init__(self, projection: nn.Module, num_classes: int, embedding_dim: int, prototype_momentum: float,
                 config_node: str):
        """
        Args:
            projection: g, mapping (N, D) box features to (N, d).
            num_classes: K, the number of foreground classes.
            embedding_dim: d, the dimension of the embedding z.
            prototype_momentum: alpha of the prototype EMA, in [0, 1).
            config_node: the config node of the loss, named in errors
                (e.g. ``MODEL.EMBEDDING.CIDER``).
        """
        super().__init__()
        if not 0.0 <= prototype_momentum < 1.0:
            raise ValueError(f"{config_node}.PROTOTYPE_MOMENTUM must be in [0, 1), got {prototype_momentum}")
        self.projection = projection
        self.prototype_momentum = prototype_momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, embedding_dim))

    def embed(self, features):
        """(N, D) box features -> (N, d) unit-norm embeddings z."""
        return F.normalize(self.projection(features), dim=1, eps=_NORM_EPS)

    def updated_prototypes(self, embeddings, labels):
        """The (K, d) prototypes after this batch's EMA (:func:`sequential_prototype_update`),
        differentiable with respect to ``embeddings``; kept in the buffer (detached) in training
        mode.

        Args:
            embeddings (Tensor): (N, d) unit-norm embeddings of the foreground boxes.
            labels (Tensor): (N,) their classes in [0, K).
        """
        stored = self.prototypes.to(embeddings.dtype)
        updated = sequential_prototype_update(stored, embeddings, labels, self.prototype_momentum)
        if self.training:
            self.prototypes.copy_(updated.detach())
        return updated
