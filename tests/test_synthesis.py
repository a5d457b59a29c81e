"""Tests of vos_det.modeling.vos.synthesis: outlier sampling (VOS eq. 3) and robust Cholesky."""
import numpy as np
import pytest
import torch
from scipy import stats

from vos_det.modeling.vos.synthesis import (
    SAMPLERS,
    chi2_isf_log,
    largest_chi2_order_statistics,
    robust_cholesky,
    sample_virtual_outliers,
)


def _gaussian_parameters(num_classes, dim, seed=0):
    """Well-separated float64 class means and a random positive definite covariance."""
    generator = torch.Generator().manual_seed(seed)
    means = 10.0 * torch.randn(num_classes, dim, dtype=torch.float64, generator=generator)
    a = torch.randn(dim, dim, dtype=torch.float64, generator=generator)
    covariance = a @ a.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)
    return means, covariance, torch.linalg.cholesky(covariance)


def _whitened(outliers, labels, means, scale):
    """z = L^{-1} (v - mu_k) for each outlier v of class k."""
    centred = outliers - means[labels]
    return torch.linalg.solve_triangular(scale, centred.T, upper=False).T


# --- (a) the "gaussian" sampler keeps exactly the least likely of its draws ------------------


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_gaussian_sampler_returns_lowest_likelihood_draws(seed):
    num_classes, dim, num_samples, num_select = 2, 3, 200, 5
    means, _, scale = _gaussian_parameters(num_classes, dim, seed=seed)
    outliers, labels = sample_virtual_outliers(
        means, scale, num_samples, num_select, sampler="gaussian", seed=seed
    )
    assert outliers.shape == (num_classes * num_select, dim)
    assert outliers.dtype == means.dtype
    assert labels.tolist() == [k for k in range(num_classes) for _ in range(num_select)]

    # Reproduce the sampler's draws: one float32 randn of shape (K, S, D) on a generator
    # seeded with `seed` on the device of the means.
    generator = torch.Generator(device=means.device).manual_seed(seed)
    z = torch.randn(num_classes, num_samples, dim, dtype=torch.float32, generator=generator)
    candidates = means[:, None, :] + z.double() @ scale.T
    for k in range(num_classes):
        density = torch.distributions.MultivariateNormal(means[k], scale_tril=scale)
        log_prob = density.log_prob(candidates[k])
        lowest = candidates[k][torch.argsort(log_prob)[:num_select]]
        returned = outliers[labels == k]
        # Same set of rows (order aside).
        distances = torch.cdist(returned, lowest)
        assert torch.all(distances.min(dim=1).values < 1e-9)
        assert torch.all(distances.min(dim=0).values < 1e-9)
        # And every returned outlier is less likely than every draw that was not kept.
        returned_log_prob = density.log_prob(returned)
        assert returned_log_prob.max() <= torch.sort(log_prob).values[num_select] + 1e-9


# --- (b) the "chi2" sampler has the distribution of the "gaussian" one ----------------------


def _selected_radii_and_directions(sampler, num_seeds, num_classes, dim, num_samples, num_select):
    means, _, scale = _gaussian_parameters(num_classes, dim, seed=1)
    radii, directions = [], []
    for seed in range(num_seeds):
        outliers, labels = sample_virtual_outliers(
            means, scale, num_samples, num_select, sampler=sampler, seed=1000 + seed
        )
        z = _whitened(outliers, labels, means, scale)
        squared = z.square().sum(dim=1)
        radii.append(squared)
        directions.append(z / squared.sqrt()[:, None])
    return torch.cat(radii).numpy(), torch.cat(directions).numpy()


def test_chi2_sampler_matches_gaussian_sampler_in_distribution():
    dim, num_samples, num_select, num_classes, num_seeds = 4, 50, 1, 8, 120
    chi2_radii, chi2_dirs = _selected_radii_and_directions(
        "chi2", num_seeds, num_classes, dim, num_samples, num_select
    )
    gauss_radii, gauss_dirs = _selected_radii_and_directions(
        "gaussian", num_seeds, num_classes, dim, num_samples, num_select
    )
    assert stats.ks_2samp(chi2_radii, gauss_radii).pvalue > 0.01
    # Exact law of the largest of S chi2(D) variates: CDF F(x)^S.
    def max_cdf(x):
        return stats.chi2.cdf(x, dim) ** num_samples

    assert stats.kstest(chi2_radii, max_cdf).pvalue > 0.01
    assert stats.kstest(gauss_radii, max_cdf).pvalue > 0.01
    # Uniform directions: E[u] = 0, E[u u^T] = I / D.
    n = chi2_dirs.shape[0]
    for dirs in (chi2_dirs, gauss_dirs):
        np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-9)
        assert np.all(np.abs(dirs.mean(axis=0)) < 5 * np.sqrt(1.0 / dim / n))
        np.testing.assert_allclose(dirs.T @ dirs / n, np.eye(dim) / dim, atol=0.05)
    assert stats.ks_2samp(chi2_dirs[:, 0], gauss_dirs[:, 0]).pvalue > 0.01


def test_chi2_sampler_second_largest_radius_law():
    """With SELECT = 2 the kept radii are the two largest of S chi2(D) draws."""
    dim, num_samples, num_select, num_classes, num_seeds = 4, 30, 2, 8, 80
    chi2_radii, _ = _selected_radii_and_directions("chi2", num_seeds, num_classes, dim, num_samples, num_select)
    gauss_radii, _ = _selected_radii_and_directions(
        "gaussian", num_seeds, num_classes, dim, num_samples, num_select
    )
    assert stats.ks_2samp(chi2_radii, gauss_radii).pvalue > 0.01
    # The mixture of the largest and second largest order statistics of S iid chi2(D):
    # P(max <= x) = F^S, P(2nd <= x) = F^S + S F^(S-1) (1 - F).
    def mixture_cdf(x):
        f = stats.chi2.cdf(x, dim)
        return f**num_samples + 0.5 * num_samples * f ** (num_samples - 1) * (1 - f)

    assert stats.kstest(chi2_radii, mixture_cdf).pvalue > 0.01


def test_chi2_sampler_matches_gaussian_sampler_at_larger_dim():
    dim, num_samples, num_select, num_classes, num_seeds = 64, 300, 1, 40, 12
    chi2_radii, _ = _selected_radii_and_directions("chi2", num_seeds, num_classes, dim, num_samples, num_select)
    gauss_radii, _ = _selected_radii_and_directions(
        "gaussian", num_seeds, num_classes, dim, num_samples, num_select
    )
    assert stats.ks_2samp(chi2_radii, gauss_radii).pvalue > 0.01


# --- (b2) the chi-square order statistics behind the "chi2" sampler ---------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 256, 1024, 2048])
def test_chi2_isf_log_matches_scipy(dim):
    """The quantile solver against scipy's chi2.isf, from q = exp(-690) up to q = 0.99."""
    log_q = torch.cat([torch.linspace(-690.0, -0.01, 400, dtype=torch.float64),
                       torch.log(torch.tensor([1e-5, 1e-4, 0.1, 0.5, 0.9], dtype=torch.float64))])
    x = chi2_isf_log(log_q, dim)
    assert x.dtype == torch.float64 and torch.all(x > 0)
    expected = stats.chi2.isf(np.exp(log_q.numpy()), dim)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-9)
    # And in log space (where isf's own input rounding does not matter).
    np.testing.assert_allclose(stats.chi2.logsf(x.numpy(), dim), log_q.numpy(), rtol=1e-9, atol=1e-12)


def _max_of_n_cdf(x, dim, n):
    """P(max of n iid chi2(dim) <= x) = (1 - sf(x))^n, accurate in the far tail."""
    return np.exp(n * np.log1p(-stats.chi2.sf(x, dim)))


@pytest.mark.parametrize("dim, num_samples", [(256, 10000), (1024, 10000), (2048, 100000), (1024, 100000), (4, 7)])
def test_largest_chi2_radius_has_the_law_of_the_maximum(dim, num_samples):
    """KS test of the returned radius against the exact law of the max of n chi2(dim) draws."""
    generator = torch.Generator().manual_seed(dim + num_samples)
    radii = largest_chi2_order_statistics(4000, num_samples, 1, dim, generator=generator)
    assert radii.shape == (4000, 1) and radii.dtype == torch.float64
    assert stats.kstest(radii[:, 0].numpy(), lambda x: _max_of_n_cdf(x, dim, num_samples)).pvalue > 0.01


@pytest.mark.parametrize("dim, num_samples", [(256, 2000), (1024, 10000)])
def test_largest_chi2_radius_matches_brute_force_draws(dim, num_samples):
    """Against the maxima of actual chi2 draws (the previous O(K * SAMPLE_FROM) sampler)."""
    torch.manual_seed(dim)
    chi2 = torch.distributions.Chi2(torch.tensor(float(dim), dtype=torch.float64))
    brute = chi2.sample((300, num_samples)).max(dim=1).values.numpy()
    ours = largest_chi2_order_statistics(3000, num_samples, 1, dim, generator=torch.Generator().manual_seed(1))
    ours = ours[:, 0].numpy()
    assert stats.ks_2samp(ours, brute).pvalue > 0.01
    # Mean and quantiles within their sampling error.
    assert abs(ours.mean() - brute.mean()) < 4 * brute.std() / np.sqrt(brute.size)
    for level in (0.1, 0.5, 0.9):
        assert abs(np.quantile(ours, level) - np.quantile(brute, level)) < 0.25 * brute.std()


@pytest.mark.parametrize("dim, num_samples, num_select", [(1024, 10000, 5), (256, 100000, 3), (3, 6, 6)])
def test_selected_chi2_radii_are_the_top_order_statistics(dim, num_samples, num_select):
    """SELECT > 1: rows strictly decreasing, and the j-th column has the law of the j-th
    largest of n draws, P(X_(j) <= x) = P(Binomial(n, sf(x)) <= j - 1)."""
    generator = torch.Generator().manual_seed(num_select)
    radii = largest_chi2_order_statistics(3000, num_samples, num_select, dim, generator=generator)
    assert radii.shape == (3000, num_select)
    assert torch.all(radii[:, 1:] < radii[:, :-1])
    for j in range(num_select):
        def cdf(x, j=j):
            return stats.binom.cdf(j, num_samples, stats.chi2.sf(x, dim))

        assert stats.kstest(radii[:, j].numpy(), cdf).pvalue > 0.01, j


def test_chi2_sampler_select_above_one_returns_descending_distinct_radii():
    means, _, scale = _gaussian_parameters(3, 16)
    outliers, labels = sample_virtual_outliers(means, scale, 10000, 4, seed=9)
    squared = _whitened(outliers, labels, means, scale).square().sum(dim=1).reshape(3, 4)
    assert torch.all(squared[:, 1:] < squared[:, :-1])


def test_chi2_order_statistics_follow_the_generator():
    """Seeded through a torch.Generator (CPU): same seed, same radii, whatever the global stream."""
    first = largest_chi2_order_statistics(5, 1000, 2, 64, generator=torch.Generator().manual_seed(4))
    torch.rand(7)
    second = largest_chi2_order_statistics(5, 1000, 2, 64, generator=torch.Generator().manual_seed(4))
    other = largest_chi2_order_statistics(5, 1000, 2, 64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_chi2_sampler_cost_does_not_grow_with_sample_from():
    """SAMPLE_FROM = 10^12 would be 8 TB of draws per class for a brute-force sampler."""
    means, _, scale = _gaussian_parameters(2, 8)
    outliers, _ = sample_virtual_outliers(means, scale, 10**12, 1, seed=0)
    assert torch.isfinite(outliers).all()


# --- (c) with SELECT == SAMPLE_FROM the samples are plain Gaussian draws --------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_all_samples_kept_are_plain_gaussian_draws(sampler):
    num_classes, dim, num_samples = 2, 3, 20000
    means, covariance, scale = _gaussian_parameters(num_classes, dim, seed=2)
    outliers, labels = sample_virtual_outliers(
        means, scale, num_samples, num_samples, sampler=sampler, seed=5
    )
    for k in range(num_classes):
        samples = outliers[labels == k]
        assert samples.shape == (num_samples, dim)
        mean_error = (samples.mean(dim=0) - means[k]).abs()
        assert torch.all(mean_error < 5 * torch.sqrt(torch.diagonal(covariance) / num_samples))
        sample_cov = torch.cov(samples.T)
        # Var of a sample covariance entry: (S_ij^2 + S_ii S_jj) / n.
        std = torch.sqrt((covariance.square() + torch.outer(covariance.diagonal(), covariance.diagonal())) / num_samples)
        assert torch.all((sample_cov - covariance).abs() < 5 * std)


# --- (d) seeding ------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_outliers_different_seed_different(sampler):
    means, _, scale = _gaussian_parameters(3, 5)
    first, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=11)
    torch.rand(10)  # consuming the global stream must not matter
    second, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=11)
    other, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=12)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_unseeded_call_uses_global_stream(sampler):
    means, _, scale = _gaussian_parameters(3, 5)
    torch.manual_seed(0)
    a, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=None)
    b, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=None)
    torch.manual_seed(0)
    c, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=None)
    assert torch.isfinite(a).all()
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_call_leaves_global_cpu_rng_state_unchanged(sampler):
    means, _, scale = _gaussian_parameters(3, 5)
    before = torch.get_rng_state()
    sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=3)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_call_does_not_reseed_accelerator_generators(sampler, monkeypatch):
    """A seeded call must not touch the global random state of any device. torch.manual_seed
    also reseeds every CUDA generator (not restored by fork_rng(devices=[])), so it must not
    be used: on a GPU that would reset the CUDA stream (proposal sampling, dropout) to the
    same state at every synthesis step and on every rank."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    means, _, scale = _gaussian_parameters(3, 5)
    sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=3)
    assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_seeded_call_leaves_global_cuda_rng_state_unchanged(sampler, device):
    means, _, scale = _gaussian_parameters(3, 5)
    means, scale = means.to(device), scale.to(device)
    torch.cuda.manual_seed(1234)
    torch.randn(3, device="cuda")
    before = torch.cuda.get_rng_state()
    outliers, _ = sample_virtual_outliers(means, scale, 100, 2, sampler=sampler, seed=3)
    assert outliers.device == means.device
    assert torch.equal(torch.cuda.get_rng_state(), before)


# --- (e) robust_cholesky --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_robust_cholesky_positive_definite(dtype):
    _, covariance, _ = _gaussian_parameters(1, 6)
    covariance = covariance.to(dtype)
    eps = 1e-4
    factor = robust_cholesky(covariance, eps)
    assert factor.dtype == dtype
    assert torch.equal(factor, torch.tril(factor))
    expected = covariance + eps * torch.eye(6, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(factor @ factor.T, expected, rtol=tol, atol=tol)


def test_robust_cholesky_leaves_its_input_unchanged():
    _, covariance, _ = _gaussian_parameters(1, 6)
    before = covariance.clone()
    robust_cholesky(covariance, 1e-4)
    robust_cholesky(torch.zeros(6, 6, dtype=torch.float64), 1e-4)  # retries with more jitter
    assert torch.equal(covariance, before)


def test_robust_cholesky_finite_input_whose_sum_overflows():
    """The cheap finiteness test (sum of the entries) must not reject a finite matrix."""
    covariance = torch.diag(torch.full((8,), 1e38, dtype=torch.float32))
    assert not torch.isfinite(covariance.sum())
    factor = robust_cholesky(covariance, 1e-4)
    assert factor is not None and torch.isfinite(factor).all()
    torch.testing.assert_close(factor.double() @ factor.double().T, covariance.double(), rtol=1e-6, atol=0)


def _rank_deficient_covariance(dim, rank, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rank, dim, dtype=torch.float64, generator=generator)
    features = torch.cat([features, features])  # duplicated features
    centred = features - features.mean(dim=0)
    return centred.T @ centred / features.shape[0]


@pytest.mark.parametrize(
    "covariance",
    [
        _rank_deficient_covariance(8, 3),
        _rank_deficient_covariance(8, 1),
        torch.zeros(8, 8, dtype=torch.float64),
        torch.zeros(8, 8, dtype=torch.float32),
        _rank_deficient_covariance(8, 3).float() * 1e4,
    ],
    ids=["rank3", "rank1", "zeros64", "zeros32", "rank3_large_float32"],
)
def test_robust_cholesky_singular_input_is_finite(covariance):
    eps = 1e-4
    factor = robust_cholesky(covariance, eps)
    assert factor is not None and torch.isfinite(factor).all()
    reconstructed = factor @ factor.T
    identity = torch.eye(covariance.shape[0], dtype=covariance.dtype)
    # L L^T = cov + jitter I for some jitter in [eps, 1e5 eps].
    jitter = torch.diagonal(reconstructed - covariance).mean()
    assert eps * 0.99 <= jitter.item() <= eps * 1e5
    scale = covariance.abs().max().item() + jitter.item()
    tol = 1e-10 if covariance.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(reconstructed, covariance + jitter * identity, rtol=0, atol=tol * scale)


def test_robust_cholesky_indefinite_input_falls_back_without_raising():
    covariance = -100.0 * torch.eye(4, dtype=torch.float64)
    covariance[0, 0] = 2.0
    factor = robust_cholesky(covariance, 1e-4)
    assert factor is not None and torch.isfinite(factor).all()
    # Eigenvalues clamped at eps: L L^T = V max(lambda, eps) V^T.
    expected = torch.diag(torch.tensor([2.0, 1e-4, 1e-4, 1e-4], dtype=torch.float64))
    torch.testing.assert_close(factor @ factor.T, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(1, 2), (2, 1), (0, 0)], ids=["upper", "lower", "diagonal"])
def test_robust_cholesky_non_finite_returns_none(bad, where):
    covariance = torch.eye(3, dtype=torch.float64)
    covariance[where] = bad
    assert robust_cholesky(covariance, 1e-4) is None


# --- (f) argument checks --------------------------------------------------------------------


def test_invalid_arguments_raise():
    means, _, scale = _gaussian_parameters(2, 3)
    with pytest.raises(ValueError):
        sample_virtual_outliers(means, scale, 10, 1, sampler="mvn")
    for sampler in SAMPLERS:
        with pytest.raises(ValueError):
            sample_virtual_outliers(means, scale, 10, 11, sampler=sampler)
        with pytest.raises(ValueError):
            sample_virtual_outliers(means, scale, 10, 0, sampler=sampler)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_outliers_follow_dtype_and_class_of_means(sampler):
    means, _, scale = _gaussian_parameters(4, 3)
    outliers, labels = sample_virtual_outliers(means.float(), scale.float(), 50, 3, sampler=sampler, seed=0)
    assert outliers.dtype == torch.float32 and labels.dtype == torch.int64
    assert outliers.shape == (12, 3)
    # Means are 10 sigma apart: each outlier is nearest to its own class mean.
    nearest = torch.cdist(outliers, means.float()).argmin(dim=1)
    assert torch.equal(nearest, labels)
