"""k-NN in the hyperspherical embedding of a model trained with an embedding loss: SIREN's
second score ("SIREN-KNN"; Du, Gozum, Ming and Li, NeurIPS 2022).

A model trained with ``SIRENLoss`` or ``CIDERLoss`` (``MODEL.EMBEDDING.LOSSES``) maps each
box's features h to a unit vector z = normalize(g(h)) through the loss's projection head g.
SIREN's release scores a detection by the distance of its z to the k-th nearest z of the ID
training detections (``rcnn/voc_coco_knn.py``: the normalised projections, an exact L2 index),
with k read off a sweep of 1-500. Here the bank is the z of the ID training set's ground-truth
boxes, as for :mod:`.knn`, and

    s(z) = ||z - z_(k)||,   larger = more OOD,

with k chosen on ID validation + OOD validation boxes by the fit tool
(``tools/fit_ood_scores.py --val-id ... --val-ood ...``), never on a test split. The options
are those of the ``knn`` score (``MODEL.OOD.POST_HOC.KNN``: K without validation splits, the
search); the two scores differ in the vectors they search: ``knn`` the box features h
(CIDER's test-time score, as its paper does), this one the embedding z.

A model without an embedding loss has no z: the fit tool leaves the score unfitted and the
box predictor does not compute it.
"""
from dataclasses import replace

from .base import OOD_SCORE_REGISTRY, BoxFitData
from .knn import KNNScore

__all__ = ["EmbeddingKNNScore"]


@OOD_SCORE_REGISTRY.register()
class EmbeddingKNNScore(KNNScore):
    """k-th nearest-neighbour distance of the embedding z to the training boxes' (fitted: the
    bank of z, k). Its ``features`` input is z (:attr:`reads_embedding`)."""

    name = "knn_embedding"
    # The box predictor passes its embedding z = normalize(g(h)) as ``features``.
    reads_embedding = True

    def fit(self, data: BoxFitData, k: int = 0, k_source: str = ""):
        """Store the embeddings of the training boxes (``data.embeddings``).

        Args:
            k, k_source: as :meth:`KNNScore.fit`.

        Raises:
            ValueError: ``data`` has no embeddings (the model has no embedding loss).
        """
        if data.embeddings is None:
            raise ValueError(
                "the 'knn_embedding' OOD score searches the embedding of an embedding loss "
                "(MODEL.EMBEDDING.LOSSES: SIRENLoss or CIDERLoss); this model has none"
            )
        return super().fit(replace(data, features=data.embeddings), k=k, k_source=k_source)
