"""SIREN: von Mises-Fisher class distributions on a hyperspherical projection of the box
features (Du, Gozum, Ming and Li, "SIREN: Shaping Representations for Detecting
Out-of-Distribution Objects", NeurIPS 2022; code: deeplearning-wisc/siren).

A projection head g (Linear(D, d) -> ReLU -> Linear(d, d)) maps the features h of each
foreground box to z = normalize(g(h)) on the unit sphere S^{d-1}. Class k is a vMF
distribution with mean direction (prototype) mu_k and a learned concentration
kappa_k = relu(w_k), w_k initialised to ``kappa_init``. The loss is the negative log
posterior of the box's class under the K vMF densities with equal priors,

    L = -1/N sum_i log( C_d(kappa_y) exp(kappa_y mu_y.z_i) / sum_k C_d(kappa_k) exp(kappa_k mu_k.z_i) ),

a cross-entropy over the logits kappa_k mu_k.z_i + log C_d(kappa_k) (normaliser:
:func:`~vos_det.modeling.ood_scores.von_mises_fisher.vmf_log_normalizer`), weighted by
``loss_weight``. Its gradient reaches the projection head through z and the concentrations
through both terms. The prototypes are not learned by gradient: before the loss, each box of
the batch in turn moves its class's prototype, mu_y <- normalize(alpha mu_y + (1 - alpha) z)
with z detached (:func:`~vos_det.modeling.regularizers.hypersphere.sequential_prototype_update`,
the same per-sample EMA as CIDER's), and the loss uses the updated prototypes, detached. At
test time :mod:`vos_det.modeling.ood_scores.siren` scores each detection by its largest class
log-density.

As released, for Faster R-CNN (``rcnn/detection/modeling/roihead_gmm.py``): the projection
head (lines 540-544), kappa = relu of a ``Linear(K, 1)`` weight initialised to 10 (lines
546-547, 829-832), the per-sample prototype update with alpha = 0.95 before the loss (lines
819-821), the loss (``weighted_vmf_loss``, lines 678-683) on the foreground boxes only
(line 800) times ``SIREN.LOSS_WEIGHT`` (line 845); the Faster R-CNN run's config sets
``PROJECTION_DIM`` 64 and ``LOSS_WEIGHT`` 0.1
(``rcnn/detection/configs/VOC-Detection/faster-rcnn/center64_0.1.yaml`` lines 24-26; the
DETR runs use d = 16 and weight 1.5, ``detr/configs/voc/siren.sh``).

Differences from the release:

* the posterior is computed in log space (a cross-entropy), without the release's
  ``+ 1e-6`` inside the logarithm, which bounds each box's loss by -log(1e-6) = 13.8;
* with no foreground box in the batch the loss is 0 (the release's mean over no boxes is
  NaN), still connected to every parameter so that DDP sees them all;
* the prototypes are a buffer of the model, saved in its checkpoints, instead of a tensor
  written to ``proto.npy`` at the last iteration; as in the release they are updated by each
  process from its own boxes (not synchronised across DDP ranks);
* Faster R-CNN's box head output (or ``MODEL.VOS.BOTTLENECK_DIM``'s bottleneck) is projected,
  where the paper's main detector projects Deformable DETR's decoder queries;
* the release runs SIREN without VOS; here it is an embedding loss, so it can be combined
  with VOS (``MODEL.VOS.ENABLED``) or any other regulariser.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..config_options import options_from_config
from ..ood_scores.siren import siren_ood_score
from ..ood_scores.von_mises_fisher import vmf_log_likelihoods
from .embedding_losses import EMBEDDING_LOSS_REGISTRY
from .hypersphere import HypersphereEmbedding

__all__ = ["SIRENLoss"]


@EMBEDDING_LOSS_REGISTRY.register()
class SIRENLoss(HypersphereEmbedding):
    """SIREN's vMF maximum-likelihood loss on z = normalize(g(h)); it learns the ``siren``
    OOD score (see the module docstring)."""

    ood_score_names = ("siren",)

    @configurable
    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        *,
        embedding_dim: int,
        loss_weight: float,
        kappa_init: float,
        prototype_momentum: float,
    ):
        """
        Args:
            feature_dim: D, the dimension of the box features h.
            num_classes: K, the number of foreground classes.
            embedding_dim: d >= 2, the dimension of the embedding z.
            loss_weight: the weight of the loss.
            kappa_init: the initial concentration of every class, > 0.
            prototype_momentum: alpha of the prototype EMA, in [0, 1).
        """
        if embedding_dim < 2:
            raise ValueError(f"MODEL.EMBEDDING.SIREN.EMBEDDING_DIM must be >= 2, got {embedding_dim}")
        if kappa_init <= 0:
            raise ValueError(f"MODEL.EMBEDDING.SIREN.KAPPA_INIT must be > 0, got {kappa_init}")
        projection = nn.Sequential(
            nn.Linear(feature_dim, embedding_dim), nn.ReLU(inplace=True), nn.Linear(embedding_dim, embedding_dim)
        )
        super().__init__(projection, num_classes, embedding_dim, prototype_momentum, "MODEL.EMBEDDING.SIREN")
        # w of kappa = relu(w), one per class.
        self.kappa_weight = nn.Parameter(torch.full((num_classes,), float(kappa_init)))
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, feature_dim, num_classes):
        options = options_from_config(
            cfg.MODEL.EMBEDDING.SIREN, "embedding_dim", "loss_weight", "kappa_init", "prototype_momentum"
        )
        return {"feature_dim": feature_dim, "num_classes": num_classes, **options}

    def concentrations(self):
        """(K,) kappa_k = relu(w_k)."""
        return F.relu(self.kappa_weight)

    def forward(self, features, labels):
        """
        Args:
            features (Tensor): (N, D) foreground box features.
            labels (Tensor): (N,) their classes in [0, K).

        Returns:
            dict[str, Tensor]: ``loss_siren``, weighted; in training mode the stored
            prototypes are updated.
        """
        embeddings = self.embed(features)
        kappa = self.concentrations()
        if features.shape[0] == 0:
            return {"loss_siren": embeddings.sum() * 0.0 + kappa.sum() * 0.0}
        prototypes = self.updated_prototypes(embeddings.detach(), labels)
        log_likelihoods = vmf_log_likelihoods(embeddings, prototypes, kappa)
        return {"loss_siren": self.loss_weight * F.cross_entropy(log_likelihoods, labels)}

    def ood_scores(self, features):
        """The OOD scores this loss learns, of N boxes.

        Args:
            features (Tensor): (N, D) box features.

        Returns:
            dict[str, Tensor]: ``{"siren": (N,)}``, larger = more OOD.
        """
        return {"siren": siren_ood_score(self.embed(features), self.prototypes, self.concentrations())}
