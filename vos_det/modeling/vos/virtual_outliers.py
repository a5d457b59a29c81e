"""The VOS machinery shared by the box predictor and the image-classification head."""
import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.utils.comm import get_rank
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from ...config.choices import OOD_SCORES, VOS_ONLY_SCORES
from ...config.vos_keys import MIXIN_KEYS, check_vos_arguments, vos_arguments
from ..precision import full_precision
from ..ood_scores.energy import energy, max_softmax_ood_score, weighted_energy
from .diagnostics import mahalanobis_radius_ratio, scalars_to_host
from .feature_queues import ClassFeatureQueues
from .npos import npos_outliers
from .synthesis import robust_cholesky, sample_virtual_outliers
from .uncertainty_heads import build_uncertainty_head, id_probability
from .uncertainty_loss import ID_LABEL, energy_logistic_loss

__all__ = ["OOD_SCORES", "VirtualOutlierMixin", "pop_vos_options"]

# At most this many queued ID features enter the vos/id_radius_ratio diagnostic per step.
_MAX_RADIUS_DIAGNOSTIC_ROWS = 512
# Separates the synthesis seeds of consecutive iterations (a prime larger than any schedule).
_SEED_STRIDE = 1_000_003
# Separates the synthesis seeds of the ranks (per-rank outliers); rank 0 adds nothing, so a
# single-process run draws what it drew before per-rank outliers existed. The CPU generator
# (mt19937) keeps only the low 32 bits of a seed: the stride is below 2**32 (the golden-ratio
# constant, whose multiples for any rank < 1000 stay millions away from the seeds of the
# other iterations, modulo 2**32).
_RANK_SEED_STRIDE = 0x9E3779B9
# At most one warning about non-finite inputs in this many seconds.
_WARNING_PERIOD_SECONDS = 60
# Step scalars that count the rows finite_rows dropped ("vos/nonfinite_<unit>").
_NONFINITE_PREFIX = "vos/nonfinite_"


def pop_vos_options(kwargs: dict) -> dict:
    """Remove the arguments of :meth:`VirtualOutlierMixin.init_virtual_outliers` (one per key
    of :data:`~vos_det.config.vos_keys.MIXIN_KEYS`) from ``kwargs`` (a host constructor's keyword
    arguments) and return them."""
    return {key.argument: kwargs.pop(key.argument) for key in MIXIN_KEYS if key.argument in kwargs}


class VirtualOutlierMixin:
    """Virtual Outlier Synthesis (Du et al., ICLR 2022) for an ``nn.Module`` classifier.

    The host has ``num_classes`` (K) and a ``cls_score`` layer whose first K outputs are the
    class logits, and calls :meth:`init_virtual_outliers` in its constructor. It then has

    * per-class FIFO queues of ID features; once every queue is full and the iteration is
      >= ``starting_iter``, class Gaussians with one shared covariance and ``select``
      low-likelihood virtual outliers per class (eq. 1-3, :meth:`synthesize_outliers`);
    * :meth:`uncertainty_loss`, the logistic regression on the weighted free energy, ID
      features (label 1) against the outliers (label 0) (eq. 5-6);
    * :meth:`ood_score_table`, every OOD score (larger = more OOD) and p(ID) (eq. 8), and the
      threshold of ``is_ood`` (eq. 9), calibrated on ID validation data when stored.

    Without VOS (``vos_enabled=False``) there are no queues and no extra parameters;
    p(ID) is then sigmoid(-E) of the plain energy.
    """

    def init_virtual_outliers(self, feature_dim: int, **options):
        """
        Args:
            feature_dim: D, the dimension of the queued features.
            options: the VOS options, one per key of
                :data:`~vos_det.config.vos_keys.MIXIN_KEYS` (the key in lower case:
                ``sample_number``, ``starting_iter``, ``npos_k``, ...; ``MODEL.VOS.ENABLED`` is
                ``vos_enabled``, ``LOSS_WEIGHT`` ``vos_loss_weight``, ``MODEL.OOD.SCORE``
                ``ood_score``, ``MODEL.OOD.THRESHOLD`` ``ood_threshold``), each kept as an attribute
                of that name; an option not given takes the key's default. Their meaning:
                the keys' docs (docs/config_keys.md).

        Raises:
            ValueError: an unknown option, or a value or a combination that is not allowed.
        """
        options = vos_arguments(**options)
        check_vos_arguments(options)
        self._check_option_combinations(options)
        for name, value in options.items():
            setattr(self, name, value)
        # (means, Cholesky factor) of the class Gaussians of the last synthesis step, read
        # by the diagnostics (not state: not saved, refitted at every step).
        self.last_class_gaussian = None
        # Scalars of the current training step, logged together by put_step_scalars.
        self._step_scalars = {}
        # Threshold on the OOD score calibrated on ID validation data; NaN until calibrated.
        self.register_buffer("calibrated_ood_threshold", torch.tensor(float("nan")))
        if self.vos_enabled:
            self.feature_queues = ClassFeatureQueues(
                self.num_classes, self.sample_number, feature_dim, self.covariance_recompute_period
            )
            # theta_w of eq. 6; the class weights are w = relu(theta_w).
            self.energy_weights = nn.Parameter(torch.rand(self.num_classes))
            # The classifier of -E: two logits (outlier, ID), see uncertainty_heads.py.
            self.uncertainty_classifier = build_uncertainty_head(self.uncertainty_head)

    def _check_option_combinations(self, options):
        """Refuse options that are allowed one by one but not together (ValueError)."""
        num_queued = self.num_classes * options["sample_number"]
        k, boundary = options["npos_k"], options["npos_boundary"]
        npos = options["vos_enabled"] and options["outlier_synthesis"] == "npos"
        if npos and not (k < num_queued and boundary <= num_queued):
            raise ValueError(
                f"MODEL.VOS.NPOS.K={k} must be < and MODEL.VOS.NPOS.BOUNDARY={boundary} <= the "
                f"{num_queued} queued features (K x MODEL.VOS.SAMPLE_NUMBER)"
            )
        if not options["vos_enabled"] and options["ood_score"] in VOS_ONLY_SCORES:
            raise ValueError(
                f"MODEL.OOD.SCORE={options['ood_score']!r} needs MODEL.VOS.ENABLED=True; a model "
                "trained without VOS can use 'energy' or 'msp'"
            )
        if not options["outlier_tail"] and options["select"] > options["sample_from"]:
            raise ValueError(
                f"MODEL.VOS.SELECT={options['select']} must be <= MODEL.VOS.SAMPLE_FROM={options['sample_from']} "
                "(the outliers kept are among the samples drawn)"
            )
        if options["outlier_tail"] > 0 and options["sampler"] != "chi2":
            raise ValueError(
                f"MODEL.VOS.OUTLIER_TAIL={options['outlier_tail']} needs MODEL.VOS.SAMPLER 'chi2', "
                f"not {options['sampler']!r}"
            )

    # --- training -----------------------------------------------------------------------

    def energy_class_weights(self):
        """The non-negative class weights w = relu(theta_w) of eq. 6, shape (K,)."""
        return F.relu(self.energy_weights)

    def finite_rows(self, logits, features, candidates, unit: str):
        """``candidates`` without the rows whose logits or features are not all finite.

        A non-finite feature would poison its queue (and the covariance) for good, and a
        non-finite logit the losses: such rows are left out, and the event is logged as
        ``vos/nonfinite_<unit>`` and in a warning (with VOS, with the step's other
        scalars, by :meth:`uncertainty_loss`: the count is not read back to the host here).

        Args:
            logits (Tensor): (R, C) logits.
            features (Tensor): (R, D) features.
            candidates (Tensor): (R,) bool, the rows that would be used.
            unit (str): what a row is, e.g. "boxes" or "images".

        Returns:
            Tensor: (R,) bool.
        """
        finite = torch.isfinite(features).all(dim=1) & torch.isfinite(logits).all(dim=1)
        self._step_scalars[_NONFINITE_PREFIX + unit] = (candidates & ~finite).sum()
        if not self.vos_enabled:
            self.put_step_scalars(get_event_storage())
        return candidates & finite

    def put_step_scalars(self, storage):
        """Log the scalars the step collected (one device-to-host transfer), and warn about
        non-finite rows (``vos/nonfinite_<unit>`` is logged only when some were dropped)."""
        values, self._step_scalars = scalars_to_host(self._step_scalars), {}
        counts = {name: int(values.pop(name)) for name in list(values) if name.startswith(_NONFINITE_PREFIX)}
        if values:
            storage.put_scalars(**values, smoothing_hint=False)
        for name, num_dropped in counts.items():
            if num_dropped:
                storage.put_scalar(name, num_dropped, smoothing_hint=False)
                log_every_n_seconds(
                    logging.WARNING,
                    f"VOS: {num_dropped} {name[len(_NONFINITE_PREFIX):]} with NaN/Inf features or logits were "
                    f"left out of the queues and the losses (iteration {storage.iter})",
                    n=_WARNING_PERIOD_SECONDS,
                    name=__name__,
                )

    def uncertainty_loss(self, id_logits, id_features, labels):
        """Enqueue the ID features, synthesise outliers, and return the unweighted L_unc.

        Runs with autocast off (:func:`~vos_det.modeling.precision.full_precision`): under
        mixed-precision training the ID logits are taken in float32, the queues, Gaussians
        and outliers are float32 / float64 as :meth:`synthesize_outliers` says, and the
        outliers' logits, the energies and the logistic regression are float32. The step's
        scalars are read back to the host once, at the end (:meth:`put_step_scalars`).

        Args:
            id_logits (Tensor): (N, K) class logits of the N (finite) ID samples.
            id_features (Tensor): (N, D) their features.
            labels (Tensor): (N,) their classes in [0, K).

        Returns:
            Tensor: scalar float32 cross-entropy of the logistic regression (eq. 5); exactly
            zero (but connected to the energy weights and the uncertainty classifier) before
            synthesis starts or without ID samples.
        """
        storage = get_event_storage()
        with full_precision(id_features.device):
            loss = self._uncertainty_loss(id_logits.float(), id_features, labels, storage)
        self.put_step_scalars(storage)
        return loss

    def _uncertainty_loss(self, id_logits, id_features, labels, storage):
        self.feature_queues.enqueue(id_features, labels)
        iteration = storage.iter
        outliers = None
        if iteration >= self.starting_iter and self.feature_queues.all_full():
            outliers = self.synthesize_outliers(iteration)
        self._step_scalars["vos/synthesis_active"] = float(outliers is not None)
        if outliers is not None:
            self._step_scalars.update(self.outlier_geometry(outliers))
        if outliers is None or id_logits.shape[0] == 0:
            parameters = [self.energy_weights, *self.uncertainty_classifier.parameters()]
            return sum(p.sum() for p in parameters) * 0.0
        outlier_logits = self.cls_score(outliers.float())[:, : self.num_classes]
        return energy_logistic_loss(
            id_logits,
            outlier_logits,
            self.energy_class_weights(),
            self.uncertainty_classifier,
            storage,
            balanced=self.balanced_loss,
            scalars=self._step_scalars,
        )

    @torch.no_grad()
    def synthesize_outliers(self, iteration: int):
        """Fit the class Gaussians to the queues and sample virtual outliers (eq. 1-3).

        With ``outlier_synthesis="npos"`` the outliers come from :func:`npos_outliers` on
        the queued features instead (float32, its random draws on the queues' device);
        the Gaussians are still fitted, for the diagnostics (kept in
        ``last_class_gaussian``, see :meth:`outlier_geometry`). Autocast is off here.

        Args:
            iteration (int): the training iteration; seeds the private random stream.

        Returns:
            Tensor or None: (K * select, D) outliers (float64 for "gaussian", the queues'
            float32 for "npos"), or None if the covariance was not finite (the step then
            trains without the uncertainty loss).
        """
        queued = self.feature_queues.features.flatten(0, 1)
        with full_precision(queued.device):
            means, covariance = self.feature_queues.gaussian()
            scale = robust_cholesky(covariance, self.covariance_eps)
            if scale is None:
                return None
            self.last_class_gaussian = (means, scale)
            seed = self.synthesis_seed_at(iteration)
            if self.outlier_synthesis == "npos":
                return npos_outliers(
                    queued,
                    self.num_classes * self.select,
                    k=self.npos_k,
                    num_boundary=self.npos_boundary,
                    num_candidates=self.sample_from,
                    noise_scale=self.npos_noise_scale,
                    generator=torch.Generator(device=queued.device).manual_seed(seed),
                )
            outliers, _ = sample_virtual_outliers(
                means,
                scale,
                self.sample_from,
                self.select,
                sampler=self.sampler,
                seed=seed,
                tail=self.outlier_tail,
                radius_scale=self.outlier_radius_scale,
            )
            return outliers

    @torch.no_grad()
    def outlier_geometry(self, outliers):
        """How far out the outliers lie, relative to the ID features.

        ``vos/outlier_radius_ratio`` and ``vos/id_radius_ratio``: the mean Mahalanobis
        radius (to the nearest class mean, :func:`mahalanobis_radius_ratio`, float32) over
        sqrt(D) of the outliers and of (up to 512 evenly spaced) queued ID features, under
        the Gaussians of the last synthesis step; nothing if there is none.

        Args:
            outliers (Tensor): (M, D) the outliers of the step.

        Returns:
            dict[str, Tensor]: the two scalars, 0-dim tensors on the outliers' device.
        """
        if self.last_class_gaussian is None:
            return {}
        means, scale = self.last_class_gaussian
        queued = self.feature_queues.features.flatten(0, 1)
        stride = max(1, queued.shape[0] // _MAX_RADIUS_DIAGNOSTIC_ROWS)
        with full_precision(outliers.device):
            # float32 solves: a diagnostic, at every step (see mahalanobis_radius_ratio).
            return {
                "vos/outlier_radius_ratio": mahalanobis_radius_ratio(outliers, means, scale, torch.float32).mean(),
                "vos/id_radius_ratio": mahalanobis_radius_ratio(queued[::stride], means, scale, torch.float32).mean(),
            }

    def synthesis_seed_at(self, iteration: int) -> int:
        """The seed of the synthesis stream at ``iteration`` on this process's rank.

        It depends only on (synthesis_seed, iteration) and, with per-rank outliers, the
        rank, so a resumed run redraws the outliers of an uninterrupted one; rank 0 (and a
        single process) uses the same seed with or without per-rank outliers.
        """
        rank = get_rank() if self.per_rank_outliers else 0
        return self.synthesis_seed * _SEED_STRIDE + iteration + rank * _RANK_SEED_STRIDE

    # --- inference ----------------------------------------------------------------------

    def ood_score_table(self, logits, names=None):
        """The energy, MSP and (with VOS) weighted-energy, VOS and release scores, and p(ID).

        "vos_release" is the score the released main-MLP code ranks boxes by
        (``rcnn_predictor.py:135-136``, ``voc_coco_plot.py:46-47`` of that branch): the
        uncertainty head's p(ID) of the UNWEIGHTED logsumexp of the foreground logits,
        negated (larger = more OOD; values in [-1, 0], so its is_ood threshold is -gamma,
        as for "msp"). Negation is exact in float, so the boxes rank and tie as in the
        release.

        Args:
            logits (Tensor): (N, K) class logits.
            names (Collection[str], optional): the scores wanted; None = all. Each is
                computed as when all are, so its values do not depend on this choice.

        Returns:
            tuple[dict[str, Tensor], Tensor]: the wanted scores this host has, by name
            (larger = more OOD), each (N,), and p(ID) (N,): the logistic regression's
            probability with VOS, sigmoid(-E) of the plain energy without.
        """

        def wanted(name):
            return names is None or name in names

        table = {}
        with full_precision(logits.device):
            logits = logits.float()
            if not self.vos_enabled or wanted("energy") or wanted("vos_release"):
                table["energy"] = energy(logits)
            if wanted("msp"):
                table["msp"] = max_softmax_ood_score(logits)
            if self.vos_enabled:
                table["weighted_energy"] = weighted_energy(logits, self.energy_class_weights())
                classifier_logits = self.uncertainty_classifier(-table["weighted_energy"][:, None])
                probabilities = torch.softmax(classifier_logits, dim=1)
                id_scores = probabilities[:, ID_LABEL]
                # p(outlier) read directly, not as 1 - p(ID): in float32 1 - p(ID) rounds to
                # exactly 0 once the logit gap passes ~16.7, tying all confident ID boxes.
                table["vos"] = probabilities[:, 1 - ID_LABEL]
                if wanted("vos_release"):
                    table["vos_release"] = -id_probability(self.uncertainty_classifier, -table["energy"][:, None])
            else:
                id_scores = torch.sigmoid(-table["energy"])
        return {name: values for name, values in table.items() if wanted(name)}, id_scores

    def current_ood_threshold(self) -> float:
        """The threshold on the OOD score behind is_ood: calibrated if stored and wanted."""
        calibrated = float(self.calibrated_ood_threshold)
        if self.use_calibrated_threshold and not math.isnan(calibrated):
            return calibrated
        return self.ood_threshold
