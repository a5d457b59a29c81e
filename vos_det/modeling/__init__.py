"""Modeling of vos_det, grouped by role.

* :mod:`.vos`: Virtual Outlier Synthesis (the mixin, feature queues, samplers, uncertainty loss).
* :mod:`.regularizers`: regularisers of the embedding (margin classifiers, center loss, CIDER).
* :mod:`.ood_scores`: the OOD scores, one per file (energy, Mahalanobis, post-hoc scores).
* Here: the detector's parts that put them together: the VOS box predictor
  (:mod:`.output_layers`), its ROI heads (:mod:`.roi_heads`), and the backbones (a tiny CPU
  FPN, :mod:`.backbone`; RegNet FPN, :mod:`.regnet`); :mod:`.precision`, the float32 context
  that the VOS maths and the OOD scores run in under mixed precision.
"""
from . import backbone as _backbone  # registers build_tiny_fpn_backbone
from .ood_scores import OOD_SCORE_REGISTRY, POST_HOC_SCORES
from .regularizers import CLASSIFIER_REGISTRY, EMBEDDING_LOSS_REGISTRY, CIDERLoss, CenterLoss
from .vos import ClassFeatureQueues, robust_cholesky, sample_virtual_outliers
from . import regnet as _regnet  # registers build_regnet_fpn_backbone
from .output_layers import BOX_PREDICTOR_REGISTRY, OOD_SCORES, VOSOutputLayers
from .roi_heads import VOSROIHeads
