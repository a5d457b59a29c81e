"""Virtual outlier synthesis: low-likelihood samples of class-conditional Gaussians (VOS eq. 3).

With a factor L of the shared covariance (L L^T = Sigma), a sample of N(mu_k, Sigma) is
v = mu_k + L z with z ~ N(0, I), and its log-likelihood is const - ||z||^2 / 2. The least
likely of SAMPLE_FROM samples are therefore those of largest ||z||^2, so no density has to
be evaluated. Moreover ||z||^2 ~ chi-square(D) independently of the direction z / ||z||,
which is uniform on the sphere: keeping the SELECT largest of SAMPLE_FROM chi-square(D)
variates and giving each an independent uniform direction has exactly the distribution of
"draw SAMPLE_FROM Gaussian samples, keep the SELECT least likely".

The SELECT largest of n = SAMPLE_FROM chi-square variates need not be drawn one by one
either: they are the chi-square quantiles of the SELECT smallest of n uniform survival
probabilities, whose joint law is explicit (see :func:`largest_chi2_order_statistics`). The
radii of the "chi2" sampler therefore cost O(K * SELECT), whatever SAMPLE_FROM and D; the
rest is K * SELECT uniform directions and their products with L, O(K * SELECT * D^2). The
"gaussian" sampler costs O(K * SAMPLE_FROM * D).
"""
import logging
import math
from typing import Optional

import torch

from ...config.choices import SAMPLERS

__all__ = [
    "robust_cholesky",
    "sample_virtual_outliers",
    "largest_chi2_order_statistics",
    "chi2_isf_log",
    "tail_chi2_radii",
    "SAMPLERS",
]

logger = logging.getLogger(__name__)

# Each failed factorisation multiplies the jitter added to the diagonal by this factor.
_JITTER_GROWTH = 10.0
_MAX_CHOLESKY_TRIES = 6
# Largest number of random values drawn at once (per chunk of classes), "gaussian" sampler.
_MAX_DRAWS_PER_CHUNK = 1 << 24
# Chi-square quantiles: Newton (with bisection safeguard) until the relative step is below
# this, at most _MAX_QUANTILE_ITERATIONS times.
_QUANTILE_RTOL = 1e-13
_MAX_QUANTILE_ITERATIONS = 100
# Smallest survival probability inverted (log scale). Reached only if an Exp(1) draw is
# below ~1e-300 * SAMPLE_FROM, i.e. never in practice; it keeps gammaincc away from underflow.
_MIN_LOG_SURVIVAL = -690.0


def robust_cholesky(covariance, eps: float):
    """A factor L with L L^T = covariance + jitter * I, never failing on a finite input.

    Tries a Cholesky factorisation with jitter ``eps``, multiplying the jitter by 10 after
    each failure; if that never succeeds, falls back to the symmetric square root of the
    eigen-decomposition with eigenvalues clamped to at least ``eps``.

    Cost: one (D, D) copy whose diagonal gets the jitter in place (no identity matrix is
    built), and the factorisation. Finiteness is tested through the sum of all entries
    (finite whenever every entry is); only if that sum is not finite, which a finite matrix
    can also give by overflow, are the entries scanned one by one. The result is the same
    as testing every entry first.

    Args:
        covariance (Tensor): (D, D) symmetric matrix, float32 or float64 (only its lower
            triangle enters the factorisation; all of it is checked for NaN/Inf).
        eps (float): the initial jitter (the paper's "+ eps * I").

    Returns:
        Tensor or None: (D, D) factor, or None when the covariance holds NaN or Inf.
    """
    jittered = covariance.clone()
    diagonal = jittered.diagonal()
    jitter = eps
    for attempt in range(_MAX_CHOLESKY_TRIES):
        if attempt:
            diagonal.copy_(covariance.diagonal())
        # The same value as covariance + jitter * I, entry for entry.
        diagonal.add_(jitter)
        factor, info = torch.linalg.cholesky_ex(jittered)
        if not attempt:
            # One read from the device for both questions (a non-finite matrix fails or
            # gives a non-finite factor; it is never returned).
            finite_sum, failed = torch.stack([torch.isfinite(covariance.sum()).long(), info]).tolist()
            if not finite_sum and not bool(torch.isfinite(covariance).all()):
                logger.warning("VOS: the feature covariance holds NaN/Inf; skipping outlier synthesis")
                return None
        else:
            failed = int(info)
        if failed == 0:
            if jitter != eps:
                logger.warning("VOS: covariance not positive definite; used jitter %.3g", jitter)
            return factor
        jitter *= _JITTER_GROWTH
    logger.warning("VOS: Cholesky failed with jitter up to %.3g; using eigenvalue clamping", jitter)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return eigenvectors * eigenvalues.clamp_min(eps).sqrt()[None, :]


def _chunks(num_classes: int, draws_per_class: int):
    per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // max(1, draws_per_class))
    for start in range(0, num_classes, per_chunk):
        yield slice(start, min(start + per_chunk, num_classes))


def _log1mexp(x):
    """log(1 - exp(-x)) for x > 0, accurate for small and large x."""
    return torch.where(x < math.log(2.0), torch.log(-torch.expm1(-x)), torch.log1p(-torch.exp(-x)))


def chi2_isf_log(log_survival, dim: int):
    """The chi-square(dim) quantile x with log P(X > x) = ``log_survival``, float64.

    Solves log Q(dim / 2, x / 2) = log q (Q = torch.special.gammaincc) by Newton steps on
    the log survival function, safeguarded by bisection in a bracket [0, hi] that always
    holds the root: hi = dim + 2 sqrt(dim t) + 2 t with t = -log q satisfies
    P(X >= hi) <= q (Laurent & Massart 2000, Lemma 1). The start is the Wilson-Hilferty
    approximation (exact to a few digits at large dim). For dim >= 2, log Q is concave, so
    Newton converges monotonically after its first step. Working with log q keeps full
    relative accuracy in the far tail (q down to exp(-690)).

    Args:
        log_survival (Tensor): float64 log q, q in (0, 1).
        dim (int): degrees of freedom.

    Returns:
        Tensor: float64 quantiles, the shape of ``log_survival``.
    """
    log_q = log_survival.clamp_min(_MIN_LOG_SURVIVAL)
    half = torch.full_like(log_q, dim / 2.0)
    log_norm = (dim / 2.0) * math.log(2.0) + math.lgamma(dim / 2.0)
    t = -log_q
    high = dim + 2.0 * torch.sqrt(dim * t) + 2.0 * t
    low = torch.zeros_like(high)
    c = 2.0 / (9.0 * dim)
    # Standard normal upper quantile of q: -ndtri(q), accurate for tiny q.
    normal = -torch.special.ndtri(torch.exp(log_q))
    x = dim * (1.0 - c + normal * math.sqrt(c)) ** 3
    x = torch.where((x > 0) & (x < high), x, high / 2)
    for _ in range(_MAX_QUANTILE_ITERATIONS):
        # log Q(x), through log1p(-P(x)) where Q is close to 1 (x below the median).
        survival = torch.special.gammaincc(half, x / 2)
        log_q_x = torch.where(
            survival > 0.5, torch.log1p(-torch.special.gammainc(half, x / 2)), torch.log(survival)
        )
        excess = log_q_x - log_q  # > 0 iff x is below the root
        low = torch.where(excess > 0, x, low)
        high = torch.where(excess > 0, high, x)
        log_pdf = (half - 1) * torch.log(x) - x / 2 - log_norm
        # d log Q / dx = -pdf / Q.
        newton = x + excess * torch.exp(log_q_x - log_pdf)
        inside = (newton >= low) & (newton <= high)  # False for NaN as well
        updated = torch.where(inside, newton, (low + high) / 2)
        done = bool(((updated - x).abs() <= _QUANTILE_RTOL * x).all())
        x = updated
        if done:
            break
    return x


def largest_chi2_order_statistics(num_classes: int, num_samples: int, num_select: int, dim: int,
                                  generator=None):
    """The ``num_select`` largest of ``num_samples`` i.i.d. chi-square(dim) draws, per class.

    Exactly the law of ``torch.topk(chi2.sample((num_classes, num_samples)), num_select)``,
    at O(num_classes * num_select) cost. Let q_(1) < ... < q_(s) be the s smallest of n
    i.i.d. uniforms (the survival probabilities P(X > x) of the draws; the largest draws
    are those of smallest survival). By Renyi's representation, with E_i i.i.d. Exp(1),

        1 - q_(j) = exp(-sum_{i <= j} E_i / (n - i + 1)),

    e.g. 1 - q_(1) = V^(1/n) with V = exp(-E_1) uniform: the largest of n uniforms. Each
    radius is the chi-square quantile of its q (:func:`chi2_isf_log`), computed in float64
    from log q without forming 1 - q, so that the extreme tail (n up to 1e5 and beyond)
    keeps full relative accuracy.

    Args:
        num_classes (int): K, independent sets of draws.
        num_samples (int): n = SAMPLE_FROM.
        num_select (int): s = SELECT <= n.
        dim (int): degrees of freedom D.
        generator (torch.Generator, optional): CPU generator of the K * s Exp(1) draws;
            None uses the global CPU stream.

    Returns:
        Tensor: (K, s) float64 on the CPU, each row strictly decreasing (with probability 1).
    """
    exponentials = torch.empty(num_classes, num_select, dtype=torch.float64).exponential_(generator=generator)
    remaining = num_samples - torch.arange(num_select, dtype=torch.float64)
    # -log(1 - q_(j)), increasing in j; clamped away from 0 (an Exp(1) draw of exactly 0).
    cumulative = torch.cumsum(exponentials / remaining, dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return chi2_isf_log(_log1mexp(cumulative), dim)


def tail_chi2_radii(num_classes: int, num_select: int, dim: int, tail: float, generator=None):
    """Squared radii of N(0, I_dim) draws conditioned on lying in the ``tail`` of the law.

    A Gaussian sample is below the likelihood threshold of eq. 3 iff its squared radius
    ||z||^2 exceeds t = chi2.isf(tail, dim); conditioned on that, its survival probability
    P(X > ||z||^2) is uniform on (0, tail). So each squared radius is the chi-square
    quantile of tail * U, U uniform, computed from log(tail) - Exp(1) without underflow.

    Args:
        num_classes (int): K.
        num_select (int): radii per class.
        dim (int): degrees of freedom D.
        tail (float): the tail probability, in (0, 1).
        generator (torch.Generator, optional): CPU generator of the draws.

    Returns:
        Tensor: (K, num_select) float64 on the CPU, each >= chi2.isf(tail, dim).
    """
    if not 0.0 < tail < 1.0:
        raise ValueError(f"MODEL.VOS.OUTLIER_TAIL must lie in (0, 1) (0 = off), got {tail}")
    exponentials = torch.empty(num_classes, num_select, dtype=torch.float64).exponential_(generator=generator)
    return chi2_isf_log(math.log(tail) - exponentials, dim)


def _chi2_route(means, num_samples, num_select, generator, tail=0.0):
    num_classes, dim = means.shape
    if tail > 0:
        squared_radii = tail_chi2_radii(num_classes, num_select, dim, tail, generator)
    else:
        squared_radii = largest_chi2_order_statistics(num_classes, num_samples, num_select, dim, generator)
    directions = torch.randn(num_classes, num_select, dim, dtype=torch.float64, generator=generator)
    directions = directions * (squared_radii.sqrt() / directions.norm(dim=2))[..., None]
    # Drawn on the host (the radii's Newton iterations read their convergence there); the
    # copy to the device does not wait for the device's queue of work.
    return directions.to(device=means.device, dtype=means.dtype, non_blocking=True)


def _gaussian_route(means, num_samples, num_select, generator):
    num_classes, dim = means.shape
    selected = []
    for chunk in _chunks(num_classes, num_samples * dim):
        z = torch.randn(
            chunk.stop - chunk.start, num_samples, dim,
            device=means.device, dtype=torch.float32, generator=generator,
        )
        keep = torch.topk(z.square().sum(dim=2), num_select, dim=1).indices
        selected.append(torch.gather(z, 1, keep[..., None].expand(-1, -1, dim)))
    return torch.cat(selected).to(means.dtype)


def sample_virtual_outliers(
    means,
    scale,
    num_samples: int,
    num_select: int,
    *,
    sampler: str = "chi2",
    seed: Optional[int] = None,
    tail: float = 0.0,
    radius_scale: float = 1.0,
):
    """For each class, the ``num_select`` least likely of ``num_samples`` draws of N(mu_k, Sigma).

    Two variants move the outliers out of the ID shell (neither is the paper's; both off by
    default): ``tail`` > 0 replaces "least likely of ``num_samples``" by eq. 3's likelihood
    threshold itself, ``num_select`` draws of N(mu_k, Sigma) conditioned on a likelihood
    below that of the ``tail`` quantile (:func:`tail_chi2_radii`; ``num_samples`` unused);
    ``radius_scale`` multiplies every outlier's Mahalanobis radius (v = mu_k + s L z).

    Args:
        means (Tensor): (K, D) class means.
        scale (Tensor): (D, D) factor L of the shared covariance, L L^T = Sigma.
        num_samples (int): SAMPLE_FROM, draws per class.
        num_select (int): SELECT, lowest-likelihood draws kept per class.
        sampler (str): "chi2" (default: the SELECT largest radii ||z||^2 drawn directly as
            chi-square(D) order statistics, :func:`largest_chi2_order_statistics`, each with
            an independent uniform direction; cost independent of SAMPLE_FROM) or "gaussian"
            (SAMPLE_FROM full z ~ N(0, I) draws per class ranked by ||z||^2). Identical
            distributions.
        seed (int, optional): seeds a private random stream (a torch.Generator, on the CPU
            for "chi2", whose draws are then moved to the device of ``means``, and on that
            device for "gaussian"), so the outliers do not depend on (nor consume) the
            global random state of any device: every rank of a distributed run given the
            same seed draws the same outliers, and a resumed run redraws them. None uses
            the global random state.
        tail (float): tail probability of the likelihood threshold, in (0, 1), "chi2" only;
            0 = off.
        radius_scale (float): s > 0, the factor on the radius of every outlier; 1 = off.

    Returns:
        tuple[Tensor, Tensor]: outliers (K * num_select, D) in the dtype and device of
        ``means``, and their class indices (K * num_select,) int64. For "chi2", the
        outliers of a class come in decreasing order of ||z||.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"MODEL.VOS.SAMPLER must be one of {SAMPLERS}, got {sampler!r}")
    if num_select <= 0 or (tail == 0 and num_select > num_samples):
        raise ValueError(
            f"need 0 < SELECT <= SAMPLE_FROM, got SELECT={num_select}, SAMPLE_FROM={num_samples}"
        )
    if tail > 0 and sampler != "chi2":
        raise ValueError(f"MODEL.VOS.OUTLIER_TAIL needs MODEL.VOS.SAMPLER 'chi2', got {sampler!r}")
    if radius_scale <= 0:
        raise ValueError(f"MODEL.VOS.OUTLIER_RADIUS_SCALE must be > 0, got {radius_scale}")
    num_classes, dim = means.shape
    generator = None
    if sampler == "chi2":
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        z = _chi2_route(means, num_samples, num_select, generator, tail)
    else:
        if seed is not None:
            generator = torch.Generator(device=means.device).manual_seed(seed)
        z = _gaussian_route(means, num_samples, num_select, generator)
    if radius_scale != 1.0:
        z = z * radius_scale
    outliers = means[:, None, :] + z @ scale.T
    labels = torch.arange(num_classes, device=means.device).repeat_interleave(num_select)
    return outliers.reshape(-1, dim), labels
