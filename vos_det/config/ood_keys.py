"""The keys of the OOD scores of any detector (``MODEL.OOD``), each declared once.

They apply to a model trained with VOS or without: the score behind ``is_ood`` and its
threshold, the post-hoc Mahalanobis statistics and the fitted post-hoc scores with their
options. An :class:`OODKey` holds a key's default, its check and its meaning; the defaults
that :func:`vos_det.config.add_vos_config` adds, the rules of
:func:`vos_det.config.validate_config` and ``docs/config_keys.md`` are read from
:data:`OOD_KEYS`. The keys with an ``argument`` are also keyword arguments of
:meth:`vos_det.modeling.vos.VirtualOutlierMixin.init_virtual_outliers`
(:data:`vos_det.config.vos_keys.MIXIN_KEYS`).
"""
from dataclasses import dataclass
from typing import ClassVar

from .checks import at_least, between, each_item, each_of, finite_number, greater_than, one_of, regular_expressions
from .choices import FUSED_FEATURE_PARTS, FUSED_LOGIT_PARTS, FUSED_RULES, FUSED_SCALINGS, KNN_SEARCHES, OOD_SCORES
from .declared_keys import DeclaredKey

__all__ = ["OODKey", "OOD_KEYS"]


@dataclass(frozen=True)
class OODKey(DeclaredKey):
    """One key of ``MODEL.OOD`` (:class:`~vos_det.config.declared_keys.DeclaredKey`)."""

    node: ClassVar[str] = "MODEL.OOD"


_GEN = (
    "GEN (Liu et al. 2023): exponent gamma and M, the number of largest probabilities summed "
    "(paper defaults; M is capped at the number of classes)."
)
_KNN = (
    "k-NN (Sun et al. 2022), used when fitting: K, the neighbour (0 = chosen on --val-id / "
    "--val-ood boxes by the fit tool, else the paper's 50); MAX_BANK_SIZE, training boxes kept in "
    "the bank (0 = all); at inference CHUNK_SIZE, bank rows per chunk of the exact search (0 = one "
    'matrix product). SEARCH at inference: "torch" (exact), "faiss_flat" (exact) or "faiss_ivf" '
    "(approximate: NLIST k-means cells, 0 = sqrt(bank size), NPROBE of them searched per query); a "
    'faiss search falls back to "torch" when faiss is not installed.'
)
_MULTILAYER = (
    "Multi-layer Mahalanobis: the feature maps each box is ROI-pooled from ([] = those of "
    "ROI_HEADS.IN_FEATURES), and whether the penultimate box feature is appended."
)
_SAFE = (
    "SAFE (Wilson et al. 2023), as released (vos_det/modeling/ood_scores/safe.py): an MLP tells the "
    "1x1 ROI-aligned outputs of the backbone modules named by LAYER_PATTERNS (regular expressions; "
    "default the ResNet projection shortcuts and RegNetX's b1.bn) on the boxes predicted on "
    "training images from the same boxes after one FGSM step of eps pixels (0-255) on the "
    "detector's training loss. eps is FGSM_EPSILON, or chosen among EPSILON_CANDIDATES when the fit "
    "tool gets --val-id / --val-ood. The MLP's SGD schedule: EPOCHS, LEARNING_RATE, "
    "IMAGES_PER_BATCH (the release's 5, 1e-3, 32). MAX_IMAGES bounds the training images used "
    "(evenly spread; 0 = all)."
)
_FUSED = (
    "Fused: a logit part (LOGIT_PARTS) and a feature part (FEATURE_PARTS), each scaled by its ID "
    'validation boxes (SCALINGS: "zscore", "percentile"), combined by a rule (RULES: "max", "sum", '
    '"logistic" on ID validation boxes against OUTLIERS_PER_CLASS VOS virtual outliers per class); '
    "tools/fit_ood_scores.py picks the candidate of lowest FPR95 on --val-id vs --val-ood."
)
_SAFE_EPSILON = between(0.0, 255.0, low_open=True)

OOD_KEYS = (
    OODKey("SCORE", "vos", one_of(OOD_SCORES),
           "Score written to Instances.ood_scores and thresholded into is_ood, the only OOD score "
           'inference computes (the evaluation computes every one): "vos": p(outlier | box) '
           "= 1 - p(ID | box), the logistic regression on the weighted energy (paper eq. 8); "
           '"energy": the free energy -logsumexp of the foreground logits (the released branch '
           "main's test-time score on a VOS-trained model); \"vos_release\": -p(ID) of the "
           "uncertainty head applied to the UNWEIGHTED logsumexp of the foreground logits (the "
           "branch main-MLP's test-time score; values in [-1, 0], so THRESHOLD is -gamma). \"vos\", "
           '"vos_release" and "weighted_energy" need MODEL.VOS.ENABLED.',
           argument="ood_score"),
    OODKey("THRESHOLD", 0.5, finite_number,
           "A box is flagged is_ood when its ood_score is above this threshold. For the \"vos\" score "
           "it is 1 - gamma of eq. 9. The calibrated threshold stored in the model (95% of ID "
           "validation boxes kept, TEST.OOD.CALIBRATION_DATASET) replaces it unless "
           "USE_CALIBRATED_THRESHOLD is False.",
           argument="ood_threshold"),
    OODKey("USE_CALIBRATED_THRESHOLD", True, None,
           "Use the threshold calibrated on ID validation boxes when the checkpoint has one.",
           argument="use_calibrated_threshold"),
    OODKey("MAHALANOBIS_STATS", "", None,
           "Class Gaussians of the box features written by tools/fit_mahalanobis.py; when set, the "
           'evaluation also records ood_scores_mahalanobis ("" = none).'),
    OODKey("POST_HOC.STATE", "", None,
           "Post-hoc OOD scores (vos_det/modeling/ood_scores/): the file of their fitted state, "
           'written by tools/fit_ood_scores.py next to the weights ("" = none fitted). The '
           "evaluation records ood_scores_maxlogit and ood_scores_gen, plus ood_scores_<name> of "
           "every score fitted in it (knn, vim, react, mahalanobis_multilayer, safe, fused); any of "
           "them can be SCORE."),
    OODKey("POST_HOC.GEN.GAMMA", 0.1, greater_than(0.0), _GEN),
    OODKey("POST_HOC.GEN.TOP_M", 100, at_least(1, integer=True), _GEN),
    OODKey("POST_HOC.KNN.K", 0, at_least(0, integer=True), _KNN),
    OODKey("POST_HOC.KNN.MAX_BANK_SIZE", 0, at_least(0, integer=True), _KNN),
    OODKey("POST_HOC.KNN.CHUNK_SIZE", 0, at_least(0, integer=True), _KNN),
    OODKey("POST_HOC.KNN.SEARCH", "torch", one_of(KNN_SEARCHES), _KNN),
    OODKey("POST_HOC.KNN.NLIST", 0, at_least(0, integer=True), _KNN),
    OODKey("POST_HOC.KNN.NPROBE", 32, at_least(1, integer=True), _KNN),
    OODKey("POST_HOC.VIM.DIM", 0, at_least(0, integer=True),
           "ViM (Wang et al. 2022): DIM, the principal subspace dimension (0 = half the feature "
           "dimension, between the paper's 1000 of 2048 and 512 of 768)."),
    OODKey("POST_HOC.REACT.PERCENTILE", 90.0, between(0.0, 100.0, low_open=True),
           "ReAct (Sun et al. 2021): features clipped at this percentile of the training boxes' "
           "activations above their minimum, the units that fire (paper: 90)."),
    OODKey("POST_HOC.MULTILAYER.IN_FEATURES", [], None, _MULTILAYER),
    OODKey("POST_HOC.MULTILAYER.INCLUDE_BOX_FEATURES", True, None, _MULTILAYER),
    OODKey("POST_HOC.SAFE.LAYER_PATTERNS",
           [r"backbone\.(bottom_up\.)?res\d+\.\d+\.shortcut", r"backbone\.(bottom_up\.)?s\d+\.b1\.bn"],
           regular_expressions, _SAFE),
    OODKey("POST_HOC.SAFE.FGSM_EPSILON", 8.0, _SAFE_EPSILON, _SAFE),
    OODKey("POST_HOC.SAFE.EPSILON_CANDIDATES", [2.0, 4.0, 8.0, 16.0], each_item(_SAFE_EPSILON, non_empty=True), _SAFE),
    OODKey("POST_HOC.SAFE.EPOCHS", 5, at_least(1, integer=True), _SAFE),
    OODKey("POST_HOC.SAFE.LEARNING_RATE", 1e-3, greater_than(0.0), _SAFE),
    OODKey("POST_HOC.SAFE.IMAGES_PER_BATCH", 32, at_least(1, integer=True), _SAFE),
    OODKey("POST_HOC.SAFE.MAX_IMAGES", 0, at_least(0, integer=True), _SAFE),
    OODKey("POST_HOC.FUSED.LOGIT_PARTS", ["energy", "gen"], each_of(FUSED_LOGIT_PARTS), _FUSED),
    OODKey("POST_HOC.FUSED.FEATURE_PARTS", ["knn", "mahalanobis_multilayer"], each_of(FUSED_FEATURE_PARTS), _FUSED),
    OODKey("POST_HOC.FUSED.SCALINGS", ["zscore", "percentile"], each_of(FUSED_SCALINGS), _FUSED),
    OODKey("POST_HOC.FUSED.RULES", ["max", "sum", "logistic"], each_of(FUSED_RULES), _FUSED),
    OODKey("POST_HOC.FUSED.OUTLIERS_PER_CLASS", 200, at_least(1, integer=True), _FUSED),
)
