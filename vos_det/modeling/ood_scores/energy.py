"""Energy scores of classifier logits (Liu et al. 2020; VOS eq. 6).

The logits here are the K foreground logits of the box predictor; the background logit
is excluded. The free energy is low for in-distribution boxes, so it is already an OOD
score: larger energy = more out-of-distribution.
"""
import math

import torch

__all__ = ["weighted_logsumexp", "energy", "weighted_energy", "max_softmax_ood_score"]

# Stands in for log(0) of the all-zero-weights case, where sum_k w_k exp(f_k) = 0: keeps
# -E finite (about 69 below the plain logsumexp) instead of -inf.
_LOG_WEIGHT_FLOOR = math.log(1e-30)


def weighted_logsumexp(logits, weights):
    """log sum_k w_k exp(f_k), computed stably with a max-shift.

    Classes with w_k = 0 are left out exactly, so a large logit of a
    zero-weight class cannot swamp the others. When every weight is zero the value is
    logsumexp(f) + log(1e-30) rather than -inf.

    Args:
        logits (Tensor): (N, K) foreground logits f.
        weights (Tensor): (K,) non-negative class weights w.

    Returns:
        Tensor: (N,) values.
    """
    positive = weights > 0
    # Both cases are computed and one is selected on the device (a Python branch on
    # "any weight positive" would read it back to the host at every call).
    any_positive = positive.any()
    # Shift by the largest logit among the classes that count; the sum is then >= the
    # (positive) weight of that class, so its log is finite. (With no positive weight the
    # shift is any finite value, and the log's argument 1: the result is not used.)
    shift = logits.detach().masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    shift = torch.where(any_positive, shift, 0.0)
    terms = weights * torch.exp((logits - shift).masked_fill(~positive, float("-inf")))
    weighted = shift.squeeze(1) + torch.log(torch.where(any_positive, terms.sum(dim=1), 1.0))
    # weights * 0 keeps them in the graph, with the zero gradient they have in this case.
    floor = torch.logsumexp(logits, dim=1) + _LOG_WEIGHT_FLOOR + weights.sum() * 0.0
    return torch.where(any_positive, weighted, floor)


def energy(logits):
    """Free energy E(f) = -log sum_k exp(f_k). Larger = more OOD.

    Args:
        logits (Tensor): (N, K) foreground logits.

    Returns:
        Tensor: (N,) energies.
    """
    return -torch.logsumexp(logits, dim=1)


def weighted_energy(logits, weights):
    """Weighted free energy E(f) = -log sum_k w_k exp(f_k) (VOS eq. 6). Larger = more OOD.

    Args:
        logits (Tensor): (N, K) foreground logits.
        weights (Tensor): (K,) non-negative class weights.

    Returns:
        Tensor: (N,) energies.
    """
    return -weighted_logsumexp(logits, weights)


def max_softmax_ood_score(logits):
    """Negative maximum softmax probability over the foreground classes (MSP baseline).

    Args:
        logits (Tensor): (N, K) foreground logits.

    Returns:
        Tensor: (N,) values in [-1, -1/K]; larger = more OOD.
    """
    return -torch.softmax(logits, dim=1).max(dim=1).values
