"""GEN, the generalized entropy score (Liu, Lochman and Zach, "GEN: Pushing the Limits of
Softmax-Based Out-of-Distribution Detection", CVPR 2023).

With p the softmax of the K foreground logits, sorted in decreasing order,

    G_gamma(p) = sum_{j <= M} p_j^gamma (1 - p_j)^gamma,

over the M largest probabilities. The paper scores ID-ness by -G; G itself is the OOD score
here (larger = more OOD: flatter predictions). Paper defaults: gamma = 0.1, M = 100 (or all
K classes when K < M).
"""
import torch

from .base import OOD_SCORE_REGISTRY, PostHocScore

__all__ = ["GENScore", "generalized_entropy"]


def generalized_entropy(logits, gamma: float = 0.1, top_m: int = 100):
    """G_gamma over the ``top_m`` largest softmax probabilities of (N, K) logits, (N,)."""
    probs = torch.softmax(logits.float(), dim=1)
    probs = probs.topk(min(top_m, probs.shape[1]), dim=1).values
    return (probs.pow(gamma) * (1.0 - probs).pow(gamma)).sum(dim=1)


@OOD_SCORE_REGISTRY.register()
class GENScore(PostHocScore):
    """GEN: no fitted state; ``gamma`` and ``top_m`` (M) are MODEL.OOD.POST_HOC.GEN keys."""

    name = "gen"
    needs_fit = False

    def __init__(self, gamma: float = 0.1, top_m: int = 100):
        super().__init__()
        if gamma <= 0 or top_m < 1:
            raise ValueError(f"GEN needs gamma > 0 and M >= 1, got gamma={gamma}, M={top_m}")
        self.gamma = gamma
        self.top_m = top_m

    @classmethod
    def from_config(cls, cfg):
        return cls(gamma=cfg.MODEL.OOD.POST_HOC.GEN.GAMMA, top_m=cfg.MODEL.OOD.POST_HOC.GEN.TOP_M)

    def forward(self, features, logits, layer_features=None, logits_of=None):
        return generalized_entropy(logits, self.gamma, self.top_m)
