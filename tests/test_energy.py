"""Tests of vos_det.modeling.ood_scores.energy against direct float64 formulas."""
import numpy as np
import pytest
import torch

from vos_det.modeling.ood_scores.energy import (
    energy,
    max_softmax_ood_score,
    weighted_energy,
    weighted_logsumexp,
)


def _naive_weighted_energy(logits, weights):
    """-log(sum_k w_k exp(f_k)), literally, in float64 numpy (overflows on large logits)."""
    logits = np.asarray(logits, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore"):
        return -np.log((weights[None, :] * np.exp(logits)).sum(axis=1))


def _shifted_weighted_energy(logits, weights):
    """The same value, shifted by max_k (f_k + log w_k) over the classes with w_k > 0."""
    logits = np.asarray(logits, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    positive = weights > 0
    terms = logits[:, positive] + np.log(weights[positive])[None, :]
    shift = terms.max(axis=1, keepdims=True)
    return -(shift[:, 0] + np.log(np.exp(terms - shift).sum(axis=1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_energy_matches_naive_formula(dtype):
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 5.0, size=(64, 7))
    weights = rng.uniform(0.05, 2.0, size=7)
    expected = _naive_weighted_energy(logits, weights)
    assert np.isfinite(expected).all()
    result = weighted_energy(torch.tensor(logits, dtype=dtype), torch.tensor(weights, dtype=dtype))
    assert result.dtype == dtype
    assert result.shape == (64,)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(result.numpy(), expected, rtol=rtol, atol=rtol)
    lse = weighted_logsumexp(torch.tensor(logits, dtype=dtype), torch.tensor(weights, dtype=dtype))
    np.testing.assert_allclose(lse.numpy(), -expected, rtol=rtol, atol=rtol)


def test_weighted_energy_with_unit_weights_is_energy():
    logits = torch.randn(20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(weighted_energy(logits, torch.ones(5, dtype=torch.float64)), energy(logits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_energy_is_stable_on_huge_logits(dtype):
    rng = np.random.default_rng(2)
    logits = 1000.0 + rng.normal(0.0, 3.0, size=(16, 6))
    logits[0] = [1000.0, 999.0, 998.0, -1000.0, 0.0, 1000.0]
    logits[1] = -logits[1]  # huge negative logits: the naive formula underflows to +inf
    weights = rng.uniform(0.1, 1.5, size=6)
    naive = _naive_weighted_energy(logits, weights)
    assert not np.isfinite(naive).all()  # the naive formula does overflow here
    expected = _shifted_weighted_energy(logits, weights)
    result = weighted_energy(torch.tensor(logits, dtype=dtype), torch.tensor(weights, dtype=dtype))
    assert torch.isfinite(result).all()
    # float32 resolution at |x| ~ 1000 is ~6e-5.
    atol = 1e-9 if dtype == torch.float64 else 5e-4
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=atol)


def test_weighted_energy_gradient_is_finite_on_huge_logits():
    logits = torch.tensor([[1000.0, 999.0, -1000.0]], requires_grad=True)
    raw_weights = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    weighted_energy(logits, torch.relu(raw_weights)).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(raw_weights.grad).all()
    # d(-E)/df_k = w_k exp(f_k) / sum_j w_j exp(f_j): a probability vector (sign: dE = -that).
    w = np.array([0.5, 1.0, 2.0])
    f = np.array([1000.0, 999.0, -1000.0])
    p = w * np.exp(f - f.max())
    p /= p.sum()
    np.testing.assert_allclose(-logits.grad[0].numpy(), p, rtol=1e-5, atol=1e-7)


def test_weighted_energy_shift_ignores_classes_with_zero_weight():
    """The max-shift must be over classes that count: a zero-weight class with a huge logit
    must not push the others' terms below the floor of the weighted sum."""
    logits = np.array([[200.0, 0.0, 1.0], [1000.0, 3.0, -2.0], [10.0, 2.0, 1.0]])
    weights = np.array([0.0, 1.0, 0.5])
    expected = _shifted_weighted_energy(logits, weights)
    for dtype in (torch.float32, torch.float64):
        result = weighted_energy(torch.tensor(logits, dtype=dtype), torch.tensor(weights, dtype=dtype))
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_zero_weights_stay_finite_with_finite_gradients():
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(3)).requires_grad_()
    raw_weights = torch.tensor([-1.0, -0.5, -2.0, -0.1], requires_grad=True)  # relu -> all zero
    result = weighted_energy(logits, torch.relu(raw_weights))
    assert torch.isfinite(result).all()
    # All weights zero: E is +inf mathematically; it must be large (very OOD), not NaN/inf.
    assert (result > 50).all()
    result.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(raw_weights.grad).all()


def test_some_zero_weights_match_formula_over_positive_weights():
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 4.0, size=(32, 5))
    weights = np.array([0.0, 0.7, 0.0, 1.3, 0.2])
    expected = _naive_weighted_energy(logits, weights)
    result = weighted_energy(torch.tensor(logits), torch.tensor(weights))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_energy_is_negative_logsumexp():
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 6.0, size=(50, 9))
    logits[0] = 1000.0
    result = energy(torch.tensor(logits))
    shift = logits.max(axis=1, keepdims=True)
    expected = -(shift[:, 0] + np.log(np.exp(logits - shift).sum(axis=1)))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result[0].item(), -(1000.0 + np.log(9.0)), rtol=1e-12)


def test_max_softmax_ood_score_is_negative_max_softmax():
    rng = np.random.default_rng(6)
    logits = rng.normal(0.0, 3.0, size=(40, 6))
    result = max_softmax_ood_score(torch.tensor(logits))
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.numpy(), -softmax.max(axis=1), rtol=1e-12)
    assert (result >= -1).all() and (result <= -1.0 / 6 + 1e-12).all()
    # Uniform logits are the most OOD: -1/K.
    uniform = max_softmax_ood_score(torch.zeros(1, 6, dtype=torch.float64))
    assert uniform.item() == pytest.approx(-1.0 / 6)


def test_sign_convention_larger_is_more_ood():
    confident = torch.tensor([[10.0, -5.0, -5.0]])
    unsure = torch.tensor([[-3.0, -3.0, -3.0]])
    weights = torch.ones(3)
    assert energy(unsure) > energy(confident)
    assert weighted_energy(unsure, weights) > weighted_energy(confident, weights)
    assert max_softmax_ood_score(unsure) > max_softmax_ood_score(confident)
