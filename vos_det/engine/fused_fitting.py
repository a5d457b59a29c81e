"""Fitting the ``fused`` post-hoc score: its part scores, the virtual outliers, the choice.

    from vos_det.engine.fused_fitting import fit_fused_score
    report = fit_fused_score(cfg, model, scorers, train, "digits_det_val", "digits_det_ood_val")

Called by :func:`~vos_det.engine.post_hoc_fitting.fit_post_hoc_scores` after the other scores
are fitted (the feature parts are their outputs). The validation boxes are the detections the
OOD evaluation would score there: the detector is run over the ID and the OOD validation set
and their boxes are selected as ``TEST.OOD`` selects test boxes, with the threshold found on
the ID validation set (protocol "vos_det": each class's optimal-F1 score). Scaling the parts
on ground-truth boxes instead put a share of the detected ID boxes (looser boxes, duplicates)
outside the reference, and chose among candidates on boxes unlike the ones scored. Every
candidate of ``MODEL.OOD.POST_HOC.FUSED`` (logit part x feature part x scaling x rule) is
fitted on the ID validation detections (and, for the logistic rule, VOS virtual outliers) and
judged by the FPR95 of ID against OOD validation detections; the best one is kept (see
:mod:`vos_det.modeling.ood_scores.fused`).
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..evaluation.box_selection import select_boxes_for_config
from ..evaluation.records import collect_detections
from ..metrics.ood_metrics import auroc, fpr_at_tpr
from ..modeling.ood_scores import BoxFitData
from ..modeling.ood_scores.fused import FEATURE_PARTS, FusedScore, logit_part_score
from ..modeling.ood_scores.mahalanobis import GaussianDiscriminant
from ..modeling.vos.synthesis import robust_cholesky, sample_virtual_outliers
from .feature_extraction import build_annotated_test_loader

__all__ = [
    "NoValidationDetections",
    "choose_fused_candidate",
    "detected_part_scores",
    "fit_fused_score",
    "part_scores",
    "virtual_outlier_features",
]

logger = logging.getLogger(__name__)


class NoValidationDetections(ValueError):
    """The box selection keeps no detection of a validation set (e.g. an untrained detector,
    whose scores reach no optimal-F1 threshold): the fused score cannot be fitted."""


def virtual_outlier_features(train: BoxFitData, per_class: int, sample_from: int, eps: float, seed: int):
    """VOS virtual outliers of the training boxes' class Gaussians (shared covariance).

    Each outlier is, as in one VOS synthesis step with SELECT 1, the least likely of
    ``sample_from`` draws of N(mu_k, Sigma + eps I); ``per_class`` independent ones per class.

    Args:
        train: the training boxes (features (N, D), labels).
        per_class: outliers per class.
        sample_from: SAMPLE_FROM.
        eps: the covariance jitter (MODEL.VOS.COVARIANCE_EPS).
        seed: seed of the draws.

    Returns:
        Tensor: (K * per_class, D) float32.
    """
    gaussians = GaussianDiscriminant(train.features.shape[1]).fit(train.features, train.labels, train.num_classes)
    scale = robust_cholesky(gaussians.covariance(), eps)
    if scale is None:
        raise ValueError("the training boxes' feature covariance holds NaN or Inf: no virtual outliers")
    # One row per outlier: each draws its own least likely of SAMPLE_FROM.
    means = gaussians.means.repeat(per_class, 1)
    outliers, _ = sample_virtual_outliers(means, scale, sample_from, 1, seed=seed)
    return outliers.float()


def part_scores(
    scorers, data: BoxFitData, logit_parts: Sequence[str], feature_parts: Sequence[str], gamma: float, top_m: int
) -> Dict[str, torch.Tensor]:
    """The candidate parts of the fused score on some boxes.

    Args:
        scorers: name -> fitted post-hoc score (the feature parts).
        data: the boxes; ``layer_features`` None leaves out the parts that need them.
        logit_parts, feature_parts: the names wanted.
        gamma, top_m: of GEN.

    Returns:
        dict[str, Tensor]: name -> (N,) float64 scores.
    """
    scores = {name: logit_part_score(name, data.logits, gamma, top_m) for name in logit_parts}
    for name in feature_parts:
        scorer = scorers[name]
        if scorer.layer_names() and data.layer_features is None:
            continue
        with torch.no_grad():
            values = scorer(data.features, data.logits, layer_features=data.layer_features, logits_of=data.logits_of)
        scores[name] = values.double()
    return scores


def detected_part_scores(cfg, model, val_id: str, val_ood: str, part_names: Sequence[str]):
    """The part scores of the boxes the OOD evaluation would score on the validation sets.

    The detector (its post-hoc scores fitted so far) is run over both sets; the box
    selection of ``TEST.OOD`` is resolved on ``val_id`` (its ground truth, e.g. each class's
    optimal-F1 threshold) and applied to both, as the evaluation resolves it on the ID test
    set and applies it to every test set.

    Args:
        cfg: the model's config (TEST.OOD.PROTOCOL, BOX_SELECTION, SCORE_THRESHOLD).
        model: the detector, with the feature parts' scores fitted.
        val_id, val_ood: the ID and OOD validation datasets.
        part_names: the scores wanted; those the detections do not carry are left out.

    Returns:
        tuple[dict, dict, dict]: part name -> (n,) float64 scores of the kept ID detections,
        the same of the kept OOD detections, and the selection (:meth:`BoxSelection.to_dict`).
    """
    records = {name: collect_detections(model, build_annotated_test_loader(cfg, name)) for name in (val_id, val_ood)}
    selection = select_boxes_for_config(cfg, records[val_id], val_id)
    parts = []
    for name in (val_id, val_ood):
        kept = selection.apply(records[name])
        if not len(kept):
            raise NoValidationDetections(
                f"the fused score is fitted on the detections of {name}, and the box selection keeps none of its "
                f"{len(records[name])} ({selection.describe()})"
            )
        table = kept.ood_score_table
        parts.append({part: torch.from_numpy(table[part]).double() for part in part_names if part in table})
    return parts[0], parts[1], selection.to_dict()


def choose_fused_candidate(
    id_parts: Dict[str, torch.Tensor],
    ood_parts: Dict[str, torch.Tensor],
    outlier_parts: Optional[Dict[str, torch.Tensor]],
    logit_parts: Sequence[str],
    feature_parts: Sequence[str],
    scalings: Sequence[str],
    rules: Sequence[str],
    gamma: float = 0.1,
    top_m: int = 100,
) -> Tuple[FusedScore, List[Dict]]:
    """The candidate with the lowest FPR95 of ID vs OOD validation boxes, fitted.

    Ties: higher AUROC, then the candidates' order (logit part, feature part, scaling, rule,
    each in the order given). The logistic rule is tried only for feature parts that the
    outliers have.

    Args:
        id_parts, ood_parts: part name -> (n,) scores of the ID / OOD validation boxes.
        outlier_parts: part name -> scores of the virtual outliers (None: no logistic rule).
        logit_parts, feature_parts, scalings, rules: the candidates.
        gamma, top_m: of GEN (recorded in the fitted score).

    Returns:
        tuple[FusedScore, list[dict]]: the fitted best candidate, and every candidate tried
        with its "fpr95" and "auroc".
    """
    tried, fitted = [], []
    for logit_part in logit_parts:
        for feature_part in feature_parts:
            if feature_part not in id_parts:
                continue
            for scaling in scalings:
                for rule in rules:
                    if rule == "logistic" and (outlier_parts is None or feature_part not in outlier_parts):
                        continue
                    candidate = {"logit_part": logit_part, "feature_part": feature_part, "scaling": scaling, "rule": rule}
                    score = FusedScore(gamma, top_m).fit(id_parts=id_parts, outlier_parts=outlier_parts, **candidate)
                    id_scores = score.combine_parts(id_parts[logit_part], id_parts[feature_part]).numpy()
                    ood_scores = score.combine_parts(ood_parts[logit_part], ood_parts[feature_part]).numpy()
                    tried.append({**candidate, "fpr95": fpr_at_tpr(id_scores, ood_scores), "auroc": auroc(id_scores, ood_scores)})
                    fitted.append(score)
    if not tried:
        raise ValueError(
            f"no fused candidate: logit parts {list(logit_parts)}, feature parts {list(feature_parts)} "
            f"(fitted and computable: {sorted(set(id_parts) & set(FEATURE_PARTS))}), scalings "
            f"{list(scalings)}, rules {list(rules)}"
        )
    best = min(range(len(tried)), key=lambda i: (tried[i]["fpr95"], -tried[i]["auroc"], i))
    return fitted[best], tried


def fit_fused_score(cfg, model, scorers, train: BoxFitData, val_id: str, val_ood: str) -> Dict:
    """Choose and fit ``scorers["fused"]`` (its feature parts already fitted).

    Args:
        cfg: the model's config (MODEL.OOD.POST_HOC.FUSED, .GEN, MODEL.VOS.SAMPLE_FROM,
            COVARIANCE_EPS, SEED and the box selection of TEST.OOD are read).
        model: the detector whose box predictor holds ``scorers``.
        scorers: name -> post-hoc score, the candidate feature parts fitted.
        train: the training boxes (the virtual outliers' class Gaussians).
        val_id, val_ood: the ID and OOD validation datasets (their detections are scored).

    Returns:
        dict: the choice and every candidate's figures (for the state file's info).
    """
    options = cfg.MODEL.OOD.POST_HOC.FUSED
    gamma, top_m = cfg.MODEL.OOD.POST_HOC.GEN.GAMMA, cfg.MODEL.OOD.POST_HOC.GEN.TOP_M
    logit_parts = list(options.LOGIT_PARTS)
    feature_parts = [name for name in options.FEATURE_PARTS if name in scorers and scorers[name].is_fitted()]
    if not feature_parts:
        raise ValueError(
            f"the fused score needs one of its feature parts {list(options.FEATURE_PARTS)} fitted in the same "
            "run: fit them together (tools/fit_ood_scores.py --scores knn fused ...)"
        )
    id_parts, ood_parts, selection = detected_part_scores(cfg, model, val_id, val_ood, logit_parts + feature_parts)
    outlier_parts = None
    if "logistic" in options.RULES:
        features = virtual_outlier_features(
            train, options.OUTLIERS_PER_CLASS, cfg.MODEL.VOS.SAMPLE_FROM, cfg.MODEL.VOS.COVARIANCE_EPS, max(cfg.SEED, 0)
        )
        with torch.no_grad():
            logits = train.logits_of(features).float()
        outliers = BoxFitData(features=features, logits=logits, labels=torch.zeros(len(features), dtype=torch.long),
                              num_classes=train.num_classes, logits_of=train.logits_of)
        outlier_parts = part_scores(scorers, outliers, logit_parts, feature_parts, gamma, top_m)
    best, tried = choose_fused_candidate(
        id_parts, ood_parts, outlier_parts, logit_parts, feature_parts, options.SCALINGS, options.RULES, gamma, top_m
    )
    chosen = {key: best.fitted_config[key] for key in ("logit_part", "feature_part", "scaling", "rule")}
    choice = {
        "source": f"lowest FPR95 on the detections of {val_id} vs {val_ood}",
        "boxes": selection["description"],
        "num_id": len(next(iter(id_parts.values()))),
        "num_ood": len(next(iter(ood_parts.values()))),
    }
    if outlier_parts is not None:
        choice["num_virtual_outliers"] = len(next(iter(outlier_parts.values())))
    scorers["fused"].fit(id_parts=id_parts, outlier_parts=outlier_parts, choice=choice, **chosen)
    logger.info("fused score: %s (%s)", chosen, choice["source"])
    return {"chosen": chosen, **choice, "candidates": tried}
