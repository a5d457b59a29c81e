"""Tests of vos_det.modeling.vos.feature_queues.ClassFeatureQueues against slow references."""
import io
from collections import Counter, deque

import numpy as np
import pytest
import torch

from vos_det.modeling.vos.feature_queues import ClassFeatureQueues

NUM_CLASSES = 4
CAPACITY = 7
DIM = 3


class _ReferenceQueues:
    """The obvious per-box implementation: one deque per class, pushed row by row."""

    def __init__(self, num_classes, capacity):
        self.queues = [deque(maxlen=capacity) for _ in range(num_classes)]

    def enqueue(self, features, labels):
        for row, label in zip(features.tolist(), labels.tolist()):
            self.queues[label].append(tuple(row))


def _random_batch(rng, step):
    """Batches of varied shapes: empty, some classes absent, one class over capacity."""
    kind = step % 5
    if kind == 0:
        labels = np.zeros(0, dtype=np.int64)
    elif kind == 1:  # only classes 0 and 2
        labels = rng.choice([0, 2], size=rng.integers(1, 5))
    elif kind == 2:  # more than the capacity of class 1, mixed with others
        labels = np.concatenate([np.full(CAPACITY + rng.integers(1, 6), 1), rng.integers(0, NUM_CLASSES, 4)])
        rng.shuffle(labels)
    else:
        labels = rng.integers(0, NUM_CLASSES, size=rng.integers(1, 12))
    # Distinct values (rounded to float32) so that every queued row is identifiable.
    features = rng.normal(size=(labels.size, DIM)).astype(np.float32)
    return torch.from_numpy(features), torch.from_numpy(labels.astype(np.int64))


def _queued_rows(queues, k):
    return [tuple(row) for row in queues.features[k, : int(queues.counts[k])].tolist()]


def _check_against_reference(queues, reference):
    for k in range(NUM_CLASSES):
        expected = list(reference.queues[k])
        assert int(queues.counts[k]) == len(expected)
        assert Counter(_queued_rows(queues, k)) == Counter(expected)
        if expected:
            n = int(queues.counts[k])
            newest_slot = (int(queues.write_positions[k]) - 1) % CAPACITY
            assert tuple(queues.features[k, newest_slot].tolist()) == expected[-1]
            # Full age order: slots from the write position on (wrapping) are oldest first.
            if n == CAPACITY:
                order = [(int(queues.write_positions[k]) + i) % CAPACITY for i in range(CAPACITY)]
            else:
                order = list(range(n))
            assert [tuple(queues.features[k, s].tolist()) for s in order] == expected


def _numpy_gaussian(reference):
    """mu_k and Sigma = (1/N) sum_k sum_i (h_i - mu_k)(h_i - mu_k)^T in float64 (eq. 1-2)."""
    means, scatter, total = [], np.zeros((DIM, DIM)), 0
    for queue in reference.queues:
        rows = np.array(list(queue), dtype=np.float64).reshape(-1, DIM)
        mean = rows.mean(axis=0)
        centred = rows - mean
        scatter += centred.T @ centred
        total += rows.shape[0]
        means.append(mean)
    return np.stack(means), scatter / total


def test_fifo_matches_per_box_reference():
    rng = np.random.default_rng(0)
    queues, reference = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM), _ReferenceQueues(NUM_CLASSES, CAPACITY)
    for step in range(60):
        features, labels = _random_batch(rng, step)
        queues.enqueue(features, labels)
        reference.enqueue(features, labels)
        _check_against_reference(queues, reference)
    assert queues.all_full()


def test_all_full_and_counts_saturate():
    queues = ClassFeatureQueues(2, 3, 2)
    assert not queues.all_full()
    queues.enqueue(torch.ones(5, 2), torch.zeros(5, dtype=torch.long))
    assert queues.counts.tolist() == [3, 0] and not queues.all_full()
    assert int(queues.write_positions[0]) == 5 % 3
    queues.enqueue(torch.ones(3, 2), torch.ones(3, dtype=torch.long))
    assert queues.all_full()


def test_batch_larger_than_capacity_keeps_its_last_rows():
    queues = ClassFeatureQueues(2, 4, 1)
    queues.enqueue(torch.tensor([[100.0]]), torch.tensor([0]))
    values = torch.arange(10, dtype=torch.float32)[:, None]
    queues.enqueue(values, torch.zeros(10, dtype=torch.long))
    newest = (int(queues.write_positions[0]) - 1) % 4
    assert queues.features[0, newest].item() == 9.0
    assert sorted(queues.features[0, :, 0].tolist()) == [6.0, 7.0, 8.0, 9.0]
    assert queues.counts.tolist() == [4, 0]


def test_features_are_detached_and_stored_in_float32():
    queues = ClassFeatureQueues(2, 3, 2)
    features = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    queues.enqueue(features, torch.tensor([0, 1, 0, 1]))
    assert queues.features.dtype == torch.float32
    assert not queues.features.requires_grad
    torch.testing.assert_close(queues.features[0, :2], features[[0, 2]].detach().float())


@pytest.mark.parametrize("bad_label", [-1, NUM_CLASSES, NUM_CLASSES + 5])
def test_out_of_range_labels_raise(bad_label):
    queues = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM)
    with pytest.raises(ValueError):
        queues.enqueue(torch.zeros(3, DIM), torch.tensor([0, bad_label, 1]))
    # Nothing was written.
    assert queues.counts.sum().item() == 0


def test_wrong_feature_shape_and_sizes_raise():
    queues = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM)
    with pytest.raises(ValueError):
        queues.enqueue(torch.zeros(3, DIM + 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        ClassFeatureQueues(0, CAPACITY, DIM)


def test_state_dict_holds_every_buffer():
    queues = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM)
    state = queues.state_dict()
    for name in (
        "features",
        "counts",
        "write_positions",
        "class_sums",
        "outer_product_sum",
        "statistics_valid",
        "calls_since_recompute",
    ):
        assert name in state
    assert state["features"].shape == (NUM_CLASSES, CAPACITY, DIM)
    assert state["class_sums"].dtype == torch.float64
    assert state["outer_product_sum"].dtype == torch.float64


def test_gaussian_requires_nonempty_queues():
    queues = ClassFeatureQueues(2, 3, 2)
    queues.enqueue(torch.ones(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError):
        queues.gaussian()


def _assert_gaussian_matches(queues, reference):
    means, covariance = queues.gaussian()
    assert means.dtype == torch.float64 and covariance.dtype == torch.float64
    expected_means, expected_cov = _numpy_gaussian(reference)
    np.testing.assert_allclose(means.numpy(), expected_means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), expected_cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(covariance.numpy(), covariance.numpy().T)


def test_gaussian_exact_after_recompute():
    rng = np.random.default_rng(1)
    queues, reference = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM), _ReferenceQueues(NUM_CLASSES, CAPACITY)
    for step in range(12):
        features, labels = _random_batch(rng, step)
        features = features + 3.0 * labels[:, None]  # distinct class means
        queues.enqueue(features, labels)
        reference.enqueue(features, labels)
    assert not bool(queues.statistics_valid)
    _assert_gaussian_matches(queues, reference)
    assert bool(queues.statistics_valid)


def test_gaussian_with_partly_filled_queues_uses_total_count():
    queues, reference = ClassFeatureQueues(2, 10, 2), None
    features = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0], [1.0, 1.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    queues.enqueue(features, labels)
    means, covariance = queues.gaussian()
    f = features.double().numpy()
    mu0, mu1 = f[:3].mean(0), f[3:].mean(0)
    scatter = (f[:3] - mu0).T @ (f[:3] - mu0) + (f[3:] - mu1).T @ (f[3:] - mu1)
    np.testing.assert_allclose(means.numpy(), np.stack([mu0, mu1]), rtol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), scatter / 5, rtol=1e-12, atol=1e-15)
    del reference


@pytest.mark.parametrize("recompute_period", [1000, 3])
def test_gaussian_incremental_updates_match_numpy(recompute_period):
    rng = np.random.default_rng(2)
    queues = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM, recompute_period=recompute_period)
    reference = _ReferenceQueues(NUM_CLASSES, CAPACITY)
    for step in range(4):  # partly filled queues when statistics start being tracked
        features, labels = _random_batch(rng, step)
        queues.enqueue(features + 2.0 * labels[:, None], labels)
        reference.enqueue(features + 2.0 * labels[:, None], labels)
    _assert_gaussian_matches(queues, reference)
    for step in range(4, 80):
        features, labels = _random_batch(rng, step)
        features = features + 2.0 * labels[:, None]
        queues.enqueue(features, labels)
        reference.enqueue(features, labels)
        if recompute_period == 1000:
            assert bool(queues.statistics_valid)  # the incremental path is exercised
        if step % 7 == 0:
            _assert_gaussian_matches(queues, reference)
    # The incrementally maintained sums equal the exact ones.
    incremental_sums = queues.class_sums.clone()
    incremental_outer = queues.outer_product_sum.clone()
    queues.recompute_statistics()
    np.testing.assert_allclose(incremental_sums.numpy(), queues.class_sums.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(incremental_outer.numpy(), queues.outer_product_sum.numpy(), rtol=1e-9, atol=1e-10)
    _assert_gaussian_matches(queues, reference)


def test_gaussian_incremental_with_large_offset_features():
    """Features with a large common offset (like post-ReLU activations) keep 1e-9 accuracy."""
    rng = np.random.default_rng(3)
    queues = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM)
    reference = _ReferenceQueues(NUM_CLASSES, CAPACITY)
    for step in range(60):
        features, labels = _random_batch(rng, step)
        features = features + 10.0
        queues.enqueue(features, labels)
        reference.enqueue(features, labels)
        if step == 10:
            queues.gaussian()
    means, covariance = queues.gaussian()
    expected_means, expected_cov = _numpy_gaussian(reference)
    np.testing.assert_allclose(means.numpy(), expected_means, rtol=1e-9)
    np.testing.assert_allclose(covariance.numpy(), expected_cov, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("via_file", [False, True])
def test_checkpoint_round_trip_resumes_exactly(via_file, tmp_path):
    rng = np.random.default_rng(4)
    queues = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM, recompute_period=5)
    for step in range(13):
        queues.enqueue(*_random_batch(rng, step))
        if step >= 6:
            queues.gaussian()  # statistics valid, calls_since_recompute > 0
    if via_file:
        path = tmp_path / "queues.pth"
        torch.save(queues.state_dict(), path)
        state = torch.load(path)
    else:
        buffer = io.BytesIO()
        torch.save(queues.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer)
    resumed = ClassFeatureQueues(NUM_CLASSES, CAPACITY, DIM, recompute_period=5)
    resumed.load_state_dict(state)
    for (name, a), (_, b) in zip(queues.named_buffers(), resumed.named_buffers()):
        assert torch.equal(a, b), name
    for step in range(13, 40):
        batch = _random_batch(rng, step)
        queues.enqueue(*batch)
        resumed.enqueue(*batch)
        if step % 3 == 0:
            for x, y in zip(queues.gaussian(), resumed.gaussian()):
                assert torch.equal(x, y)
    for (name, a), (_, b) in zip(queues.named_buffers(), resumed.named_buffers()):
        assert torch.equal(a, b), name


def test_incremental_update_of_partly_filled_queue_that_wraps_in_one_batch():
    """Statistics tracked from a partly filled queue; the next batch overruns the capacity."""
    generator = torch.Generator().manual_seed(5)
    queues, reference = ClassFeatureQueues(2, 5, 2), _ReferenceQueues(2, 5)
    batches = [
        (torch.randn(4, 2, generator=generator), torch.tensor([0, 0, 0, 1])),
        (torch.randn(11, 2, generator=generator), torch.tensor([0] * 9 + [1, 1])),
        (torch.randn(3, 2, generator=generator), torch.tensor([1, 1, 1])),  # class 1 wraps
        (torch.randn(2, 2, generator=generator), torch.tensor([0, 1])),
    ]
    for index, (features, labels) in enumerate(batches):
        queues.enqueue(features, labels)
        reference.enqueue(features, labels)
        means, covariance = queues.gaussian()  # first call recomputes, later ones are incremental
        assert bool(queues.statistics_valid) and int(queues.calls_since_recompute) == index + 1
        expected_means, expected_cov = _numpy_gaussian_generic(reference, 2)
        np.testing.assert_allclose(means.numpy(), expected_means, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(covariance.numpy(), expected_cov, rtol=1e-9, atol=1e-12)


def _numpy_gaussian_generic(reference, dim):
    means, scatter, total = [], np.zeros((dim, dim)), 0
    for queue in reference.queues:
        rows = np.array(list(queue), dtype=np.float64).reshape(-1, dim)
        means.append(rows.mean(axis=0))
        scatter += (rows - means[-1]).T @ (rows - means[-1])
        total += rows.shape[0]
    return np.stack(means), scatter / total


def test_recompute_statistics_per_class_matches_dense_formula():
    """The per-class exact recompute gives the sums of all valid rows at once (empty,
    partly filled, full and wrapped queues), and ignores stale slots beyond the count."""
    generator = torch.Generator().manual_seed(6)
    queues = ClassFeatureQueues(4, 6, 5)
    queues.enqueue(torch.randn(9, 5, generator=generator), torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1]))
    queues.enqueue(torch.randn(8, 5, generator=generator), torch.tensor([1, 1, 1, 3, 1, 1, 1, 1]))
    queues.features[2].fill_(123.0)  # class 2 is empty: its slots must not count
    queues.features[3, 1:].fill_(-7.0)  # beyond class 3's single entry
    queues.recompute_statistics()
    valid = torch.arange(6)[None, :] < queues.counts[:, None]
    dense = queues.features.double() * valid[..., None]
    flat = dense.reshape(-1, 5)
    torch.testing.assert_close(queues.class_sums, dense.sum(dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(queues.outer_product_sum, flat.T @ flat, rtol=1e-12, atol=1e-12)
    assert bool(queues.statistics_valid) and int(queues.calls_since_recompute) == 0


def test_incremental_statistics_after_many_wraps_match_exact_recompute():
    """The incremental updates of enqueue (entering rows added, leaving rows removed) keep
    the sums equal to an exact recompute after many wraps of every queue."""
    generator = torch.Generator().manual_seed(7)
    queues = ClassFeatureQueues(3, 5, 4, recompute_period=10**9)
    queues.enqueue(torch.randn(15, 4, generator=generator) + 5.0, torch.arange(3).repeat(5))
    queues.gaussian()
    for _ in range(30):
        labels = torch.randint(0, 3, (int(torch.randint(0, 12, (1,), generator=generator)),), generator=generator)
        queues.enqueue(torch.randn(labels.numel(), 4, generator=generator) + 5.0, labels)
    means, covariance = queues.gaussian()
    exact = ClassFeatureQueues(3, 5, 4)
    exact.load_state_dict(queues.state_dict())
    exact.recompute_statistics()
    torch.testing.assert_close(queues.class_sums, exact.class_sums, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(queues.outer_product_sum, exact.outer_product_sum, rtol=1e-12, atol=1e-10)
    exact_means, exact_covariance = exact.gaussian()
    torch.testing.assert_close(means, exact_means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(covariance, exact_covariance, rtol=1e-9, atol=1e-11)
    assert torch.equal(covariance, covariance.T)
