"""Virtual outlier synthesis: low-likelihood samples of class-conditional Gaussians (VOS eq. 3).

With a factor L of the shared covariance (L L^T = Sigma), a sample of N(mu_k, Sigma) is
v = mu_k + L z with z ~ N(0, I), and its log-likelihood is const - ||z||^2 / 2. The least
likely of SAMPLE_FROM samples are therefore those of largest ||z||^2, so no density has to
be evaluated. Moreover ||z||^2 ~ chi-square(D) independently of the direction z / ||z||,
which is uniform on the sphere: drawing SAMPLE_FROM chi-square variates, keeping the SELECT
largest and giving each an independent uniform direction has exactly the distribution of
"draw SAMPLE_FROM Gaussian samples, keep the SELECT least likely", at O(K * SAMPLE_FROM)
cost instead of O(K * SAMPLE_FROM * D).
"""
import logging
from typing import Optional

import torch

__all__ = ["robust_cholesky", "sample_virtual_outliers", "SAMPLERS"]

logger = logging.getLogger(__name__)

SAMPLERS = ("chi2", "gaussian")
# Each failed factorisation multiplies the jitter added to the diagonal by this factor.
_JITTER_GROWTH = 10.0
_MAX_CHOLESKY_TRIES = 6
# Largest number of random values drawn at once (per chunk of classes).
_MAX_DRAWS_PER_CHUNK = 1 << 24


def robust_cholesky(covariance, eps: float):
    """A factor L with L L^T = covariance + jitter * I, never failing on a finite input.

    Tries a Cholesky factorisation with jitter ``eps``, multiplying the jitter by 10 after
    each failure; if that never succeeds, falls back to the symmetric square root of the
    eigen-decomposition with eigenvalues clamped to at least ``eps``.

    Args:
        covariance (Tensor): (D, D) symmetric matrix, float32 or float64.
        eps (float): the initial jitter (the paper's "+ eps * I").

    Returns:
        Tensor or None: (D, D) factor, or None when the covariance holds NaN or Inf.
    """
    if not bool(torch.isfinite(covariance).all()):
        logger.warning("VOS: the feature covariance holds NaN/Inf; skipping outlier synthesis")
        return None
    identity = torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
    jitter = eps
    for _ in range(_MAX_CHOLESKY_TRIES):
        factor, info = torch.linalg.cholesky_ex(covariance + jitter * identity)
        if int(info) == 0:
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


def _largest_chi2_radii(num_classes, num_samples, num_select, dim):
    """(K, num_select) largest of num_samples chi-square(dim) draws per class, float64, CPU."""
    chi2 = torch.distributions.Chi2(torch.tensor(float(dim), dtype=torch.float64))
    selected = [
        torch.topk(chi2.sample((chunk.stop - chunk.start, num_samples)), num_select, dim=1).values
        for chunk in _chunks(num_classes, num_samples)
    ]
    return torch.cat(selected)


def _chi2_route(means, num_samples, num_select):
    num_classes, dim = means.shape
    squared_radii = _largest_chi2_radii(num_classes, num_samples, num_select, dim)
    directions = torch.randn(num_classes, num_select, dim, dtype=torch.float64)
    directions = directions / directions.norm(dim=2, keepdim=True)
    z = directions * squared_radii.sqrt()[..., None]
    return z.to(device=means.device, dtype=means.dtype)


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
):
    """For each class, the ``num_select`` least likely of ``num_samples`` draws of N(mu_k, Sigma).

    Args:
        means (Tensor): (K, D) class means.
        scale (Tensor): (D, D) factor L of the shared covariance, L L^T = Sigma.
        num_samples (int): SAMPLE_FROM, draws per class.
        num_select (int): SELECT, lowest-likelihood draws kept per class.
        sampler (str): "chi2" (radii drawn from chi-square(D), default) or "gaussian"
            (full z ~ N(0, I) draws ranked by ||z||^2); identical distributions.
        seed (int, optional): seeds a private random stream, so the outliers do not
            depend on (nor consume) the global random state: every rank of a distributed
            run given the same seed draws the same outliers, and a resumed run redraws
            them. None uses the global random state.

    Returns:
        tuple[Tensor, Tensor]: outliers (K * num_select, D) in the dtype and device of
        ``means``, and their class indices (K * num_select,) int64.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"MODEL.VOS.SAMPLER must be one of {SAMPLERS}, got {sampler!r}")
    if not 0 < num_select <= num_samples:
        raise ValueError(
            f"need 0 < SELECT <= SAMPLE_FROM, got SELECT={num_select}, SAMPLE_FROM={num_samples}"
        )
    num_classes, dim = means.shape
    if sampler == "chi2":
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                # Only the CPU generator: torch.manual_seed would also reseed CUDA's.
                torch.default_generator.manual_seed(seed)
            z = _chi2_route(means, num_samples, num_select)
    else:
        generator = None
        if seed is not None:
            generator = torch.Generator(device=means.device)
            generator.manual_seed(seed)
        z = _gaussian_route(means, num_samples, num_select, generator)
    outliers = means[:, None, :] + z @ scale.T
    labels = torch.arange(num_classes, device=means.device).repeat_interleave(num_select)
    return outliers.reshape(-1, dim), labels
