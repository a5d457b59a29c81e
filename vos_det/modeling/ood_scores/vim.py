"""ViM, the Virtual-logit Matching score (Wang, Li, Feng and Zhang, "ViM: Out-Of-Distribution
with Virtual-logit Matching", CVPR 2022).

Fitted on the training boxes' penultimate features h (N x D) and the class layer
f = W h + b (foreground rows):

- the origin u = -pinv(W) b, so that the logits are W (h - u);
- the principal subspace P: the ``dim`` leading eigenvectors of the uncentred covariance
  of h - u; the residual of a feature is x_res = (I - P P^T)(h - u);
- alpha = sum_i max_k f_k(h_i) / sum_i ||x_res(h_i)||, matching the virtual logit's scale
  to the logits' on the training set.

The virtual logit is l_0 = alpha ||x_res||; the ViM score is its softmax probability among
(l_0, f_1..f_K). Here the score is l_0 - logsumexp(f_1..f_K), the virtual logit minus the
energy's logsumexp as in the authors' code: log p(virtual) = -softplus(-(that)), so the
ranking is the same, but it does not round to exactly 0 in float32 once l_0 dominates (the
log-probability did for most ID boxes on digits-det, tying them). Larger = more OOD.

The paper's dim is 1000 for 2048-d features and 512 for 768-d ones; ``dim`` 0 here means
half the feature dimension (between the two), a rule, not tuned.
"""
import torch

from .base import OOD_SCORE_REGISTRY, PostHocScore

__all__ = ["ViMScore", "vim_ood_score"]


def vim_ood_score(features, logits, origin, residual_basis, alpha):
    """The virtual logit minus logsumexp of the logits of N boxes, (N,); larger = more OOD.

    Args:
        features (Tensor): (N, D).
        logits (Tensor): (N, K) foreground logits.
        origin (Tensor): (D,) u.
        residual_basis (Tensor): (D, D - dim) orthonormal basis of the residual space.
        alpha (Tensor): scalar.
    """
    centred = features.double() - origin.double()
    residual_norm = (centred @ residual_basis.double()).norm(dim=1)
    virtual = alpha.double() * residual_norm
    return (virtual - torch.logsumexp(logits.double(), dim=1)).float()


@OOD_SCORE_REGISTRY.register()
class ViMScore(PostHocScore):
    """ViM (fitted: origin u, residual basis, alpha)."""

    name = "vim"

    def __init__(self, dim: int = 0):
        """
        Args:
            dim: dimension of the principal subspace; 0 = half the feature dimension.
        """
        super().__init__()
        self.dim = dim

    @classmethod
    def from_config(cls, cfg):
        return cls(dim=cfg.MODEL.OOD.POST_HOC.VIM.DIM)

    def fit(self, data):
        features = data.features.double()
        feature_dim = features.shape[1]
        dim = self.dim or feature_dim // 2
        if not 1 <= dim < feature_dim:
            raise ValueError(
                f"MODEL.OOD.POST_HOC.VIM.DIM must lie in [1, {feature_dim - 1}] for "
                f"{feature_dim}-d features, got {dim}"
            )
        if data.classifier_weight is None:
            # A class layer without bias (cosine classifiers): the origin is 0.
            origin = features.new_zeros(feature_dim)
        else:
            weight = data.classifier_weight.double()
            bias = data.classifier_bias.double() if data.classifier_bias is not None else weight.new_zeros(weight.shape[0])
            origin = -torch.linalg.pinv(weight) @ bias
        centred = features - origin
        # Eigenvectors of the uncentred covariance, in increasing eigenvalue order.
        _, eigenvectors = torch.linalg.eigh(centred.T @ centred / features.shape[0])
        residual_basis = eigenvectors[:, : feature_dim - dim]
        residual_norm = (centred @ residual_basis).norm(dim=1)
        alpha = data.logits.double().max(dim=1).values.sum() / residual_norm.sum().clamp_min(1e-12)
        self.fitted_config = {"dim": dim}
        self.set_fitted(origin=origin, residual_basis=residual_basis, alpha=alpha)
        return self

    def forward(self, features, logits, layer_features=None, logits_of=None):
        self.require_fitted()
        return vim_ood_score(features, logits, self.origin, self.residual_basis, self.alpha)
