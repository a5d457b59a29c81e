"""Auxiliary losses on the box-head embedding (center loss, CIDER), chosen by config."""
from detectron2.utils.registry import Registry

from ..config_options import registered

__all__ = ["EMBEDDING_LOSS_REGISTRY", "build_embedding_losses"]

EMBEDDING_LOSS_REGISTRY = Registry("EMBEDDING_LOSS")
EMBEDDING_LOSS_REGISTRY.__doc__ = """
Regularisers of the box features, listed by name in ``cfg.MODEL.EMBEDDING.LOSSES`` and
called as ``loss(cfg, feature_dim, num_classes)``. Each is an ``nn.Module`` whose
``forward(features, labels)`` takes the (N, D) features of the N foreground boxes of a batch
and their (N,) classes in [0, K), and returns a dict of weighted losses.
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
