"""Modeling of vos_det: the VOS box predictor, its ROI heads, embedding regularisers, and a
tiny CPU backbone."""
from . import backbone as _backbone  # registers build_tiny_fpn_backbone
from .center_loss import CenterLoss
from .cider import CIDERLoss
from .embedding_losses import EMBEDDING_LOSS_REGISTRY
from .feature_queues import ClassFeatureQueues
from .margin_classifiers import CLASSIFIER_REGISTRY
from .ood_scores import OOD_SCORE_REGISTRY, POST_HOC_SCORES
from . import regnet as _regnet  # registers build_regnet_fpn_backbone
from .output_layers import BOX_PREDICTOR_REGISTRY, OOD_SCORES, VOSOutputLayers
from .roi_heads import VOSROIHeads
from .synthesis import robust_cholesky, sample_virtual_outliers
