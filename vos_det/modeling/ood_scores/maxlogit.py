"""MaxLogit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World
Settings", ICML 2022): the negative largest foreground logit, -max_k f_k."""
from .base import OOD_SCORE_REGISTRY, PostHocScore

__all__ = ["MaxLogitScore", "max_logit_ood_score"]


def max_logit_ood_score(logits):
    """-max_k f_k of (N, K) logits, (N,); larger = more OOD."""
    return -logits.float().max(dim=1).values


@OOD_SCORE_REGISTRY.register()
class MaxLogitScore(PostHocScore):
    """MaxLogit: no fitted state, no hyperparameter."""

    name = "maxlogit"
    needs_fit = False

    def forward(self, features, logits, layer_features=None, logits_of=None):
        return max_logit_ood_score(logits)
