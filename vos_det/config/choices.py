"""The names a config key may take, in one leaf that the config checks and the model code read.

A new value of a key (a sampler, a score, ...) is added here and implemented in the module
that reads the key; the model code refuses a name it does not implement when it is built.
"""
__all__ = [
    "FUSED_FEATURE_PARTS",
    "FUSED_LOGIT_PARTS",
    "FUSED_RULES",
    "FUSED_SCALINGS",
    "KNN_SEARCHES",
    "OOD_SCORES",
    "OUTLIER_SYNTHESES",
    "POST_HOC_SCORES",
    "SAMPLERS",
    "UNCERTAINTY_HEADS",
    "VOS_ONLY_SCORES",
]

# The post-hoc scores of vos_det/modeling/ood_scores/ (OOD_SCORE_REGISTRY), in the order of
# reports.
POST_HOC_SCORES = (
    "maxlogit", "gen", "knn", "knn_embedding", "vim", "react", "mahalanobis_multilayer", "safe", "fused"
)
# Scores that can back ood_scores / is_ood (MODEL.OOD.SCORE); "mahalanobis" needs
# statistics fitted with tools/fit_mahalanobis.py, the post-hoc scores with fitted state
# tools/fit_ood_scores.py, and "siren" a model trained with SIRENLoss (box predictor only).
OOD_SCORES = ("vos", "energy", "weighted_energy", "msp", "vos_release", "mahalanobis", "siren") + POST_HOC_SCORES
# The scores that need the uncertainty head and energy weights of a VOS-trained model.
VOS_ONLY_SCORES = ("vos", "vos_release", "weighted_energy")
# How the lowest-likelihood Gaussian samples are drawn (MODEL.VOS.SAMPLER).
SAMPLERS = ("chi2", "gaussian")
# How virtual outliers are made (MODEL.VOS.OUTLIER_SYNTHESIS): the paper's class Gaussians,
# or NPOS-style perturbations of boundary ID features (vos_det/modeling/vos/npos.py).
OUTLIER_SYNTHESES = ("gaussian", "npos")
# The classifier of -E (MODEL.VOS.UNCERTAINTY_HEAD), vos_det/modeling/vos/uncertainty_heads.py.
UNCERTAINTY_HEADS = ("logistic", "mlp")
# The k-NN search at inference (MODEL.OOD.POST_HOC.KNN.SEARCH).
KNN_SEARCHES = ("torch", "faiss_flat", "faiss_ivf")
# The candidates of the fused score (MODEL.OOD.POST_HOC.FUSED.*), vos_det/modeling/ood_scores/fused.py.
FUSED_LOGIT_PARTS = ("energy", "gen")
FUSED_FEATURE_PARTS = ("knn", "mahalanobis_multilayer")
FUSED_SCALINGS = ("zscore", "percentile")
FUSED_RULES = ("max", "sum", "logistic")
