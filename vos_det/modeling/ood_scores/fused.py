"""Fused: one logit score and one feature-distance score on a common scale.

Logit scores (the energy, Liu et al., NeurIPS 2020; GEN, Liu et al., CVPR 2023) rank near-OOD
boxes best; feature-distance scores (k-NN, Sun et al., ICML 2022; multi-layer Mahalanobis,
Lee et al., NeurIPS 2018) rank far-OOD boxes best (measured on digits-det: AUROC +13 to +15
far, worse near). The fused score combines one of each:

1. each part s_j is put on a common scale by its distribution on ID validation boxes, either
   ``"zscore"``: u_j = (s_j - mean_j) / std_j, or ``"percentile"``: u_j = the ID percentile of
   s_j, the mid-rank share of the ID validation scores below it, in [0, 1] inside their
   range and continued beyond it by one per std_j: 1 + (s_j - max_j) / std_j above,
   (s_j - min_j) / std_j below. Without the continuation every box beyond the ID range
   would tie at 1: when the reference was the ground-truth boxes, more than 5% of a test
   set's detected ID boxes (looser boxes, duplicates) lay beyond it, and the tie swallowed
   the FPR95 threshold (FPR95 100 on R-18 models where the rule was "max"). The reference
   is now the validation detections (below), and a test set still has boxes beyond them;
2. the scaled parts are combined by a rule: ``"max"``: max(u_1, u_2); ``"sum"``: u_1 + u_2;
   ``"logistic"``: w_1 u_1 + w_2 u_2 + b, the logit of a logistic regression fitted on the ID
   validation boxes (label 0) against VOS virtual outliers (label 1): samples of the class
   Gaussians of the training boxes' features, each the least likely of SAMPLE_FROM draws (VOS
   eq. 3), scored through the class layer. It needs a feature part computed from the
   penultimate feature alone (k-NN; a virtual outlier has no multi-layer feature maps).

The ID validation boxes are the detections of the ID validation set that the OOD evaluation
would score (kept by the box selection of ``TEST.OOD``, its threshold found on that set), and
the OOD validation boxes those of the OOD validation set
(:mod:`vos_det.engine.fused_fitting`). The parts, the scaling and the rule are chosen by
``tools/fit_ood_scores.py`` among those of ``MODEL.OOD.POST_HOC.FUSED``: the candidate with
the lowest FPR95 of ID against OOD validation detections (``--val-id`` / ``--val-ood``;
ties: higher AUROC, then the candidates' order), never on OOD test data. The fitted state
records the choice and every candidate's figures. The feature part is read from its own
score's output (the scores of :meth:`FusedScore.part_names` are computed first), so the k-NN
search runs once per box. Larger = more OOD.
"""
from typing import Dict, Optional

import torch

from ...config.choices import FUSED_FEATURE_PARTS as FEATURE_PARTS
from ...config.choices import FUSED_LOGIT_PARTS as LOGIT_PARTS
from ...config.choices import FUSED_RULES as RULES
from ...config.choices import FUSED_SCALINGS as SCALINGS
from .base import OOD_SCORE_REGISTRY, PostHocScore
from .energy import energy
from .gen import generalized_entropy

__all__ = [
    "FEATURE_PARTS",
    "FusedScore",
    "LOGIT_PARTS",
    "RULES",
    "SCALINGS",
    "combine",
    "fit_logistic",
    "id_percentile",
    "logit_part_score",
]

# Ridge penalty on the logistic weights (not the bias): keeps them finite when ID boxes and
# outliers are separable, as they are on a trained detector.
_LOGISTIC_L2 = 1e-3
_NEWTON_STEPS = 100
_NEWTON_TOLERANCE = 1e-10


def logit_part_score(name: str, logits, gamma: float = 0.1, top_m: int = 100):
    """The logit part ``name`` ("energy" or "gen") of (N, K) foreground logits, (N,) float64."""
    if name == "energy":
        return energy(logits.double())
    if name == "gen":
        return generalized_entropy(logits.double(), gamma, top_m)
    raise ValueError(f"the logit part of the fused score must be one of {LOGIT_PARTS}, got {name!r}")


def id_percentile(scores, reference, unit):
    """The mid-rank ID percentile of each score, (#{ref < s} + #{ref <= s}) / (2 n), inside
    the reference's range; beyond it, continued linearly by one per ``unit``:
    1 + (s - max) / unit above the largest reference score, (s - min) / unit below the
    smallest.

    Args:
        scores (Tensor): (N, P) scores of P parts.
        reference (Tensor): (P, n) each part's ID validation scores, sorted.
        unit (Tensor): (P,) > 0, each part's scale beyond its range (its standard deviation).

    Returns:
        Tensor: (N, P) float64, in [0, 1] for the scores inside the reference's range.
    """
    columns = scores.double().T.contiguous()
    reference = reference.double().contiguous()
    below = torch.searchsorted(reference, columns, right=False)
    at_most = torch.searchsorted(reference, columns, right=True)
    percentile = (below + at_most).double() / (2.0 * reference.shape[1])
    lowest, highest, unit = reference[:, :1], reference[:, -1:], unit.double()[:, None]
    percentile = torch.where(columns > highest, 1.0 + (columns - highest) / unit, percentile)
    percentile = torch.where(columns < lowest, (columns - lowest) / unit, percentile)
    return percentile.T


def combine(scaled, rule: str, weights=None):
    """Combine (N, 2) scaled parts by ``rule``; ``weights`` (3,) = (w_1, w_2, b) of "logistic"."""
    if rule == "max":
        return scaled.max(dim=1).values
    if rule == "sum":
        return scaled.sum(dim=1)
    if rule == "logistic":
        return scaled @ weights[:2].to(scaled) + weights[2].to(scaled)
    raise ValueError(f"the fused score's rule must be one of {RULES}, got {rule!r}")


def fit_logistic(negatives, positives, l2: float = _LOGISTIC_L2):
    """Class-balanced, ridge-penalised logistic regression by Newton's method.

    Minimises mean_neg log(1 + e^{x w + b}) / 2 + mean_pos log(1 + e^{-(x w + b)}) / 2
    + l2 / 2 ||w||^2.

    Args:
        negatives (Tensor): (n, P) inputs of label 0 (ID boxes).
        positives (Tensor): (m, P) inputs of label 1 (outliers).

    Returns:
        Tensor: (P + 1,) float64, (w, b).
    """
    x = torch.cat([negatives, positives]).double()
    x = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
    y = torch.cat([x.new_zeros(len(negatives)), x.new_ones(len(positives))])
    sample_weight = torch.cat([
        x.new_full((len(negatives),), 0.5 / len(negatives)), x.new_full((len(positives),), 0.5 / len(positives))
    ])
    penalty = torch.full((x.shape[1],), l2, dtype=torch.float64)
    penalty[-1] = 0.0
    params = x.new_zeros(x.shape[1])
    for _ in range(_NEWTON_STEPS):
        p = torch.sigmoid(x @ params)
        gradient = x.T @ (sample_weight * (p - y)) + penalty * params
        hessian = (x * (sample_weight * p * (1 - p))[:, None]).T @ x + torch.diag(penalty)
        step = torch.linalg.solve(hessian, gradient)
        params = params - step
        if float(step.abs().max()) < _NEWTON_TOLERANCE:
            break
    return params


@OOD_SCORE_REGISTRY.register()
class FusedScore(PostHocScore):
    """A logit score and a feature score, scaled on ID validation boxes and combined
    (fitted: the parts, the scaling, the rule, the ID reference and the logistic weights)."""

    name = "fused"

    def __init__(self, gamma: float = 0.1, top_m: int = 100):
        """
        Args:
            gamma, top_m: of GEN as a logit part (MODEL.OOD.POST_HOC.GEN).
        """
        super().__init__()
        self.gamma = gamma
        self.top_m = top_m

    @classmethod
    def from_config(cls, cfg):
        return cls(gamma=cfg.MODEL.OOD.POST_HOC.GEN.GAMMA, top_m=cfg.MODEL.OOD.POST_HOC.GEN.TOP_M)

    def part_names(self):
        return (self.fitted_config["feature_part"],) if self.is_fitted() else ()

    def fit(
        self,
        data=None,
        *,
        id_parts: Optional[Dict[str, torch.Tensor]] = None,
        outlier_parts: Optional[Dict[str, torch.Tensor]] = None,
        logit_part: str = "energy",
        feature_part: str = "knn",
        scaling: str = "zscore",
        rule: str = "sum",
        choice: Optional[Dict] = None,
    ):
        """Fit one candidate on part scores (``tools/fit_ood_scores.py`` computes them and
        chooses the candidate).

        Args:
            data: unused (the fused score is fitted on validation boxes, not training boxes).
            id_parts: part name -> (n,) scores of the ID validation boxes; must hold
                ``logit_part`` and ``feature_part``.
            outlier_parts: the same for the virtual outliers; needed by rule "logistic".
            logit_part, feature_part, scaling, rule: the candidate.
            choice: how it was chosen (recorded in the state).
        """
        if id_parts is None:
            raise ValueError(
                "the fused score is fitted on ID and OOD validation boxes: run "
                "tools/fit_ood_scores.py with --val-id and --val-ood"
            )
        if logit_part not in LOGIT_PARTS or feature_part not in FEATURE_PARTS:
            raise ValueError(f"fused parts must be one of {LOGIT_PARTS} and one of {FEATURE_PARTS}")
        if scaling not in SCALINGS:
            raise ValueError(f"the fused score's scaling must be one of {SCALINGS}, got {scaling!r}")
        reference = torch.stack([id_parts[logit_part].double(), id_parts[feature_part].double()])
        self.fitted_config = {
            "logit_part": logit_part,
            "feature_part": feature_part,
            "scaling": scaling,
            "rule": rule,
            "gamma": self.gamma,
            "top_m": self.top_m,
            "choice": dict(choice or {}),
        }
        self.set_fitted(
            reference=reference.sort(dim=1).values,
            mean=reference.mean(dim=1),
            std=reference.std(dim=1).clamp_min(1e-12),
        )
        if rule == "logistic":
            if outlier_parts is None:
                raise ValueError("the fused score's logistic rule needs the part scores of virtual outliers")
            outliers = torch.stack([outlier_parts[logit_part].double(), outlier_parts[feature_part].double()], dim=1)
            weights = fit_logistic(self.scale(reference.T), self.scale(outliers))
        else:
            weights = torch.zeros(3, dtype=torch.float64)
        self.set_fitted(weights=weights)
        return self

    def scale(self, parts):
        """(N, 2) part scores (logit part, feature part) on the fitted scale, float64."""
        if self.fitted_config["scaling"] == "zscore":
            return (parts.double() - self.mean.double()) / self.std.double()
        return id_percentile(parts, self.reference, self.std)

    def combine_parts(self, logit_scores, feature_scores):
        """The fused score of (N,) logit-part and (N,) feature-part scores, (N,) float64."""
        self.require_fitted()
        parts = torch.stack([logit_scores.double(), feature_scores.double()], dim=1)
        return combine(self.scale(parts), self.fitted_config["rule"], self.weights)

    def forward(self, features, logits, layer_features=None, logits_of=None, part_scores=None):
        """As :meth:`PostHocScore.forward`; ``part_scores`` maps the name of the feature
        part (:meth:`part_names`) to its (N,) scores of these boxes."""
        self.require_fitted()
        feature_part = self.fitted_config["feature_part"]
        if part_scores is None or feature_part not in part_scores:
            raise RuntimeError(f"the 'fused' OOD score combines the {feature_part!r} score, which was not given")
        config = self.fitted_config
        logit_scores = logit_part_score(config["logit_part"], logits, config["gamma"], config["top_m"])
        return self.combine_parts(logit_scores, part_scores[feature_part]).float()
