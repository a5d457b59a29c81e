"""The VOS machinery shared by the box predictor and the image-classification head."""
import inspect
import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.utils.comm import get_rank
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from ...config_validation import validate_config
from ...utils.precision import full_precision
from ..ood_scores import POST_HOC_SCORES
from ..ood_scores.energy import energy, max_softmax_ood_score, weighted_energy
from .feature_queues import ClassFeatureQueues
from .npos import npos_outliers
from .synthesis import SAMPLERS, robust_cholesky, sample_virtual_outliers
from .uncertainty_heads import UNCERTAINTY_HEADS, build_uncertainty_head, id_probability
from .uncertainty_loss import ID_LABEL, energy_logistic_loss
from .vos_diagnostics import mahalanobis_radius_ratio, scalars_to_host

__all__ = ["OOD_SCORES", "VirtualOutlierMixin", "pop_vos_options", "vos_kwargs_from_config"]

# Scores that can back ood_scores / is_ood (MODEL.VOS.OOD_SCORE); "mahalanobis" needs
# statistics fitted with tools/fit_mahalanobis.py, and the post-hoc scores of
# vos_det/modeling/ood_scores/ (maxlogit, gen, knn, ...) tools/fit_ood_scores.py for those
# with fitted state (box predictor only).
OOD_SCORES = ("vos", "energy", "weighted_energy", "msp", "vos_release", "mahalanobis") + POST_HOC_SCORES
# The scores that need the uncertainty head and energy weights of a VOS-trained model.
VOS_ONLY_SCORES = ("vos", "vos_release", "weighted_energy")
# How virtual outliers are made (MODEL.VOS.OUTLIER_SYNTHESIS): the paper's class Gaussians,
# or NPOS-style perturbations of boundary ID features (vos_det/modeling/vos/npos.py).
OUTLIER_SYNTHESES = ("gaussian", "npos")
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


def vos_kwargs_from_config(cfg) -> dict:
    """The ``MODEL.VOS`` keys as the keyword arguments of :meth:`init_virtual_outliers`.

    The whole config is validated first (:func:`vos_det.config_validation.validate_config`),
    so a value out of range fails when the model is built, not hours into training.
    """
    validate_config(cfg)
    vos = cfg.MODEL.VOS
    return {
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
        "per_rank_outliers": vos.PER_RANK_OUTLIERS,
        "ood_score": vos.OOD_SCORE,
        "ood_threshold": vos.OOD_THRESHOLD,
        "use_calibrated_threshold": vos.USE_CALIBRATED_THRESHOLD,
        "balanced_loss": vos.BALANCED_LOSS,
        "outlier_tail": vos.OUTLIER_TAIL,
        "outlier_radius_scale": vos.OUTLIER_RADIUS_SCALE,
        "outlier_synthesis": vos.OUTLIER_SYNTHESIS,
        "npos_k": vos.NPOS.K,
        "npos_boundary": vos.NPOS.BOUNDARY,
        "npos_noise_scale": vos.NPOS.NOISE_SCALE,
        "uncertainty_head": vos.UNCERTAINTY_HEAD,
    }


def pop_vos_options(kwargs: dict) -> dict:
    """Remove the arguments of :meth:`VirtualOutlierMixin.init_virtual_outliers` from
    ``kwargs`` (a host constructor's keyword arguments) and return them."""
    names = inspect.signature(VirtualOutlierMixin.init_virtual_outliers).parameters
    return {name: kwargs.pop(name) for name in list(kwargs) if name in names and name not in ("self", "feature_dim")}


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

    def init_virtual_outliers(
        self,
        feature_dim: int,
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
        per_rank_outliers: bool = True,
        ood_score: str = "vos",
        ood_threshold: float = 0.5,
        use_calibrated_threshold: bool = True,
        balanced_loss: bool = False,
        outlier_tail: float = 0.0,
        outlier_radius_scale: float = 1.0,
        outlier_synthesis: str = "gaussian",
        npos_k: int = 10,
        npos_boundary: int = 100,
        npos_noise_scale: float = 0.5,
        uncertainty_head: str = "logistic",
    ):
        """
        Args:
            feature_dim: D, the dimension of the queued features.
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
            per_rank_outliers: every rank of a distributed run draws its own outliers
                (seeded by synthesis_seed, the iteration and the rank), as the released
                code's independent draws per GPU; False: all ranks draw the same ones.
            ood_score: the score behind ``ood_scores`` and ``is_ood``, one of OOD_SCORES.
            ood_threshold: threshold on the OOD score used until a calibrated one is stored.
            use_calibrated_threshold: prefer the calibrated threshold when one is stored.
            balanced_loss: weight the ID samples and the outliers equally (half of the
                loss each) instead of per sample.
            outlier_tail: > 0: outliers are Gaussian draws beyond the likelihood threshold
                of this tail probability (eq. 3) instead of the least likely of
                ``sample_from``; 0 = the paper's rule.
            outlier_radius_scale: factor on the Mahalanobis radius of every outlier.
            outlier_synthesis: "gaussian" (eq. 1-3) or "npos" (:func:`npos_outliers` on
                the queues: ``sample_from`` candidates, K * ``select`` outliers kept).
            npos_k: the neighbour of NPOS's k-NN distance.
            npos_boundary: boundary ID features NPOS perturbs.
            npos_noise_scale: norm of NPOS's noise relative to the (unit) feature norm.
            uncertainty_head: the classifier of -E, one of UNCERTAINTY_HEADS: "logistic"
                (Linear(1, 2), cross-entropy; the released branch main) or "mlp"
                (Linear(1, 512) - ReLU - Linear(512, 1), binary cross-entropy; branch
                main-MLP, the paper's final numbers), see :mod:`.uncertainty_heads`.
        """
        if outlier_synthesis not in OUTLIER_SYNTHESES:
            raise ValueError(
                f"MODEL.VOS.OUTLIER_SYNTHESIS must be one of {OUTLIER_SYNTHESES}, got {outlier_synthesis!r}"
            )
        num_queued = self.num_classes * sample_number
        if vos_enabled and outlier_synthesis == "npos" and not (npos_k < num_queued and npos_boundary <= num_queued):
            raise ValueError(
                f"MODEL.VOS.NPOS.K={npos_k} must be < and MODEL.VOS.NPOS.BOUNDARY={npos_boundary} <= the "
                f"{num_queued} queued features (K x MODEL.VOS.SAMPLE_NUMBER)"
            )
        if ood_score not in OOD_SCORES:
            raise ValueError(f"MODEL.VOS.OOD_SCORE must be one of {OOD_SCORES}, got {ood_score!r}")
        if uncertainty_head not in UNCERTAINTY_HEADS:
            raise ValueError(
                f"MODEL.VOS.UNCERTAINTY_HEAD must be one of {UNCERTAINTY_HEADS}, got {uncertainty_head!r}"
            )
        if not vos_enabled and ood_score in VOS_ONLY_SCORES:
            raise ValueError(
                f"MODEL.VOS.OOD_SCORE={ood_score!r} needs MODEL.VOS.ENABLED=True; a model "
                "trained without VOS can use 'energy' or 'msp'"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"MODEL.VOS.SAMPLER must be one of {SAMPLERS}, got {sampler!r}")
        if not 0.0 <= outlier_tail < 1.0 or (outlier_tail > 0 and sampler != "chi2"):
            raise ValueError(
                f"MODEL.VOS.OUTLIER_TAIL must lie in [0, 1) and needs MODEL.VOS.SAMPLER 'chi2', "
                f"got {outlier_tail} with {sampler!r}"
            )
        if outlier_radius_scale <= 0:
            raise ValueError(f"MODEL.VOS.OUTLIER_RADIUS_SCALE must be > 0, got {outlier_radius_scale}")
        self.vos_enabled = vos_enabled
        self.starting_iter = starting_iter
        self.sample_from = sample_from
        self.select = select
        self.vos_loss_weight = vos_loss_weight
        self.covariance_eps = covariance_eps
        self.sampler = sampler
        self.synthesis_seed = synthesis_seed
        self.per_rank_outliers = per_rank_outliers
        self.ood_score = ood_score
        self.ood_threshold = ood_threshold
        self.use_calibrated_threshold = use_calibrated_threshold
        self.balanced_loss = balanced_loss
        self.outlier_tail = outlier_tail
        self.outlier_radius_scale = outlier_radius_scale
        self.outlier_synthesis = outlier_synthesis
        self.npos_k = npos_k
        self.npos_boundary = npos_boundary
        self.npos_noise_scale = npos_noise_scale
        # (means, Cholesky factor) of the class Gaussians of the last synthesis step, read
        # by the diagnostics (not state: not saved, refitted at every step).
        self.last_class_gaussian = None
        # Scalars of the current training step, logged together by put_step_scalars.
        self._step_scalars = {}
        # Threshold on the OOD score calibrated on ID validation data; NaN until calibrated.
        self.register_buffer("calibrated_ood_threshold", torch.tensor(float("nan")))
        if vos_enabled:
            self.feature_queues = ClassFeatureQueues(
                self.num_classes, sample_number, feature_dim, covariance_recompute_period
            )
            # theta_w of eq. 6; the class weights are w = relu(theta_w).
            self.energy_weights = nn.Parameter(torch.rand(self.num_classes))
            # The classifier of -E: two logits (outlier, ID), see uncertainty_heads.py.
            self.uncertainty_classifier = build_uncertainty_head(uncertainty_head)

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

        Runs with autocast off (:func:`~vos_det.utils.precision.full_precision`): under
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
