"""Auxiliary losses on the box-head embedding (center loss, CIDER, SIREN), chosen by config."""
from detectron2.utils.registry import Registry

from ..config_options import registered

__all__ = ["EMBEDDING_LOSS_REGISTRY", "build_embedding_losses", "losses_learning_score"]

EMBEDDING_LOSS_REGISTRY = Registry("EMBEDDING_LOSS")
EMBEDDING_LOSS_REGISTRY.__doc__ = """
Regularisers of the box features, listed by name in ``cfg.MODEL.EMBEDDING.LOSSES`` and
called as ``loss(cfg, feature_dim, num_classes)``. Each is an ``nn.Module`` whose
``forward(features, labels)`` takes the (N, D) features of the N foreground boxes of a batch
and their (N,) classes in [0, K), and returns a dict of weighted losses. A loss that learns
an OOD score of its own (SIREN's vMF score) names it in ``ood_score_names`` and computes it
in ``ood_scores(features)``: (N, D) box features -> {name: (N,) scores, larger = more OOD}.
"""


def build_embedding_losses(cfg, feature_dim: int, num_classes: int):
    """The losses named in ``cfg.MODEL.EMBEDDING.LOSSES``, as a list of modules.

    Args:
        cfg (CfgNode): the config.
        feature_dim: D, the dimension of the box features.
        num_classes: K, the number of foreground classes.

    Raises:
        ValueError: a name is listed twice.
        ConfigError: a name that is not registered.
    """
    names = list(cfg.MODEL.EMBEDDING.LOSSES)
    if len(set(names)) != len(names):
        raise ValueError(f"MODEL.EMBEDDING.LOSSES lists a loss twice: {names}")
    return [registered(EMBEDDING_LOSS_REGISTRY, "MODEL.EMBEDDING.LOSSES", name)(cfg, feature_dim, num_classes) for name in names]


def losses_learning_score(score: str):
    """The names of the registered losses that learn the OOD score ``score`` (for messages).

    Args:
        score: an OOD score name, e.g. "siren".

    Returns:
        list[str]: sorted; empty if no loss learns it.
    """
    return sorted(name for name, loss in EMBEDDING_LOSS_REGISTRY if score in getattr(loss, "ood_score_names", ()))
