"""SIREN's vMF score (Du, Gozum, Ming and Li, "SIREN: Shaping Representations for Detecting
Out-of-Distribution Objects", NeurIPS 2022).

A model trained with :class:`~vos_det.modeling.regularizers.siren.SIRENLoss` holds, per
class k, a prototype mu_k and a learned concentration kappa_k of a von Mises-Fisher
distribution on the unit sphere of its box embedding z = normalize(g(h)) (g: the loss's
projection head, h: the box features). A box is scored by the largest class log-density,

    siren(z) = -max_k [ kappa_k mu_k.z + log C_d(kappa_k) ],   larger = more OOD,

the negated ID score of the released evaluation (deeplearning-wisc/siren,
``rcnn/voc_coco_vmf.py`` lines 98-105 and 151-166: the max over classes of the vMF
log-likelihood of the normalised projection of each detection, with the trained prototypes
and concentrations). Every class takes part, as there; a class never seen in training (a
zero prototype) scores log C_d(kappa_k), as if at 90 degrees from its direction.

The score needs nothing fitted, only a model trained with ``SIRENLoss`` in
``MODEL.EMBEDDING.LOSSES``: the box predictor then adds ``ood_scores_siren`` to every
detection; with ``MODEL.OOD.SCORE siren`` and no such loss it refuses to be built.

The paper's second score is the k-NN distance in the same embedding ("SIREN-KNN",
``rcnn/voc_coco_knn.py``): the post-hoc score ``knn_embedding`` (:mod:`.knn_embedding`).
The ``knn`` score (:mod:`.knn`) searches the box features h instead (the input of the
projection head).
"""
from .von_mises_fisher import vmf_log_likelihoods

__all__ = ["siren_ood_score"]


def siren_ood_score(embeddings, prototypes, kappa):
    """The negated largest class vMF log-density of each embedding.

    Args:
        embeddings (Tensor): (N, d) unit vectors z.
        prototypes (Tensor): (K, d) unit vectors mu_k (zero rows for unseen classes).
        kappa (Tensor): (K,) concentrations >= 0.

    Returns:
        Tensor: (N,) -max_k log vMF(z; mu_k, kappa_k), larger = more OOD.
    """
    return -vmf_log_likelihoods(embeddings, prototypes, kappa).max(dim=1).values
