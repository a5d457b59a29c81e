"""Modeling of vos_det: the VOS box predictor, its ROI heads, and a tiny CPU backbone."""
from . import backbone as _backbone  # registers build_tiny_fpn_backbone
from .feature_queues import ClassFeatureQueues
from .output_layers import BOX_PREDICTOR_REGISTRY, OOD_SCORES, VOSOutputLayers
from .roi_heads import VOSROIHeads
from .synthesis import robust_cholesky, sample_virtual_outliers
