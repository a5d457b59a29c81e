"""OOD scores: one file per score, larger = more OOD.

Belongs here: every way of scoring a box (or image) as out-of-distribution.

* The scores of the logits alone, which every VOS host computes in one batch
  (:meth:`~vos_det.modeling.vos.VirtualOutlierMixin.ood_score_table`): the energy, its VOS
  weighting and MSP, as pure functions in :mod:`.energy` (imported from there: the module
  and its ``energy`` function share a name).
* The Mahalanobis score of the box features (:class:`GaussianDiscriminant` in
  :mod:`.mahalanobis`): its class Gaussians, fitted by ``tools/fit_mahalanobis.py``, are
  buffers of the box predictor (``mahalanobis.*`` in its checkpoint).
* SIREN's vMF score (:func:`siren_ood_score` in :mod:`.siren`, the vMF density in
  :mod:`.von_mises_fisher`): its class distributions are learnt by the embedding loss
  ``SIRENLoss``, which computes it for the box predictor.
* The post-hoc scores behind the one small interface of :mod:`.base` (:class:`PostHocScore`,
  a ``nn.Module`` registered in :data:`OOD_SCORE_REGISTRY` under the name of its
  ``ood_scores_<name>`` field; paper cited in its docstring): :func:`build_post_hoc_scores`
  builds them all from a config, ``tools/fit_ood_scores.py`` fits those that need it on the ID
  training boxes, and :mod:`.scoring` runs them inside the box predictor. A new post-hoc score
  is one file registered there and imported below. SAFE reads modules of the backbone
  through forward hooks: :func:`attach_post_hoc_hooks` puts them on a built detector. A
  score that combines others (``fused``) names them in :meth:`~.base.PostHocScore.part_names`
  and gets their values.
"""
from torch import nn

from ...config.choices import POST_HOC_SCORES
from .base import FIT_TOOL, OOD_SCORE_REGISTRY, BoxFitData, PostHocScore
from .box_pooling import pool_box_layers
from .fused import FusedScore
from .gen import GENScore, generalized_entropy
from .knn import KNNScore, kth_neighbour_distance
from .knn_embedding import EmbeddingKNNScore
from .mahalanobis import GaussianDiscriminant
from .mahalanobis_multilayer import MultiLayerMahalanobisScore
from .maxlogit import MaxLogitScore, max_logit_ood_score
from .react import ReActScore
from .safe import SAFEScore, attach_post_hoc_hooks
from .siren import siren_ood_score
from .state_file import POST_HOC_STATE_FILE, load_post_hoc_state, save_post_hoc_state
from .vim import ViMScore

# The post-hoc scores of the embedding of an embedding loss (MODEL.EMBEDDING.LOSSES), those
# with ``reads_embedding``: not fitted, and not computed, for a model trained without one.
EMBEDDING_POST_HOC_SCORES = tuple(cls.name for _, cls in OOD_SCORE_REGISTRY if cls.reads_embedding)

__all__ = [
    "EMBEDDING_POST_HOC_SCORES",
    "FIT_TOOL",
    "OOD_SCORE_REGISTRY",
    "POST_HOC_SCORES",
    "POST_HOC_STATE_FILE",
    "BoxFitData",
    "GaussianDiscriminant",
    "PostHocScore",
    "attach_post_hoc_hooks",
    "build_post_hoc_scores",
    "load_post_hoc_state",
    "pool_box_layers",
    "save_post_hoc_state",
    "siren_ood_score",
]


def build_post_hoc_scores(cfg=None) -> nn.ModuleDict:
    """Every registered post-hoc score, unfitted, by name.

    Args:
        cfg: a config with the MODEL.OOD.POST_HOC keys; None = every score's defaults.

    Returns:
        nn.ModuleDict: name -> :class:`PostHocScore`, those of POST_HOC_SCORES first, in
        that order, then any other registered one.
    """
    classes = sorted(
        (cls for _, cls in OOD_SCORE_REGISTRY),
        key=lambda cls: POST_HOC_SCORES.index(cls.name) if cls.name in POST_HOC_SCORES else len(POST_HOC_SCORES),
    )
    return nn.ModuleDict(
        {cls.name: cls.from_config(cfg) if cfg is not None and hasattr(cls, "from_config") else cls() for cls in classes}
    )
