"""A trained model, ready to evaluate: built from its config, its checkpoint checked and loaded."""
from typing import Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..modeling.ood_scores import attach_post_hoc_hooks
from .checkpoint import check_checkpoint_matches_model

__all__ = ["load_trained_model"]


def load_trained_model(cfg, weights: Optional[str] = None):
    """The model of ``cfg`` with trained weights loaded, in eval mode.

    The checkpoint is checked against the built model before it is loaded
    (:func:`~vos_det.engine.checkpoint.check_checkpoint_matches_model`): detectron2's
    checkpointer would skip a tensor of another shape with a warning and leave that layer
    random. The forward hooks of a fitted post-hoc score (SAFE) are attached.

    Args:
        cfg (CfgNode): the config the weights were trained with (any META_ARCHITECTURE).
        weights (str, optional): the checkpoint; default ``cfg.MODEL.WEIGHTS``.

    Returns:
        nn.Module: the model, in eval mode, on ``cfg.MODEL.DEVICE``.

    Raises:
        FileNotFoundError: no such checkpoint (named).
        UserError: the file is truncated or no checkpoint, or a post-hoc state of the config
            was fitted on other weights.
        ValueError: a tensor of the checkpoint does not have the model's shape (each named).
    """
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    model = attach_post_hoc_hooks(build_model(cfg))
    check_checkpoint_matches_model(weights, model)
    DetectionCheckpointer(model).load(weights)
    return model.eval()
