"""The VOS box predictor: Fast R-CNN outputs plus virtual outlier synthesis and OOD scores."""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry

from ..config.vos_keys import vos_kwargs_from_config
from .precision import full_precision
from .ood_scores import build_post_hoc_scores
from .ood_scores.mahalanobis import GaussianDiscriminant
from .ood_scores.scoring import PostHocScoring
from .regularizers.embedding_losses import build_embedding_losses, losses_learning_score
from .regularizers.margin_classifiers import LinearClassifier, build_box_classifier
from .release_inference import nms_before_clip_inference
from .vos.virtual_outliers import OOD_SCORES, VirtualOutlierMixin, pop_vos_options

__all__ = ["BOX_PREDICTOR_REGISTRY", "VOSOutputLayers", "OOD_SCORES"]

BOX_PREDICTOR_REGISTRY = Registry("BOX_PREDICTOR")
BOX_PREDICTOR_REGISTRY.__doc__ = """
Box predictors (the layers after the box head) for :class:`VOSROIHeads`, selected by
``cfg.MODEL.VOS.BOX_PREDICTOR`` and called as ``predictor(cfg, box_head_output_shape)``.
"""


@BOX_PREDICTOR_REGISTRY.register()
class VOSOutputLayers(VirtualOutlierMixin, FastRCNNOutputLayers):
    """Fast R-CNN box predictor trained with Virtual Outlier Synthesis (Du et al., ICLR 2022).

    On top of :class:`FastRCNNOutputLayers`, with :class:`VirtualOutlierMixin`, it

    * keeps per-class FIFO queues of the box features h of foreground proposals,
    * once every queue is full and the iteration is >= ``starting_iter``, fits class
      Gaussians with one shared covariance and samples ``select`` low-likelihood virtual
      outliers v per class (eq. 1-3),
    * trains a logistic regression on the weighted free energy (eq. 5-6): ID features
      (label 1) against outliers (label 0), adding ``loss_vos = beta * CE`` to the losses,
    * at inference adds to every output box ``id_scores`` = p(ID | box) (eq. 8),
      ``ood_scores`` (the score named by ``ood_score``; larger = more OOD) and
      ``is_ood`` = ood_scores > threshold (eq. 9), plus ``ood_scores_<name>`` of that
      score; with ``compute_all_ood_scores`` (set by the evaluation through
      :func:`~vos_det.evaluation.records.computing_all_ood_scores`) one
      ``ood_scores_<name>`` field per score of :data:`OOD_SCORES` the model has. The other
      scores are not computed.

    ``forward`` returns ``(scores, proposal_deltas, features)``: the features are passed
    along so that ``losses(predictions, proposals)`` keeps detectron2's signature.

    With ``vos_enabled=False`` this is the vanilla detector: no queues, no extra
    parameters, no loss; ``id_scores`` is then sigmoid(-E) of the plain energy.

    The embedding can be regularised, with or without VOS: ``classifier`` replaces the
    linear ``cls_score`` (L2-constrained softmax, CosFace, ArcFace, SphereFace; see
    :mod:`vos_det.modeling.regularizers`), and ``embedding_losses`` add losses on the
    foreground box features (center loss, CIDER, SIREN); a loss that learns an OOD score
    (SIREN's ``siren``) adds it to the scores of every detection.

    With ``bottleneck_dim`` > 0 (a variant, off by default), a Linear + ReLU of that width
    sits between the box head and the class layer: the class logits, the queues, the
    synthesis, the embedding losses and the Mahalanobis statistics all use its output,
    while the box regression reads the box head's output.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        mahalanobis_stats: str = "",
        classifier: nn.Module = None,
        embedding_losses=(),
        bottleneck_dim: int = 0,
        post_hoc_scores: nn.ModuleDict = None,
        post_hoc_state: str = "",
        nms_before_clip: bool = False,
        **kwargs,
    ):
        """
        Args:
            input_shape (ShapeSpec): shape of the box-head features, as in the parent class.
            mahalanobis_stats: file of class Gaussians written by tools/fit_mahalanobis.py
                ("" = none).
            classifier: replaces the linear ``cls_score``: a module with ``forward(x)``
                -> (R, K + 1) logits and ``training_logits(logits, x, labels, iteration)``
                (see :data:`CLASSIFIER_REGISTRY`); None keeps the linear layer.
            embedding_losses (list[nn.Module]): losses on the foreground box features
                (see :data:`EMBEDDING_LOSS_REGISTRY`).
            bottleneck_dim: width of the Linear + ReLU before the class layer; 0 = none.
                ``classifier``, if given, must take inputs of that width.
            post_hoc_scores: name -> post-hoc OOD score (see
                :func:`~vos_det.modeling.ood_scores.build_post_hoc_scores`); None = all,
                with their defaults.
            post_hoc_state: their fitted state, written by tools/fit_ood_scores.py ("" = none).
            nms_before_clip: run the per-class NMS on the boxes before they are clipped to
                the image, as the released VOS evaluation does
                (:func:`~vos_det.modeling.release_inference.nms_before_clip_inference`;
                protocol "vos_official"); False: detectron2's clip-then-NMS.
            kwargs: the VOS options, arguments of
                :meth:`VirtualOutlierMixin.init_virtual_outliers` (vos_enabled,
                sample_number, starting_iter, ..., the MODEL.VOS keys), and those of
                :class:`FastRCNNOutputLayers`.
        """
        vos_options = pop_vos_options(kwargs)
        super().__init__(input_shape, **kwargs)
        if bottleneck_dim < 0:
            raise ValueError(f"MODEL.VOS.BOTTLENECK_DIM must be >= 0, got {bottleneck_dim}")
        feature_dim = self.bbox_pred.in_features
        self.bottleneck = nn.Identity()
        if bottleneck_dim:
            self.bottleneck = nn.Sequential(nn.Linear(feature_dim, bottleneck_dim), nn.ReLU(inplace=True))
            feature_dim = bottleneck_dim
            self.cls_score = LinearClassifier(feature_dim, self.num_classes + 1)
        if classifier is not None:
            self.cls_score = classifier
        self.embedding_losses = nn.ModuleList(embedding_losses)
        self.init_virtual_outliers(feature_dim, **vos_options)
        self._check_embedding_score_is_learnt()
        # Post-hoc class Gaussians of the box features, fitted by tools/fit_mahalanobis.py;
        # when loaded, every detection also gets ood_scores_mahalanobis.
        self.mahalanobis = GaussianDiscriminant(feature_dim)
        if mahalanobis_stats:
            self.mahalanobis.load_statistics(mahalanobis_stats)
        # Post-hoc OOD scores (maxlogit, gen, and those fitted in post_hoc_state): every
        # detection gets their ood_scores_<name>.
        if post_hoc_scores is None:
            post_hoc_scores = build_post_hoc_scores()
        self.post_hoc = PostHocScoring(post_hoc_scores, post_hoc_state, feature_dim, self.num_classes)
        self.nms_before_clip = nms_before_clip
        # Inference computes every OOD score the model has when True, else ood_score alone
        # (vos_det.evaluation.records.computing_all_ood_scores sets it for the evaluation).
        self.compute_all_ood_scores = False

    def _check_embedding_score_is_learnt(self):
        """Refuse an ``ood_score`` that an embedding loss learns, if this model has no such loss."""
        learnt_by = losses_learning_score(self.ood_score)
        if learnt_by and self.ood_score not in self.embedding_score_names():
            trained_with = [type(loss).__name__ for loss in self.embedding_losses]
            raise ValueError(
                f"MODEL.OOD.SCORE={self.ood_score!r} is learnt during training by {' or '.join(learnt_by)}: "
                f"add it to MODEL.EMBEDDING.LOSSES (this model has {trained_with}) and train the model with it"
            )

    def embedding_score_names(self):
        """The OOD scores learnt by this model's embedding losses (e.g. SIREN's "siren")."""
        return [name for loss in self.embedding_losses for name in getattr(loss, "ood_score_names", ())]

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(vos_kwargs_from_config(cfg))
        ret["mahalanobis_stats"] = cfg.MODEL.OOD.MAHALANOBIS_STATS
        ret["post_hoc_scores"] = build_post_hoc_scores(cfg)
        ret["post_hoc_state"] = cfg.MODEL.OOD.POST_HOC.STATE
        # Protocol "vos_official" replays the release's evaluation, its inference included.
        ret["nms_before_clip"] = cfg.TEST.OOD.PROTOCOL == "vos_official"
        feature_dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        ret["bottleneck_dim"] = cfg.MODEL.VOS.BOTTLENECK_DIM
        feature_dim = ret["bottleneck_dim"] or feature_dim
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        ret["classifier"] = build_box_classifier(cfg, feature_dim, num_classes + 1)
        ret["embedding_losses"] = build_embedding_losses(cfg, feature_dim, num_classes)
        return ret

    def forward(self, x):
        """
        Args:
            x (Tensor): (R, ...) box-head features of R proposals.

        Returns:
            tuple[Tensor, Tensor, Tensor]: class logits (R, K + 1), box deltas (R, K * 4) or
            (R, 4), and the features the class layer reads (R, D): the flattened input, or
            the bottleneck's output.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        features = self.bottleneck(x)
        return self.cls_score(features), self.bbox_pred(x), features

    # --- training -----------------------------------------------------------------------

    def losses(self, predictions, proposals):
        """Fast R-CNN losses, the embedding losses, and ``loss_vos`` (beta * eq. 5).

        Args:
            predictions: the return value of :meth:`forward`.
            proposals (list[Instances]): sampled proposals with ``gt_classes``.

        Returns:
            dict[str, Tensor]: loss_cls (on the classifier's training logits, with its
            margin), loss_box_reg, those of ``embedding_losses`` and, with VOS, loss_vos.
        """
        scores, proposal_deltas, features = predictions
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else scores.new_zeros(0).long()
        storage = get_event_storage()
        training_scores = scores
        if hasattr(self.cls_score, "training_logits"):
            training_scores = self.cls_score.training_logits(scores, features, gt_classes, storage.iter)
        losses = super().losses((training_scores, proposal_deltas), proposals)
        if self.vos_enabled or len(self.embedding_losses):
            foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
            foreground = self.finite_rows(scores, features, foreground, "boxes")
            # One read of the number of rows back to the host, for the three selections.
            rows = foreground.nonzero().squeeze(1)
            foreground_features, foreground_classes = features[rows], gt_classes[rows]
            for embedding_loss in self.embedding_losses:
                losses.update(embedding_loss(foreground_features, foreground_classes))
            if self.vos_enabled:
                losses["loss_vos"] = self.vos_loss_weight * self.uncertainty_loss(
                    scores[rows, : self.num_classes], foreground_features, foreground_classes
                )
        return losses

    # --- inference ----------------------------------------------------------------------

    def predict_boxes_for_gt_classes(self, predictions, proposals):
        return super().predict_boxes_for_gt_classes(predictions[:2], proposals)

    def predict_boxes(self, predictions, proposals):
        return super().predict_boxes(predictions[:2], proposals)

    def predict_probs(self, predictions, proposals):
        return super().predict_probs(predictions[:2], proposals)

    def inference(self, predictions, proposals):
        """Detections as in detectron2, each with its OOD fields.

        Args:
            predictions: the return value of :meth:`forward`.
            proposals (list[Instances]): proposals with ``proposal_boxes``.

        Returns:
            tuple[list[Instances], list[Tensor]]: per image, the detections with
            pred_boxes, scores, pred_classes, id_scores, ood_scores, is_ood,
            ood_scores_<name> (see :meth:`ood_field_names`) and proposal_scores (the maximum
            foreground probability of the detection's proposal, which the released VOS
            evaluation selects boxes by); and the indices of the proposals they came from.
        """
        boxes = self.predict_boxes(predictions, proposals)
        probs = self.predict_probs(predictions, proposals)
        infer = nms_before_clip_inference if self.nms_before_clip else fast_rcnn_inference
        instances, kept_indices = infer(
            boxes,
            probs,
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )
        proposal_indices = _proposal_indices(boxes, probs, kept_indices)
        # The kept rows of all images, scored at once.
        offsets = torch.tensor([0] + [len(p) for p in proposals[:-1]]).cumsum(0).tolist()
        rows = cat([indices + offset for indices, offset in zip(proposal_indices, offsets)])
        features = kept_proposal_boxes = None
        if self._reads_box_inputs(self.ood_field_names()):
            features = predictions[2][rows]
            kept_proposal_boxes = [p.proposal_boxes.tensor[i] for p, i in zip(proposals, proposal_indices)]
        self.add_ood_fields(instances, predictions[0][rows, : self.num_classes], features, kept_proposal_boxes)
        # Gathered from all images at once (one index op instead of one per image).
        proposal_scores = cat(probs)[rows, : self.num_classes].max(dim=1).values
        for image_instances, scores in zip(instances, proposal_scores.split([len(i) for i in instances])):
            image_instances.proposal_scores = scores
        return instances, proposal_indices

    def ood_field_names(self):
        """The scores whose ``ood_scores_<name>`` fields inference sets.

        Returns:
            tuple[str] or None: ``(ood_score,)``, or None (every score the model has) while
            :attr:`compute_all_ood_scores` is set.
        """
        return None if self.compute_all_ood_scores else (self.ood_score,)

    def _reads_box_inputs(self, names):
        """Whether any score of ``names`` (None = all) reads the box features or proposal
        boxes, beyond the logits: the Mahalanobis score, the fitted post-hoc scores and the
        scores of the embedding losses."""
        if names is None:
            return True
        scores, learnt = self.post_hoc.scores, self.embedding_score_names()
        return any(
            name == "mahalanobis" or name in learnt or (name in scores and scores[name].needs_fit) for name in names
        )

    def ood_score_table(self, logits, features=None, boxes=None, names=None):
        """The OOD scores of :data:`OOD_SCORES` the model has (larger = more OOD) and p(ID).

        Args:
            logits (Tensor): (N, K) foreground logits of N boxes.
            features (Tensor, optional): (N, D) their box features; with fitted
                ``mahalanobis`` statistics, adds the "mahalanobis" score, the fitted
                post-hoc scores (see :attr:`post_hoc`) and the scores of the embedding
                losses (:meth:`embedding_score_names`).
            boxes (list[Tensor], optional): per image, the (n_i, 4) proposal boxes of the N
                rows, for the post-hoc scores that pool the backbone's feature maps.
            names (Collection[str], optional): the scores wanted (None = all); the others
                are not computed, and those computed have the values they have among all.

        Returns:
            tuple[dict[str, Tensor], Tensor]: scores by name, each (N,), and id_scores (N,).
        """
        table, id_scores = super().ood_score_table(logits, names)
        if features is not None and self.mahalanobis.num_classes > 0 and (names is None or "mahalanobis" in names):
            with full_precision(features.device):
                table["mahalanobis"] = self.mahalanobis.ood_scores(features).float()
        if features is not None:
            table.update(self._embedding_scores(features, names))
        table.update(self.post_hoc.table(features, logits, boxes, self.foreground_logits, names, self.embedding_of()))
        return table, id_scores

    def _embedding_scores(self, features, names=None):
        """The scores of :meth:`embedding_score_names` among ``names`` (None = all), each (N,)
        float32, computed with autocast off."""
        table = {}
        with full_precision(features.device):
            for loss in self.embedding_losses:
                wanted = [name for name in getattr(loss, "ood_score_names", ()) if names is None or name in names]
                if wanted:
                    scores = loss.ood_scores(features)
                    table.update({name: scores[name].float() for name in wanted})
        return table

    def embedding_of(self):
        """The map of (N, D) box features to the (N, d) unit embedding z of this model's
        hyperspherical embedding loss (SIREN's or CIDER's ``embed``), or None without one."""
        return next((loss.embed for loss in self.embedding_losses if hasattr(loss, "embed")), None)

    def foreground_logits(self, features):
        """The (N, K) foreground logits of (N, D) box features (the class layer's first K)."""
        return self.cls_score(features)[:, : self.num_classes]

    def add_ood_fields(self, instances, logits, features=None, boxes=None):
        """Set id_scores, ood_scores, is_ood and ood_scores_<name> on every image's detections.

        The scores of all images are computed in one batch, those of
        :meth:`ood_field_names` only.

        Args:
            instances (list[Instances]): the N_i detections of each image.
            logits (Tensor): (sum N_i, K) their foreground logits, image after image.
            features (Tensor, optional): (sum N_i, D) their box features.
            boxes (list[Tensor], optional): the (N_i, 4) proposal boxes of each image's
                detections.
        """
        table, id_scores = self.ood_score_table(logits, features, boxes, self.ood_field_names())
        if self.ood_score in self.post_hoc.scores and self.ood_score not in table:
            raise RuntimeError(
                f"MODEL.OOD.SCORE={self.ood_score!r} is not available: " + self.post_hoc.missing_reason(self.ood_score)
            )
        if self.ood_score not in table:
            raise RuntimeError(
                f"MODEL.OOD.SCORE={self.ood_score!r} is not available: the model has no "
                "Mahalanobis statistics: run tools/fit_mahalanobis.py and set "
                "MODEL.OOD.MAHALANOBIS_STATS to the file it writes"
            )
        is_ood = table[self.ood_score] > self.current_ood_threshold()
        num_per_image = [len(image_instances) for image_instances in instances]
        per_image = {name: values.split(num_per_image) for name, values in table.items()}
        per_image_fields = zip(instances, id_scores.split(num_per_image), is_ood.split(num_per_image))
        for i, (image_instances, image_id_scores, image_is_ood) in enumerate(per_image_fields):
            image_instances.id_scores = image_id_scores
            image_instances.ood_scores = per_image[self.ood_score][i]
            image_instances.is_ood = image_is_ood
            for name, values in per_image.items():
                image_instances.set(f"ood_scores_{name}", values[i])


def _proposal_indices(boxes, probs, kept_indices):
    """Per image, the proposal row of each detection.

    ``fast_rcnn_inference`` (and :func:`nms_before_clip_inference`) drop the rows whose boxes
    or probabilities are not all finite and index the rows left.

    Args:
        boxes, probs (list[Tensor]): per image, the (R_i, ...) decoded boxes and class
            probabilities given to the inference.
        kept_indices (list[Tensor]): per image, what the inference returned.

    Returns:
        list[Tensor]: per image, the indices into its R_i proposals.
    """
    # A finite sum has finite terms only (an inf or NaN term makes it inf or NaN): then no
    # row was dropped. A sum that overflows takes the exact path below.
    sums = torch.stack([tensor.sum() for tensor in (*boxes, *probs)])
    if torch.isfinite(sums).all():
        return list(kept_indices)
    proposal_indices = []
    for image_boxes, image_probs, kept in zip(boxes, probs, kept_indices):
        finite = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(image_probs).all(dim=1)
        proposal_indices.append(torch.nonzero(finite).flatten()[kept])
    return proposal_indices
