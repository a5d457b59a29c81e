"""Box classifiers with normalised embeddings and angular margins, chosen by config.

Each replaces the ``cls_score`` linear layer of the box predictor (K + 1 outputs, the last
one the background). Two kinds of logits are produced:

* ``forward(x)``: the logits used at inference, by the OOD scores and by the VOS
  uncertainty loss (no margin);
* ``training_logits(logits, x, labels, iteration)``: the logits the classification
  cross-entropy is trained on, with the margin on the logit of each box's true class.

With x a box feature, x_hat = x / ||x||, w_j the weight of class j, w_hat_j = w_j / ||w_j||
and cos(theta_j) = w_hat_j . x_hat:

=====================  ===========================  ===================================
classifier             inference logit j            training logit of the true class t
=====================  ===========================  ===================================
LinearClassifier       w_j . x + b_j                the same (plain softmax)
L2SoftmaxClassifier    w_j . (alpha x_hat) + b_j    the same (the constraint is the margin)
CosFaceClassifier      s cos(theta_j)               s (cos(theta_t) - m)
ArcFaceClassifier      s cos(theta_j)               s cos(theta_t + m)
SphereFaceClassifier   ||x|| cos(theta_j)           ||x|| (lambda cos(theta_t) + psi(theta_t)) / (1 + lambda)
=====================  ===========================  ===================================

References: L2-constrained softmax, Ranjan et al., arXiv:1703.09507 (2017); CosFace, Wang
et al., CVPR 2018; ArcFace, Deng et al., CVPR 2019; SphereFace (A-Softmax), Liu et al.,
CVPR 2017.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.utils.registry import Registry

from ..config_options import options_from_config, registered

__all__ = [
    "CLASSIFIER_REGISTRY",
    "build_box_classifier",
    "LinearClassifier",
    "L2SoftmaxClassifier",
    "CosFaceClassifier",
    "ArcFaceClassifier",
    "SphereFaceClassifier",
]

CLASSIFIER_REGISTRY = Registry("BOX_CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = """
Classification layers of the box predictor, selected by ``cfg.MODEL.EMBEDDING.CLASSIFIER``
and called as ``classifier(cfg, input_dim, num_outputs)``. Each has ``forward(x)`` (inference
logits) and ``training_logits(logits, x, labels, iteration)`` (logits with the margin, for
the loss).
"""

# Keeps arccos and the normalisations away from their singular points.
_COSINE_LIMIT = 1.0 - 1e-6
_NORM_EPS = 1e-12


def build_box_classifier(cfg, input_dim: int, num_outputs: int) -> nn.Module:
    """The classifier named by ``cfg.MODEL.EMBEDDING.CLASSIFIER``.

    Args:
        cfg (CfgNode): the config.
        input_dim: D, the dimension of the box features.
        num_outputs: K + 1, the foreground classes and the background.

    Raises:
        ConfigError: a name that is not registered.
    """
    classifier = registered(CLASSIFIER_REGISTRY, "MODEL.EMBEDDING.CLASSIFIER", cfg.MODEL.EMBEDDING.CLASSIFIER)
    return classifier(cfg, input_dim, num_outputs)


def _unit_rows(num_rows: int, dim: int):
    """(num_rows, dim) random directions of norm 1: the initial weights of the classifiers
    that normalise them. Only their direction enters the logits; unit norm keeps the step a
    gradient makes on that direction the size it would have for an unnormalised layer."""
    return F.normalize(torch.randn(num_rows, dim), dim=1)


def _cosines(x, weight):
    """cos(theta) between every feature and every class weight: (N, D), (C, D) -> (N, C)."""
    return F.linear(F.normalize(x, dim=1, eps=_NORM_EPS), F.normalize(weight, dim=1, eps=_NORM_EPS))


def _replace_target(logits, labels, target_logits):
    """``logits`` with ``logits[i, labels[i]]`` replaced by ``target_logits[i]``, out of place."""
    one_hot = F.one_hot(labels, logits.shape[1]).to(torch.bool)
    return torch.where(one_hot, target_logits[:, None].to(logits.dtype), logits)


@CLASSIFIER_REGISTRY.register()
class LinearClassifier(nn.Linear):
    """The plain linear classifier of Fast R-CNN (softmax cross-entropy, no margin)."""

    @configurable
    def __init__(self, input_dim: int, num_outputs: int):
        """
        Args:
            input_dim: D, the feature dimension.
            num_outputs: C = K + 1 output logits.
        """
        super().__init__(input_dim, num_outputs)
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_dim, num_outputs):
        return {"input_dim": input_dim, "num_outputs": num_outputs}

    def training_logits(self, logits, features, labels, iteration):
        """The logits unchanged: plain softmax has no margin."""
        return logits


@CLASSIFIER_REGISTRY.register()
class L2SoftmaxClassifier(LinearClassifier):
    """L2-constrained softmax: the features are rescaled to the fixed norm alpha.

    logits = W (alpha x / ||x||) + b. The constraint acts at training and inference alike.
    """

    @configurable
    def __init__(self, input_dim: int, num_outputs: int, *, alpha: float):
        """
        Args:
            input_dim: D, the feature dimension.
            num_outputs: C = K + 1 output logits.
            alpha: the fixed feature norm.
        """
        super().__init__(input_dim, num_outputs)
        if alpha <= 0:
            raise ValueError(f"MODEL.EMBEDDING.L2_SOFTMAX.ALPHA must be > 0, got {alpha}")
        self.alpha = alpha

    @classmethod
    def from_config(cls, cfg, input_dim, num_outputs):
        return {"input_dim": input_dim, "num_outputs": num_outputs, "alpha": cfg.MODEL.EMBEDDING.L2_SOFTMAX.ALPHA}

    def forward(self, x):
        """(N, D) features -> (N, C) logits of the features scaled to norm alpha."""
        return super().forward(self.alpha * F.normalize(x, dim=1, eps=_NORM_EPS))


class _CosineMarginClassifier(nn.Module):
    """Bias-free classifier on cosines: logits s cos(theta_j); a margin on the true class.

    Subclasses set ``config_key`` (their node under ``MODEL.EMBEDDING``, with SCALE and
    MARGIN) and define :meth:`margin_cosine`, the true class's cos(theta) after the margin.
    """

    config_key = ""

    @configurable
    def __init__(self, input_dim: int, num_outputs: int, *, scale: float, margin: float):
        """
        Args:
            input_dim: D, the feature dimension.
            num_outputs: C = K + 1 output logits.
            scale: s, the norm the features are rescaled to.
            margin: m, the margin of the true class.
        """
        super().__init__()
        if scale <= 0:
            raise ValueError(f"MODEL.EMBEDDING.{self.config_key}.SCALE must be > 0, got {scale}")
        if margin < 0:
            raise ValueError(f"MODEL.EMBEDDING.{self.config_key}.MARGIN must be >= 0, got {margin}")
        self.weight = nn.Parameter(_unit_rows(num_outputs, input_dim))
        self.scale = scale
        self.margin = margin

    @classmethod
    def from_config(cls, cfg, input_dim, num_outputs):
        options = options_from_config(cfg.MODEL.EMBEDDING[cls.config_key], "scale", "margin")
        return {"input_dim": input_dim, "num_outputs": num_outputs, **options}

    def forward(self, x):
        """(N, D) features -> (N, C) logits s cos(theta)."""
        return self.scale * _cosines(x, self.weight)

    def training_logits(self, logits, features, labels, iteration):
        """Logits with the true class's s cos(theta_t) replaced by s * margin_cosine.

        Args:
            logits (Tensor): (N, C) the output of :meth:`forward` on ``features``.
            features (Tensor): (N, D) box features (unused: the cosines are in the logits).
            labels (Tensor): (N,) true classes in [0, C).
            iteration (int): the training iteration (unused: the margin is fixed).
        """
        cosine = (logits.gather(1, labels[:, None])[:, 0] / self.scale).clamp(-_COSINE_LIMIT, _COSINE_LIMIT)
        return _replace_target(logits, labels, self.scale * self.margin_cosine(cosine))

    def margin_cosine(self, cosine):
        """(N,) true-class cos(theta_t) -> (N,) the value that replaces it in the loss."""
        raise NotImplementedError


@CLASSIFIER_REGISTRY.register()
class CosFaceClassifier(_CosineMarginClassifier):
    """CosFace (large margin cosine loss): true-class logit s (cos(theta_t) - m)."""

    config_key = "COSFACE"

    def margin_cosine(self, cosine):
        return cosine - self.margin


@CLASSIFIER_REGISTRY.register()
class ArcFaceClassifier(_CosineMarginClassifier):
    """ArcFace (additive angular margin): true-class logit s cos(theta_t + m), m in radians.

    Beyond theta_t = pi - m, cos(theta_t + m) would grow again with theta_t; there the
    true-class cosine is cos(theta_t) - m sin(m) instead (a CosFace-style margin), which
    keeps it decreasing in theta_t, as in the ArcFace authors' released implementation.
    """

    config_key = "ARCFACE"

    @configurable
    def __init__(self, input_dim: int, num_outputs: int, *, scale: float, margin: float):
        super().__init__(input_dim, num_outputs, scale=scale, margin=margin)
        if margin >= math.pi / 2:
            raise ValueError(f"MODEL.EMBEDDING.ARCFACE.MARGIN must be < pi / 2, got {margin}")

    def margin_cosine(self, cosine):
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=0.0))
        shifted = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        # theta + m <= pi  <=>  cos(theta) >= cos(pi - m)
        return torch.where(cosine >= math.cos(math.pi - self.margin), shifted, cosine - self.margin * math.sin(self.margin))


@CLASSIFIER_REGISTRY.register()
class SphereFaceClassifier(nn.Module):
    """SphereFace (A-Softmax): multiplicative angular margin, feature norm kept.

    Logits ||x|| cos(theta_j) with normalised, bias-free class weights. The true class's
    logit is ||x|| psi(theta_t) with psi(theta) = (-1)^k cos(m theta) - 2k for theta in
    [k pi / m, (k + 1) pi / m], k = 0 .. m - 1 (monotone decreasing on [0, pi]). As in the
    paper's training, it is blended with the plain logit,
    ||x|| (lambda cos(theta_t) + psi(theta_t)) / (1 + lambda), lambda annealed with the
    iteration i as max(lambda_min, lambda_base (1 + gamma i) ^ -power).
    """

    @configurable
    def __init__(
        self,
        input_dim: int,
        num_outputs: int,
        *,
        margin: int,
        lambda_base: float,
        lambda_min: float,
        lambda_gamma: float,
        lambda_power: float,
    ):
        """
        Args:
            input_dim: D, the feature dimension.
            num_outputs: C = K + 1 output logits.
            margin: m, the integer angle multiplier (paper: 4).
            lambda_base, lambda_min, lambda_gamma, lambda_power: the lambda schedule.
        """
        super().__init__()
        if int(margin) != margin or margin < 1:
            raise ValueError(f"MODEL.EMBEDDING.SPHEREFACE.MARGIN must be an integer >= 1, got {margin}")
        if lambda_min < 0 or lambda_base < lambda_min:
            raise ValueError(
                "MODEL.EMBEDDING.SPHEREFACE needs 0 <= LAMBDA_MIN <= LAMBDA_BASE, got "
                f"LAMBDA_MIN={lambda_min}, LAMBDA_BASE={lambda_base}"
            )
        self.weight = nn.Parameter(_unit_rows(num_outputs, input_dim))
        self.margin = int(margin)
        self.lambda_base = lambda_base
        self.lambda_min = lambda_min
        self.lambda_gamma = lambda_gamma
        self.lambda_power = lambda_power

    @classmethod
    def from_config(cls, cfg, input_dim, num_outputs):
        options = options_from_config(
            cfg.MODEL.EMBEDDING.SPHEREFACE, "margin", "lambda_base", "lambda_min", "lambda_gamma", "lambda_power"
        )
        return {"input_dim": input_dim, "num_outputs": num_outputs, **options}

    def forward(self, x):
        """(N, D) features -> (N, C) logits ||x|| cos(theta) = w_hat . x."""
        return F.linear(x, F.normalize(self.weight, dim=1, eps=_NORM_EPS))

    def blend_lambda(self, iteration: int) -> float:
        """lambda at ``iteration``: max(lambda_min, lambda_base (1 + gamma i) ^ -power)."""
        annealed = self.lambda_base * (1.0 + self.lambda_gamma * iteration) ** (-self.lambda_power)
        return max(self.lambda_min, annealed)

    def psi(self, cosine):
        """psi(theta) = (-1)^k cos(m theta) - 2k from cos(theta), elementwise."""
        theta = torch.acos(cosine.clamp(-_COSINE_LIMIT, _COSINE_LIMIT))
        k = torch.floor(self.margin * theta / math.pi).clamp(max=self.margin - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
        return sign * torch.cos(self.margin * theta) - 2.0 * k

    def training_logits(self, logits, features, labels, iteration):
        """Logits with the true class's ||x|| cos(theta_t) replaced by the blended margin.

        Args:
            logits (Tensor): (N, C) the output of :meth:`forward` on ``features``.
            features (Tensor): (N, D) box features.
            labels (Tensor): (N,) true classes in [0, C).
            iteration (int): the training iteration, for lambda.
        """
        norms = features.norm(dim=1).clamp(min=_NORM_EPS)
        cosine = logits.gather(1, labels[:, None])[:, 0] / norms
        blend = self.blend_lambda(iteration)
        target = norms * (blend * cosine + self.psi(cosine)) / (1.0 + blend)
        return _replace_target(logits, labels, target)
