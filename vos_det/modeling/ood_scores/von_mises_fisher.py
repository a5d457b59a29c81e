"""The von Mises-Fisher density on the unit sphere S^{d-1} of R^d, in log space.

    vMF(z; mu, kappa) = C_d(kappa) exp(kappa mu.z),
    C_d(kappa) = kappa^(d/2 - 1) / ((2 pi)^(d/2) I_{d/2 - 1}(kappa)),

with mean direction mu (||mu|| = 1), concentration kappa >= 0 and I_v the modified Bessel
function of the first kind. SIREN (:mod:`.siren`) trains and scores with it.

The log-normaliser is computed from the power series of the Bessel function, with its
kappa^v factor cancelled against the numerator (v = d/2 - 1):

    log C_d(kappa) = v log 2 - (v + 1) log(2 pi) - log S_v(kappa),
    S_v(kappa) = sum_{m >= 0} (kappa / 2)^(2m) / (m! Gamma(m + v + 1)),

summed as a logsumexp of the log-terms. The terms are log-concave in m and peak at
m* = (sqrt(v^2 + kappa^2) - v) / 2 with a spread below sqrt(m*), so a window of
m* +- (10 sqrt(m*) + 20) terms holds the sum to float64 precision (the terms left out are
below exp(-50) of the largest) for any kappa: about 20 sqrt(kappa / 2) terms when kappa is
large. It is finite at kappa = 0 (the uniform density, log C_d(0) = log Gamma(d/2) - log 2 -
(d/2) log pi), and its autograd gradient is that of the series, -I_{v+1}(kappa) /
I_v(kappa). The released code (deeplearning-wisc/siren, ``rcnn/detection/vmf.py`` lines
41-51 and 70) evaluates the same log C_d with mpmath's arbitrary-precision Bessel function
on the CPU and writes the gradient -I_{v+1} / I_v by hand.
"""
import math

import torch

__all__ = ["vmf_log_likelihoods", "vmf_log_normalizer"]

# kappa is clamped to at least this before its logarithm is taken: the m = 0 term of the
# series is then exactly 0 and the others underflow, so log C_d(0) comes out exact.
_SMALLEST_KAPPA = torch.finfo(torch.float64).tiny
# The window of series terms around the peak m*: m* +- (_WIDTH_PER_SPREAD sqrt(m*) + _MIN_WIDTH).
_WIDTH_PER_SPREAD, _MIN_WIDTH = 10.0, 20


def vmf_log_normalizer(kappa, dim: int):
    """log C_d(kappa), the logarithm of the vMF normalising constant on S^{dim-1}.

    Args:
        kappa (Tensor): concentrations >= 0, any shape.
        dim: d >= 2, the dimension of the space the unit vectors live in.

    Returns:
        Tensor: log C_d(kappa), the shape and dtype of ``kappa`` (computed in float64),
        differentiable with respect to ``kappa``.
    """
    if dim < 2:
        raise ValueError(f"the vMF dimension must be >= 2, got {dim}")
    order = dim / 2.0 - 1.0
    kappa64 = kappa.double().clamp_min(_SMALLEST_KAPPA)
    with torch.no_grad():
        peak = ((order**2 + kappa64**2).sqrt() - order) / 2.0
        half_width = math.ceil(_WIDTH_PER_SPREAD * math.sqrt(float(peak.max())) + _MIN_WIDTH)
        first = (peak - half_width).floor().clamp_min(0.0)
        m = first.unsqueeze(-1) + torch.arange(2 * half_width + 1, dtype=torch.float64, device=kappa.device)
        log_factorials = torch.lgamma(m + 1.0) + torch.lgamma(m + order + 1.0)
    log_terms = 2.0 * m * torch.log(kappa64 / 2.0).unsqueeze(-1) - log_factorials
    log_series = torch.logsumexp(log_terms, dim=-1)
    log_normalizer = order * math.log(2.0) - (order + 1.0) * math.log(2.0 * math.pi) - log_series
    return log_normalizer.to(kappa.dtype)


def vmf_log_likelihoods(embeddings, mean_directions, kappa):
    """log vMF(z_i; mu_k, kappa_k) of every embedding under every class distribution.

    Args:
        embeddings (Tensor): (N, d) unit vectors z.
        mean_directions (Tensor): (K, d) unit vectors mu_k (a zero row gives kappa_k mu_k.z = 0).
        kappa (Tensor): (K,) concentrations >= 0.

    Returns:
        Tensor: (N, K) kappa_k mu_k.z_i + log C_d(kappa_k), in the dtype of ``embeddings``.
    """
    kappa = kappa.to(embeddings.dtype)
    cosines = embeddings @ mean_directions.to(embeddings.dtype).t()
    return cosines * kappa + vmf_log_normalizer(kappa, embeddings.shape[1])
