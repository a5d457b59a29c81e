"""GaussianDiscriminant against numpy / scikit-learn, and class-incremental updates."""
import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from vos_det.modeling.ood_scores.mahalanobis import GaussianDiscriminant

DIM = 5


def _data(num_classes=3, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (num_classes, DIM))
    features = np.concatenate([rng.normal(c, 1.0, (per_class + 7 * k, DIM)) for k, c in enumerate(centers)])
    labels = np.concatenate([np.full(per_class + 7 * k, k) for k in range(num_classes)])
    return features, labels


def test_fit_matches_numpy_and_distances_match_the_formula():
    features, labels = _data()
    model = GaussianDiscriminant(DIM, eps=0.0).fit(torch.tensor(features), torch.tensor(labels), 3)
    means = np.stack([features[labels == k].mean(0) for k in range(3)])
    centered = features - means[labels]
    covariance = centered.T @ centered / len(features)
    np.testing.assert_allclose(model.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(model.covariance().numpy(), covariance, rtol=1e-10)
    precision = np.linalg.inv(covariance)
    queries = np.random.default_rng(1).normal(0, 3, (10, DIM))
    expected = np.array([[(q - m) @ precision @ (q - m) for m in means] for q in queries])
    np.testing.assert_allclose(model.mahalanobis_distances(torch.tensor(queries)).numpy(), expected, rtol=1e-8)
    np.testing.assert_allclose(model.ood_scores(torch.tensor(queries)).numpy(), expected.min(1), rtol=1e-8)


def test_discriminant_matches_scikit_learn_lda():
    features, labels = _data()
    model = GaussianDiscriminant(DIM, eps=0.0).fit(torch.tensor(features), torch.tensor(labels), 3)
    lda = LinearDiscriminantAnalysis(solver="lsqr").fit(features, labels)
    queries = np.random.default_rng(2).normal(0, 3, (20, DIM))
    ours = model.class_scores(torch.tensor(queries)).numpy()
    np.testing.assert_allclose(ours, lda.decision_function(queries), rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(ours.argmax(1), lda.predict(queries))


def test_adding_a_class_equals_refitting_from_scratch():
    features, labels = _data(num_classes=4)
    old = labels < 3
    incremental = GaussianDiscriminant(DIM).fit(torch.tensor(features[old]), torch.tensor(labels[old]), 3)
    new_index = incremental.add_class(torch.tensor(features[~old]))
    refit = GaussianDiscriminant(DIM).fit(torch.tensor(features), torch.tensor(labels), 4)
    assert new_index == 3
    for name in ("counts", "means", "scatter", "precision"):
        torch.testing.assert_close(getattr(incremental, name), getattr(refit, name), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(incremental.priors(), refit.priors())


def test_state_dict_round_trip_restores_the_class_count():
    features, labels = _data()
    model = GaussianDiscriminant(DIM).fit(torch.tensor(features), torch.tensor(labels), 3)
    restored = GaussianDiscriminant(DIM)
    restored.load_state_dict(model.state_dict())
    assert restored.num_classes == 3
    queries = torch.randn(4, DIM, dtype=torch.float64)
    torch.testing.assert_close(restored.class_scores(queries), model.class_scores(queries))


def test_errors_are_clear():
    model = GaussianDiscriminant(DIM)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.ood_scores(torch.zeros(1, DIM))
    with pytest.raises(ValueError, match=r"classes \[1\] have no features"):
        model.fit(torch.zeros(2, DIM), torch.tensor([0, 2]), 3)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(torch.full((2, DIM), float("nan")), torch.tensor([0, 1]), 2)


def test_statistics_file_round_trip_and_errors(tmp_path):
    features, labels = _data()
    model = GaussianDiscriminant(DIM).fit(torch.tensor(features), torch.tensor(labels), 3)
    path = str(tmp_path / "stats.pth")
    model.save_statistics(path)
    restored = GaussianDiscriminant(DIM).load_statistics(path)
    torch.testing.assert_close(restored.precision, model.precision)
    with pytest.raises(ValueError, match="4-d features"):
        GaussianDiscriminant(DIM - 1).load_statistics(path)
    with pytest.raises(FileNotFoundError, match="MAHALANOBIS_STATS"):
        GaussianDiscriminant(DIM).load_statistics(str(tmp_path / "missing.pth"))


def test_statistics_file_wins_over_the_checkpoint_of_an_unfitted_model(tmp_path, tiny_cfg):
    """MODEL.OOD.MAHALANOBIS_STATS on a model whose checkpoint was saved before fitting: the
    checkpoint's empty statistics must not replace the file's (they would make every
    Mahalanobis score 0)."""
    from detectron2.checkpoint import DetectionCheckpointer

    from vos_det.engine import Trainer

    cfg = tiny_cfg(str(tmp_path))
    model = Trainer.build_model(cfg)
    checkpoint = DetectionCheckpointer(model, save_dir=str(tmp_path))
    checkpoint.save("unfitted")  # no statistics in it

    dim = model.roi_heads.box_predictor.bbox_pred.in_features
    features = torch.randn(60, dim, dtype=torch.float64)
    fitted = GaussianDiscriminant(dim).fit(features, torch.arange(60) % 5, 5)
    stats = str(tmp_path / "stats.pth")
    fitted.save_statistics(stats)

    cfg.defrost()
    cfg.MODEL.OOD.MAHALANOBIS_STATS = stats
    restored = Trainer.build_model(cfg)
    DetectionCheckpointer(restored).load(str(tmp_path / "unfitted.pth"))
    discriminant = restored.roi_heads.box_predictor.mahalanobis
    assert discriminant.num_classes == 5
    torch.testing.assert_close(discriminant.precision, fitted.precision)
    queries = torch.randn(7, dim, dtype=torch.float64)
    torch.testing.assert_close(discriminant.ood_scores(queries), fitted.ood_scores(queries))
