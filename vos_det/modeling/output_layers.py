"""The VOS box predictor: Fast R-CNN outputs plus virtual outlier synthesis and OOD scores."""
import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds
from detectron2.utils.registry import Registry

from .embedding_losses import build_embedding_losses
from .energy import energy, max_softmax_ood_score, weighted_energy
from .feature_queues import ClassFeatureQueues
from .mahalanobis import GaussianDiscriminant
from .margin_classifiers import build_box_classifier
from .synthesis import SAMPLERS, robust_cholesky, sample_virtual_outliers
from .uncertainty_loss import ID_LABEL, energy_logistic_loss

__all__ = ["BOX_PREDICTOR_REGISTRY", "VOSOutputLayers", "OOD_SCORES"]

BOX_PREDICTOR_REGISTRY = Registry("BOX_PREDICTOR")
BOX_PREDICTOR_REGISTRY.__doc__ = """
Box predictors (the layers after the box head) for :class:`VOSROIHeads`, selected by
``cfg.MODEL.VOS.BOX_PREDICTOR`` and called as ``predictor(cfg, box_head_output_shape)``.
"""


# Scores that can back Instances.ood_scores / is_ood (MODEL.VOS.OOD_SCORE); "mahalanobis"
# needs statistics fitted with tools/fit_mahalanobis.py.
OOD_SCORES = ("vos", "energy", "weighted_energy", "msp", "mahalanobis")
# Separates the synthesis seeds of consecutive iterations (a prime larger than any schedule).
_SEED_STRIDE = 1_000_003
# At most one warning about non-finite boxes in this many seconds.
_WARNING_PERIOD_SECONDS = 60


@BOX_PREDICTOR_REGISTRY.register()
class VOSOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN box predictor trained with Virtual Outlier Synthesis (Du et al., ICLR 2022).

    On top of :class:`FastRCNNOutputLayers` it

    * keeps per-class FIFO queues of the box features h of foreground proposals,
    * once every queue is full and the iteration is >= ``starting_iter``, fits class
      Gaussians with one shared covariance and samples ``select`` low-likelihood virtual
      outliers v per class (eq. 1-3),
    * trains a logistic regression on the weighted free energy (eq. 5-6): ID features
      (label 1) against outliers (label 0), adding ``loss_vos = beta * CE`` to the losses,
    * at inference adds to every output box ``id_scores`` = p(ID | box) (eq. 8),
      ``ood_scores`` (the score named by ``ood_score``; larger = more OOD) and
      ``is_ood`` = ood_scores > threshold (eq. 9), plus one ``ood_scores_<name>`` field
      per score in :data:`OOD_SCORES` for evaluation.

    ``forward`` returns ``(scores, proposal_deltas, features)``: the features are passed
    along so that ``losses(predictions, proposals)`` keeps detectron2's signature.

    With ``vos_enabled=False`` this is the vanilla detector: no queues, no extra
    parameters, no loss; ``id_scores`` is then sigmoid(-E) of the plain energy.

    The embedding can be regularised, with or without VOS: ``classifier`` replaces the
    linear ``cls_score`` (L2-constrained softmax, CosFace, ArcFace, SphereFace; see
    :mod:`vos_det.modeling.margin_classifiers`), and ``embedding_losses`` add losses on the
    foreground box features (center loss, CIDER).
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        vos_enabled: bool = True,
        sample_number: int = 1000,
        starting_iter: int = 12000,
        sample_from: int = 10000,
        select: int = 1,
        vos_loss_weight: float = 0.1,
        covariance_eps: float = 1e-4,
        covariance_recompute_period: int = 500,
        sampler: str = "chi2",
        synthesis_seed: int = 0,
        ood_score: str = "vos",
        ood_threshold: float = 0.5,
        use_calibrated_threshold: bool = True,
        mahalanobis_stats: str = "",
        classifier: nn.Module = None,
        embedding_losses=(),
        **kwargs,
    ):
        """
        Args:
            input_shape (ShapeSpec): shape of the box-head features, as in the parent class.
            vos_enabled: synthesise outliers and train the uncertainty classifier.
            sample_number: capacity of each class queue.
            starting_iter: first iteration at which outliers may be synthesised.
            sample_from: Gaussian draws per class at each synthesis step.
            select: lowest-likelihood draws kept per class.
            vos_loss_weight: beta, the weight of the uncertainty loss.
            covariance_eps: initial diagonal jitter of the shared covariance.
            covariance_recompute_period: exact covariance recomputation period, in steps.
            sampler: "chi2" or "gaussian", see :func:`sample_virtual_outliers`.
            synthesis_seed: base seed of the per-iteration synthesis random stream.
            ood_score: the score behind ``ood_scores`` and ``is_ood``, one of OOD_SCORES.
            ood_threshold: threshold on ``ood_scores`` used until a calibrated one is stored.
            use_calibrated_threshold: prefer the calibrated threshold when one is stored.
            mahalanobis_stats: file of class Gaussians written by tools/fit_mahalanobis.py
                ("" = none).
            classifier: replaces the linear ``cls_score``: a module with ``forward(x)``
                -> (R, K + 1) logits and ``training_logits(logits, x, labels, iteration)``
                (see :data:`CLASSIFIER_REGISTRY`); None keeps the linear layer.
            embedding_losses (list[nn.Module]): losses on the foreground box features
                (see :data:`EMBEDDING_LOSS_REGISTRY`).
            kwargs: arguments of :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        if classifier is not None:
            self.cls_score = classifier
        self.embedding_losses = nn.ModuleList(embedding_losses)
        if ood_score not in OOD_SCORES:
            raise ValueError(f"MODEL.VOS.OOD_SCORE must be one of {OOD_SCORES}, got {ood_score!r}")
        if not vos_enabled and ood_score in ("vos", "weighted_energy"):
            raise ValueError(
                f"MODEL.VOS.OOD_SCORE={ood_score!r} needs MODEL.VOS.ENABLED=True; a model "
                "trained without VOS can use 'energy' or 'msp'"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"MODEL.VOS.SAMPLER must be one of {SAMPLERS}, got {sampler!r}")
        self.vos_enabled = vos_enabled
        self.starting_iter = starting_iter
        self.sample_from = sample_from
        self.select = select
        self.vos_loss_weight = vos_loss_weight
        self.covariance_eps = covariance_eps
        self.sampler = sampler
        self.synthesis_seed = synthesis_seed
        self.ood_score = ood_score
        self.ood_threshold = ood_threshold
        self.use_calibrated_threshold = use_calibrated_threshold
        # Threshold on ood_scores calibrated on ID validation boxes; NaN until calibrated.
        self.register_buffer("calibrated_ood_threshold", torch.tensor(float("nan")))
        # Post-hoc class Gaussians of the box features, fitted by tools/fit_mahalanobis.py;
        # when loaded, every detection also gets ood_scores_mahalanobis.
        self.mahalanobis = GaussianDiscriminant(self.bbox_pred.in_features)
        if mahalanobis_stats:
            self.mahalanobis.load_statistics(mahalanobis_stats)
        if vos_enabled:
            feature_dim = self.bbox_pred.in_features
            self.feature_queues = ClassFeatureQueues(
                self.num_classes, sample_number, feature_dim, covariance_recompute_period
            )
            # theta_w of eq. 6; the class weights are w = relu(theta_w).
            self.energy_weights = nn.Parameter(torch.rand(self.num_classes))
            # Logistic regression on -E: two logits (outlier, ID).
            self.uncertainty_classifier = nn.Linear(1, 2)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        vos = cfg.MODEL.VOS
        ret.update(
            {
                "vos_enabled": vos.ENABLED,
                "sample_number": vos.SAMPLE_NUMBER,
                "starting_iter": vos.STARTING_ITER,
                "sample_from": vos.SAMPLE_FROM,
                "select": vos.SELECT,
                "vos_loss_weight": vos.LOSS_WEIGHT,
                "covariance_eps": vos.COVARIANCE_EPS,
                "covariance_recompute_period": vos.COVARIANCE_RECOMPUTE_PERIOD,
                "sampler": vos.SAMPLER,
                "synthesis_seed": vos.SYNTHESIS_SEED,
                "ood_score": vos.OOD_SCORE,
                "ood_threshold": vos.OOD_THRESHOLD,
                "use_calibrated_threshold": vos.USE_CALIBRATED_THRESHOLD,
                "mahalanobis_stats": vos.MAHALANOBIS_STATS,
            }
        )
        feature_dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
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
            (R, 4), and the flattened features (R, D).
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        scores, proposal_deltas = super().forward(x)
        return scores, proposal_deltas, x

    # --- training -----------------------------------------------------------------------

    def energy_class_weights(self):
        """The non-negative class weights w = relu(theta_w) of eq. 6, shape (K,)."""
        return F.relu(self.energy_weights)

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
            foreground = self.finite_foreground(scores, features, gt_classes)
            for embedding_loss in self.embedding_losses:
                losses.update(embedding_loss(features[foreground], gt_classes[foreground]))
            if self.vos_enabled:
                losses["loss_vos"] = self.vos_loss_weight * self.uncertainty_loss(
                    scores, features, gt_classes, foreground
                )
        return losses

    def finite_foreground(self, scores, features, gt_classes):
        """Mask of the foreground boxes whose features and logits are all finite.

        A non-finite feature would poison its queue (and the covariance) for good, and a
        non-finite logit the losses: such boxes are left out of both, and the event logged.

        Args:
            scores (Tensor): (R, K + 1) class logits.
            features (Tensor): (R, D) box-head features.
            gt_classes (Tensor): (R,) classes, K = background.

        Returns:
            Tensor: (R,) bool.
        """
        foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
        finite = torch.isfinite(features).all(dim=1) & torch.isfinite(scores).all(dim=1)
        num_dropped = int((foreground & ~finite).sum())
        if num_dropped:
            storage = get_event_storage()
            storage.put_scalar("vos/nonfinite_boxes", num_dropped, smoothing_hint=False)
            log_every_n_seconds(
                logging.WARNING,
                f"VOS: {num_dropped} foreground boxes with NaN/Inf features or logits were "
                f"left out of the queues and the embedding losses (iteration {storage.iter})",
                n=_WARNING_PERIOD_SECONDS,
                name=__name__,
            )
        return foreground & finite

    def uncertainty_loss(self, scores, features, gt_classes, foreground):
        """Enqueue foreground features, synthesise outliers, and return the unweighted L_unc.

        Args:
            scores (Tensor): (R, K + 1) class logits.
            features (Tensor): (R, D) box-head features.
            gt_classes (Tensor): (R,) classes, K = background.
            foreground (Tensor): (R,) bool, the finite foreground boxes to use.

        Returns:
            Tensor: scalar cross-entropy of the logistic regression; exactly zero (but
            connected to the energy weights and the classifier) before synthesis starts.
        """
        storage = get_event_storage()
        self.feature_queues.enqueue(features[foreground], gt_classes[foreground])

        iteration = storage.iter
        outliers = None
        if iteration >= self.starting_iter and self.feature_queues.all_full():
            outliers = self.synthesize_outliers(iteration)
        storage.put_scalar("vos/synthesis_active", float(outliers is not None), smoothing_hint=False)
        if outliers is None or not bool(foreground.any()):
            parameters = [self.energy_weights, *self.uncertainty_classifier.parameters()]
            return sum(p.sum() for p in parameters) * 0.0

        weights = self.energy_class_weights()
        id_logits = scores[foreground, : self.num_classes]
        outlier_logits = self.cls_score(outliers.to(features.dtype))[:, : self.num_classes]
        return energy_logistic_loss(id_logits, outlier_logits, weights, self.uncertainty_classifier, storage)

    @torch.no_grad()
    def synthesize_outliers(self, iteration: int):
        """Fit the class Gaussians to the queues and sample virtual outliers (eq. 1-3).

        Args:
            iteration (int): the training iteration; seeds the private random stream.

        Returns:
            Tensor or None: (K * select, D) float64 outliers, or None if the covariance
            was not finite (the step then trains without the uncertainty loss).
        """
        means, covariance = self.feature_queues.gaussian()
        scale = robust_cholesky(covariance, self.covariance_eps)
        if scale is None:
            return None
        outliers, _ = sample_virtual_outliers(
            means,
            scale,
            self.sample_from,
            self.select,
            sampler=self.sampler,
            seed=self.synthesis_seed * _SEED_STRIDE + iteration,
        )
        return outliers

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
            pred_boxes, scores, pred_classes, id_scores, ood_scores, is_ood and
            ood_scores_<name>; and the indices of the proposals they came from.
        """
        boxes = self.predict_boxes(predictions, proposals)
        probs = self.predict_probs(predictions, proposals)
        instances, kept_indices = fast_rcnn_inference(
            boxes,
            probs,
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )
        # fast_rcnn_inference drops non-finite rows first and indexes the rows left: map its
        # indices back to proposal rows, then score the kept rows of all images at once.
        proposal_indices = []
        for image_boxes, image_probs, kept in zip(boxes, probs, kept_indices):
            finite = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(image_probs).all(dim=1)
            proposal_indices.append(torch.nonzero(finite).flatten()[kept])
        offsets = torch.tensor([0] + [len(p) for p in proposals[:-1]]).cumsum(0).tolist()
        rows = cat([indices + offset for indices, offset in zip(proposal_indices, offsets)])
        self.add_ood_fields(instances, predictions[0][rows, : self.num_classes], predictions[2][rows])
        return instances, proposal_indices

    def ood_score_table(self, logits, features=None):
        """Every OOD score of :data:`OOD_SCORES` (larger = more OOD) and p(ID).

        Args:
            logits (Tensor): (N, K) foreground logits of N boxes.
            features (Tensor, optional): (N, D) their box features; with fitted
                ``mahalanobis`` statistics, adds the "mahalanobis" score.

        Returns:
            tuple[dict[str, Tensor], Tensor]: scores by name, each (N,), and id_scores (N,).
        """
        logits = logits.float()
        table = {"energy": energy(logits), "msp": max_softmax_ood_score(logits)}
        if features is not None and self.mahalanobis.num_classes > 0:
            table["mahalanobis"] = self.mahalanobis.ood_scores(features).float()
        if self.vos_enabled:
            table["weighted_energy"] = weighted_energy(logits, self.energy_class_weights())
            classifier_logits = self.uncertainty_classifier(-table["weighted_energy"][:, None])
            id_scores = torch.softmax(classifier_logits, dim=1)[:, ID_LABEL]
            table["vos"] = 1.0 - id_scores
        else:
            id_scores = torch.sigmoid(-table["energy"])
        return table, id_scores

    def current_ood_threshold(self) -> float:
        """The threshold on ood_scores behind is_ood: calibrated if stored and wanted."""
        calibrated = float(self.calibrated_ood_threshold)
        if self.use_calibrated_threshold and not math.isnan(calibrated):
            return calibrated
        return self.ood_threshold

    def add_ood_fields(self, instances, logits, features=None):
        """Set id_scores, ood_scores, is_ood and ood_scores_<name> on every image's detections.

        The scores of all images are computed in one batch.

        Args:
            instances (list[Instances]): the N_i detections of each image.
            logits (Tensor): (sum N_i, K) their foreground logits, image after image.
            features (Tensor, optional): (sum N_i, D) their box features.
        """
        table, id_scores = self.ood_score_table(logits, features)
        if self.ood_score not in table:
            raise RuntimeError(
                f"MODEL.VOS.OOD_SCORE={self.ood_score!r} is not available: the model has no "
                "Mahalanobis statistics: run tools/fit_mahalanobis.py and set "
                "MODEL.VOS.MAHALANOBIS_STATS to the file it writes"
            )
        threshold = self.current_ood_threshold()
        num_per_image = [len(image_instances) for image_instances in instances]
        per_image = {name: values.split(num_per_image) for name, values in table.items()}
        for i, (image_instances, image_id_scores) in enumerate(zip(instances, id_scores.split(num_per_image))):
            image_instances.id_scores = image_id_scores
            image_instances.ood_scores = per_image[self.ood_score][i]
            image_instances.is_ood = image_instances.ood_scores > threshold
            for name, values in per_image.items():
                image_instances.set(f"ood_scores_{name}", values[i])
