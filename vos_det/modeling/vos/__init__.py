"""Virtual Outlier Synthesis (Du et al., ICLR 2022) and its variants: what a classifier needs
to train against synthesised outliers.

Belongs here: the mixin a host classifier (box predictor, image head) inherits
(:class:`VirtualOutlierMixin`), the per-class feature queues and their all-gather, the
outlier samplers (class Gaussians, NPOS), the uncertainty heads and their loss on the energy,
and the diagnostics of what the uncertainty head learned (during training, :mod:`.diagnostics`;
from a checkpoint, :mod:`.uncertainty_report`). A new outlier-synthesis method goes here
as one file, chosen in :meth:`VirtualOutlierMixin.synthesize_outliers`. Scores computed at
inference belong to :mod:`vos_det.modeling.ood_scores`, losses on the embedding to
:mod:`vos_det.modeling.regularizers`.
"""
from .feature_queues import ClassFeatureQueues
from .npos import npos_outliers
from .synthesis import SAMPLERS, robust_cholesky, sample_virtual_outliers
from .uncertainty_heads import UNCERTAINTY_HEADS, MLPUncertaintyHead, build_uncertainty_head, id_probability
from .uncertainty_loss import ID_LABEL, energy_logistic_loss
from .virtual_outliers import OOD_SCORES, VirtualOutlierMixin, pop_vos_options

__all__ = [
    "ID_LABEL",
    "OOD_SCORES",
    "SAMPLERS",
    "UNCERTAINTY_HEADS",
    "ClassFeatureQueues",
    "MLPUncertaintyHead",
    "VirtualOutlierMixin",
    "build_uncertainty_head",
    "energy_logistic_loss",
    "id_probability",
    "npos_outliers",
    "pop_vos_options",
    "robust_cholesky",
    "sample_virtual_outliers",
]
