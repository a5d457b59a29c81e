"""Regularisers of the box embedding, with or without VOS, each chosen by name from the config.

Belongs here: replacements of the linear class layer (:data:`CLASSIFIER_REGISTRY`:
L2-constrained softmax, CosFace, ArcFace, SphereFace; ``MODEL.EMBEDDING.CLASSIFIER``) and
losses on the foreground box features (:data:`EMBEDDING_LOSS_REGISTRY`: center loss, CIDER, SIREN;
``MODEL.EMBEDDING.LOSSES``). A new one is one file registered in one of the two registries
and imported below.
"""
from .center_loss import CenterLoss
from .cider import CIDERLoss
from .embedding_losses import EMBEDDING_LOSS_REGISTRY, build_embedding_losses
from .margin_classifiers import CLASSIFIER_REGISTRY, LinearClassifier, build_box_classifier
from .siren import SIRENLoss

__all__ = [
    "CIDERLoss",
    "CLASSIFIER_REGISTRY",
    "EMBEDDING_LOSS_REGISTRY",
    "CenterLoss",
    "LinearClassifier",
    "SIRENLoss",
    "build_box_classifier",
    "build_embedding_losses",
]
