"""Tests of the k-NN searches (vos_det/modeling/ood_scores/knn_search.py): torch and faiss
against a direct numpy search, the fallback without faiss, and the k-NN score on each."""
import logging
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from vos_det.config import default_config
from vos_det.config import validate_config
from vos_det.errors import ConfigError
from vos_det.modeling.ood_scores import BoxFitData
from vos_det.modeling.ood_scores import knn_search
from vos_det.modeling.ood_scores.knn import KNNScore, kth_neighbour_distance
from vos_det.modeling.ood_scores.knn_search import (
    TorchKNNSearch,
    build_knn_search,
    default_nlist,
)

D = 8


def _unit(n, seed, dim=D):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _numpy_neighbours(queries, bank, k):
    """Inner products of every pair, sorted: the k largest and their rows."""
    similarities = queries.numpy().astype(np.float64) @ bank.numpy().astype(np.float64).T
    rows = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, rows, axis=1), rows


def _numpy_kth_distance(queries, bank, k):
    distances = np.linalg.norm(queries.numpy()[:, None, :] - bank.numpy()[None, :, :], axis=2)
    return np.sort(distances, axis=1)[:, k - 1]


def _fit_data(n=200, seed=0):
    features = torch.relu(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)))
    return BoxFitData(features=features, logits=features[:, :3], labels=torch.arange(n) % 3, num_classes=3)


@pytest.mark.parametrize("chunk_size", [0, 7, 64])
def test_torch_search_returns_the_exact_neighbours_and_rows(chunk_size):
    bank, queries = _unit(60, 0), _unit(9, 1)
    search = TorchKNNSearch(bank, chunk_size)
    values, rows = search.search(queries, 5)
    expected_values, expected_rows = _numpy_neighbours(queries, bank, 5)
    np.testing.assert_allclose(values.numpy(), expected_values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows.numpy(), expected_rows)
    for k in (1, 5, 60):
        np.testing.assert_allclose(search.kth_distance(queries, k).numpy(), _numpy_kth_distance(queries, bank, k), atol=1e-5)
        torch.testing.assert_close(search.kth_distance(queries, k), kth_neighbour_distance(queries, bank, k, chunk_size))
    with pytest.raises(ValueError, match="k must lie"):
        search.search(queries, 61)


def test_default_nlist_is_sqrt_of_the_bank_with_39_rows_per_cell():
    assert default_nlist(1_000_000) == 1000
    assert default_nlist(10_000) == 100
    assert default_nlist(1000) == 1000 // 39
    assert default_nlist(10) == 1


@pytest.mark.parametrize("search", ["faiss_flat", "faiss_ivf"])
def test_without_faiss_a_faiss_search_falls_back_to_torch(monkeypatch, caplog, search):
    # An import of a module set to None in sys.modules raises ImportError: faiss is absent.
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert not knn_search.faiss_available()
    bank, queries = _unit(40, 2), _unit(6, 3)
    with caplog.at_level(logging.WARNING):
        built = build_knn_search(bank, search)
    assert isinstance(built, TorchKNNSearch)
    assert "needs faiss" in caplog.text
    np.testing.assert_allclose(built.kth_distance(queries, 4).numpy(), _numpy_kth_distance(queries, bank, 4), atol=1e-5)
    data = _fit_data()
    score = KNNScore(search=search).fit(data, k=7)
    features = torch.relu(torch.randn(10, D, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(score(features, None), KNNScore().fit(data, k=7)(features, None))


def test_an_unknown_search_is_refused_by_the_builder_and_the_config():
    with pytest.raises(ValueError, match="SEARCH must be one of"):
        build_knn_search(_unit(5, 0), "annoy")
    cfg = default_config()
    cfg.MODEL.OOD.POST_HOC.KNN.SEARCH = "annoy"
    with pytest.raises(ConfigError, match="SEARCH"):
        validate_config(cfg)


def test_faiss_flat_is_exact():
    pytest.importorskip("faiss")
    bank, queries = _unit(300, 5), _unit(20, 6)
    search = build_knn_search(bank, "faiss_flat")
    assert search.name == "faiss_flat"
    values, rows = search.search(queries, 10)
    expected_values, expected_rows = _numpy_neighbours(queries, bank, 10)
    np.testing.assert_allclose(values.numpy(), expected_values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows.numpy(), expected_rows)
    np.testing.assert_allclose(search.kth_distance(queries, 10).numpy(), _numpy_kth_distance(queries, bank, 10), atol=1e-5)


def test_faiss_ivf_is_exact_when_every_cell_is_searched_and_approximate_otherwise():
    pytest.importorskip("faiss")
    bank, queries = _unit(2000, 7, dim=16), _unit(50, 8, dim=16)
    k = 10
    expected_values, expected_rows = _numpy_neighbours(queries, bank, k)
    everything = build_knn_search(bank, "faiss_ivf", nlist=20, nprobe=20)
    np.testing.assert_array_equal(everything.search(queries, k)[1].numpy(), expected_rows)
    np.testing.assert_allclose(
        everything.kth_distance(queries, k).numpy(), _numpy_kth_distance(queries, bank, k), atol=1e-5
    )
    one_cell = build_knn_search(bank, "faiss_ivf", nlist=20, nprobe=1)
    values, rows = one_cell.search(queries, k)
    recall = np.mean([len(set(r) & set(e)) / k for r, e in zip(rows.numpy(), expected_rows)])
    # One cell of 20 holds ~100 rows: some true neighbours lie in other cells.
    assert 0.0 < recall < 1.0
    # What it finds are true inner products, so its k-th distance can only be larger.
    assert (one_cell.kth_distance(queries, k).numpy() >= _numpy_kth_distance(queries, bank, k) - 1e-5).all()
    with pytest.raises(ValueError, match="NLIST"):
        build_knn_search(bank, "faiss_ivf", nlist=5000)


def test_knn_score_on_faiss_matches_the_torch_score_and_follows_a_refit():
    pytest.importorskip("faiss")
    data = _fit_data()
    features = torch.relu(torch.randn(12, D, generator=torch.Generator().manual_seed(9)))
    expected = KNNScore().fit(data, k=5)(features, None)
    score = KNNScore(search="faiss_flat").fit(data, k=5)
    torch.testing.assert_close(score(features, None), expected)
    first = score.bank_search()
    assert score.bank_search() is first  # built once per bank
    score.fit(_fit_data(seed=1), k=5)
    assert score.bank_search() is not first
    torch.testing.assert_close(score(features, None), KNNScore().fit(_fit_data(seed=1), k=5)(features, None))
