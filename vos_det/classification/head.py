"""The classifier's predictor: K-way logits, trained with Virtual Outlier Synthesis.

The counterpart of :class:`vos_det.modeling.VOSOutputLayers` for one box per image (the
whole image): no background class and no box regression. It reuses the same pieces
(:class:`ClassFeatureQueues`, :func:`robust_cholesky`, :func:`sample_virtual_outliers`,
:func:`weighted_logsumexp` and the energy scores) with the same semantics and signs.
"""
import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from ..modeling.energy import energy, max_softmax_ood_score, weighted_energy
from ..modeling.feature_queues import ClassFeatureQueues
from ..modeling.output_layers import OOD_SCORES
from ..modeling.synthesis import SAMPLERS, robust_cholesky, sample_virtual_outliers
from ..modeling.uncertainty_loss import ID_LABEL, energy_logistic_loss

__all__ = ["VOSClassificationHead"]

# Separates the synthesis seeds of consecutive iterations (as in VOSOutputLayers).
_SEED_STRIDE = 1_000_003
_WARNING_PERIOD_SECONDS = 60
# Initialisation of the class layer, as detectron2's FastRCNNOutputLayers.
_CLS_SCORE_INIT_STD = 0.01


class VOSClassificationHead(nn.Module):
    """Linear K-way classifier with VOS queues, outlier synthesis and uncertainty loss.

    Training (:meth:`losses`): ``loss_cls`` = cross-entropy over the K classes and, with VOS
    enabled, ``loss_vos`` = beta x the logistic loss separating the ID features (label 1)
    from virtual outliers (label 0) by their weighted energy (paper eq. 5-6). The features of
    every training image are queued under its class; once every queue is full and the
    iteration is >= ``starting_iter``, ``select`` outliers per class are drawn from the class
    Gaussians (eq. 1-3). Before that ``loss_vos`` is exactly 0 and still in the graph.

    Inference (:meth:`inference`): per image, the softmax over the K classes, the predicted
    class, p(ID) and every OOD score of :data:`OOD_SCORES` (larger = more OOD).
    """

    @configurable
    def __init__(
        self,
        input_dim: int,
        *,
        num_classes: int,
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
    ):
        """
        Args:
            input_dim: D, the dimension of the image features (the projection's output).
            num_classes: K, the number of ID classes.
            vos_enabled, sample_number, starting_iter, sample_from, select, vos_loss_weight,
            covariance_eps, covariance_recompute_period, sampler, synthesis_seed, ood_score,
            ood_threshold, use_calibrated_threshold: as for
                :class:`vos_det.modeling.VOSOutputLayers` (the MODEL.VOS keys).
        """
        super().__init__()
        if num_classes <= 0 or input_dim <= 0:
            raise ValueError(f"need positive num_classes and input_dim, got {num_classes}, {input_dim}")
        if ood_score not in OOD_SCORES:
            raise ValueError(f"MODEL.VOS.OOD_SCORE must be one of {OOD_SCORES}, got {ood_score!r}")
        if not vos_enabled and ood_score in ("vos", "weighted_energy"):
            raise ValueError(
                f"MODEL.VOS.OOD_SCORE={ood_score!r} needs MODEL.VOS.ENABLED=True; a model "
                "trained without VOS can use 'energy' or 'msp'"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"MODEL.VOS.SAMPLER must be one of {SAMPLERS}, got {sampler!r}")
        self.num_classes = num_classes
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
        self.cls_score = nn.Linear(input_dim, num_classes)
        nn.init.normal_(self.cls_score.weight, std=_CLS_SCORE_INIT_STD)
        nn.init.constant_(self.cls_score.bias, 0)
        # Threshold on ood_score calibrated on ID validation images; NaN until calibrated.
        self.register_buffer("calibrated_ood_threshold", torch.tensor(float("nan")))
        if vos_enabled:
            self.feature_queues = ClassFeatureQueues(
                num_classes, sample_number, input_dim, covariance_recompute_period
            )
            # theta_w of eq. 6; the class weights are w = relu(theta_w).
            self.energy_weights = nn.Parameter(torch.rand(num_classes))
            # Logistic regression on -E: two logits (outlier, ID).
            self.uncertainty_classifier = nn.Linear(1, 2)

    @classmethod
    def from_config(cls, cfg, input_dim):
        vos = cfg.MODEL.VOS
        return {
            "input_dim": input_dim,
            "num_classes": cfg.MODEL.VOS_CLASSIFIER.NUM_CLASSES,
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
        }

    def forward(self, features):
        """
        Args:
            features (Tensor): (N, D) image features.

        Returns:
            Tensor: (N, K) class logits.
        """
        return self.cls_score(features)

    # --- training -----------------------------------------------------------------------

    def energy_class_weights(self):
        """The non-negative class weights w = relu(theta_w) of eq. 6, shape (K,)."""
        return F.relu(self.energy_weights)

    def losses(self, logits, features, labels):
        """Cross-entropy plus, with VOS enabled, ``loss_vos`` (beta x eq. 5).

        Args:
            logits (Tensor): (N, K) class logits.
            features (Tensor): (N, D) the features they were computed from.
            labels (Tensor): (N,) int64 classes in [0, K).

        Returns:
            dict[str, Tensor]: ``loss_cls`` and, with VOS enabled, ``loss_vos``.
        """
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"training labels must lie in [0, {self.num_classes}) (MODEL.VOS_CLASSIFIER."
                f"NUM_CLASSES), got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        losses = {"loss_cls": F.cross_entropy(logits, labels)}
        if self.vos_enabled:
            losses["loss_vos"] = self.vos_loss_weight * self.uncertainty_loss(logits, features, labels)
        return losses

    def uncertainty_loss(self, logits, features, labels):
        """Enqueue the features, synthesise outliers, and return the unweighted L_unc.

        Args:
            logits (Tensor): (N, K) class logits.
            features (Tensor): (N, D) features.
            labels (Tensor): (N,) classes.

        Returns:
            Tensor: scalar cross-entropy of the logistic regression; exactly zero (but
            connected to the energy weights and the uncertainty classifier) before synthesis.
        """
        storage = get_event_storage()
        # Non-finite features would poison the queues and the covariance for good.
        finite = torch.isfinite(features).all(dim=1) & torch.isfinite(logits).all(dim=1)
        num_dropped = int((~finite).sum())
        if num_dropped:
            storage.put_scalar("vos/nonfinite_images", num_dropped, smoothing_hint=False)
            log_every_n_seconds(
                logging.WARNING,
                f"VOS: {num_dropped} images with NaN/Inf features or logits were left out of "
                f"the queues and the uncertainty loss (iteration {storage.iter})",
                n=_WARNING_PERIOD_SECONDS,
                name=__name__,
            )
        self.feature_queues.enqueue(features[finite], labels[finite])

        iteration = storage.iter
        outliers = None
        if iteration >= self.starting_iter and self.feature_queues.all_full():
            outliers = self.synthesize_outliers(iteration)
        storage.put_scalar("vos/synthesis_active", float(outliers is not None), smoothing_hint=False)
        if outliers is None or not bool(finite.any()):
            parameters = [self.energy_weights, *self.uncertainty_classifier.parameters()]
            return sum(p.sum() for p in parameters) * 0.0

        weights = self.energy_class_weights()
        id_logits = logits[finite]
        outlier_logits = self.cls_score(outliers.to(features.dtype))
        return energy_logistic_loss(id_logits, outlier_logits, weights, self.uncertainty_classifier, storage)

    @torch.no_grad()
    def synthesize_outliers(self, iteration: int):
        """Fit the class Gaussians to the queues and sample virtual outliers (eq. 1-3).

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

    def ood_score_table(self, logits):
        """Every OOD score of :data:`OOD_SCORES` the model has (larger = more OOD) and p(ID).

        Args:
            logits (Tensor): (N, K) class logits.

        Returns:
            tuple[dict[str, Tensor], Tensor]: scores by name, each (N,), and p(ID) (N,):
            the logistic regression's probability with VOS, sigmoid(-energy) without.
        """
        logits = logits.float()
        table = {"energy": energy(logits), "msp": max_softmax_ood_score(logits)}
        if self.vos_enabled:
            table["weighted_energy"] = weighted_energy(logits, self.energy_class_weights())
            classifier_logits = self.uncertainty_classifier(-table["weighted_energy"][:, None])
            id_scores = torch.softmax(classifier_logits, dim=1)[:, ID_LABEL]
            table["vos"] = 1.0 - id_scores
        else:
            id_scores = torch.sigmoid(-table["energy"])
        return table, id_scores

    def current_ood_threshold(self) -> float:
        """The threshold on ood_score behind is_ood: calibrated if stored and wanted."""
        calibrated = float(self.calibrated_ood_threshold)
        if self.use_calibrated_threshold and not math.isnan(calibrated):
            return calibrated
        return self.ood_threshold

    def inference(self, logits):
        """The per-image classification outputs.

        Args:
            logits (Tensor): (N, K) class logits of N images.

        Returns:
            list[dict]: per image, ``{"classification": {...}}``, see
            :class:`vos_det.classification.VOSImageClassifier` for the fields.
        """
        probabilities = torch.softmax(logits.float(), dim=1)
        table, id_scores = self.ood_score_table(logits)
        threshold = self.current_ood_threshold()
        results = []
        for index in range(logits.shape[0]):
            ood_scores = {name: values[index] for name, values in table.items()}
            ood_score = ood_scores[self.ood_score]
            results.append(
                {
                    "classification": {
                        "pred_class": probabilities[index].argmax(),
                        "scores": probabilities[index],
                        "id_score": id_scores[index],
                        "ood_score": ood_score,
                        "is_ood": ood_score > threshold,
                        "ood_scores": ood_scores,
                    }
                }
            )
        return results
