"""Tests of the VOS variants (MODEL.VOS.BALANCED_LOSS, OUTLIER_TAIL, OUTLIER_RADIUS_SCALE,
BOTTLENECK_DIM, OUTLIER_SYNTHESIS npos): formulas against direct implementations, the
defaults leave the paper's VOS unchanged, box predictor and classification head alike."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.classification.head import VOSClassificationHead
from vos_det.config import default_config
from vos_det.modeling.vos.npos import knn_distances, npos_outliers
from vos_det.modeling.output_layers import VOSOutputLayers
from vos_det.modeling.vos.synthesis import sample_virtual_outliers, tail_chi2_radii
from vos_det.modeling.vos.uncertainty_loss import energy_logistic_loss
from vos_det.config.vos_keys import vos_kwargs_from_config

NUM_CLASSES = 3
DIM = 8


def _layer(**kwargs):
    torch.manual_seed(0)
    arguments = dict(
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=NUM_CLASSES,
        sample_number=6,
        starting_iter=1,
        sample_from=200,
        select=2,
    )
    arguments.update(kwargs)
    return VOSOutputLayers(ShapeSpec(channels=DIM), **arguments)


def _train_two_steps(layer):
    """Fill the queues at iteration 0, then one step with synthesis; returns its losses."""
    losses = None
    for iteration, gt in enumerate([[0, 1, 2] * 6, [0, 1, 2, 3, 0, 1]]):
        generator = torch.Generator().manual_seed(iteration)
        features = torch.randn(len(gt), DIM, generator=generator) + 1
        instances = Instances((64, 64))
        boxes = torch.rand(len(gt), 2, generator=generator) * 40
        instances.proposal_boxes = instances.gt_boxes = Boxes(torch.cat([boxes, boxes + 10], dim=1))
        instances.gt_classes = torch.tensor(gt)
        with EventStorage(iteration):
            losses = layer.losses(layer(features), [instances])
    return losses


# --- defaults: the paper's VOS ---------------------------------------------------------------


def test_config_defaults_are_the_paper_recipe():
    cfg = default_config()
    kwargs = vos_kwargs_from_config(cfg)
    assert kwargs["balanced_loss"] is False
    assert kwargs["outlier_tail"] == 0.0 and kwargs["outlier_radius_scale"] == 1.0
    assert kwargs["outlier_synthesis"] == "gaussian"
    assert cfg.MODEL.VOS.BOTTLENECK_DIM == 0


def test_default_predictor_has_the_parameters_of_the_paper():
    layer = _layer()
    assert isinstance(layer.bottleneck, nn.Identity)
    assert layer.cls_score.in_features == DIM
    assert not any(name.startswith("bottleneck") for name in layer.state_dict())


def test_sampler_defaults_draw_the_unmodified_outliers():
    means = torch.randn(2, 5, dtype=torch.float64)
    scale = torch.eye(5, dtype=torch.float64)
    plain, _ = sample_virtual_outliers(means, scale, 100, 3, seed=4)
    explicit, _ = sample_virtual_outliers(means, scale, 100, 3, seed=4, tail=0.0, radius_scale=1.0)
    assert torch.equal(plain, explicit)


# --- class-balanced loss -----------------------------------------------------------------------


def test_balanced_loss_weights_both_sides_one_half():
    generator = torch.Generator().manual_seed(0)
    id_logits, outlier_logits = torch.randn(10, 3, generator=generator), torch.randn(2, 3, generator=generator)
    weights = torch.tensor([0.2, 0.5, 0.9])
    classifier = nn.Linear(1, 2)
    with EventStorage(0) as storage:
        balanced = energy_logistic_loss(id_logits, outlier_logits, weights, classifier, storage, balanced=True)
        plain = energy_logistic_loss(id_logits, outlier_logits, weights, classifier, storage)
    negative_energy = torch.logsumexp(torch.cat([id_logits, outlier_logits]) + weights.log(), dim=1)
    log_p = F.log_softmax(classifier(negative_energy[:, None]), dim=1)
    expected = -0.5 * (log_p[:10, 1].mean() + log_p[10:, 0].mean())
    torch.testing.assert_close(balanced, expected)
    torch.testing.assert_close(plain, -(log_p[:10, 1].sum() + log_p[10:, 0].sum()) / 12)
    # With as many outliers as ID samples the two losses coincide.
    with EventStorage(0) as storage:
        a = energy_logistic_loss(id_logits[:2], outlier_logits, weights, classifier, storage, balanced=True)
        b = energy_logistic_loss(id_logits[:2], outlier_logits, weights, classifier, storage)
    torch.testing.assert_close(a, b)


# --- outliers beyond the likelihood threshold ----------------------------------------------------


@pytest.mark.parametrize("dim,tail", [(8, 1e-3), (128, 1e-30)])
def test_tail_radii_follow_the_conditional_chi2_law(dim, tail):
    radii = tail_chi2_radii(4, 500, dim, tail, torch.Generator().manual_seed(1)).numpy().ravel()
    assert radii.min() >= stats.chi2.isf(tail, dim) * (1 - 1e-9)
    # Conditioned on the tail, the survival probability / tail is uniform on (0, 1).
    survival = np.exp(stats.chi2.logsf(radii, dim) - math.log(tail))
    assert stats.kstest(survival, "uniform").pvalue > 1e-3


def test_tail_outliers_are_gaussian_samples_beyond_the_threshold():
    dim, tail = 6, 1e-4
    factor = torch.linalg.cholesky(torch.eye(dim, dtype=torch.float64) + 0.3)
    means = torch.randn(2, dim, dtype=torch.float64)
    outliers, labels = sample_virtual_outliers(means, factor, 10, 400, seed=0, tail=tail)
    z = torch.linalg.solve_triangular(factor, (outliers - means[labels]).T, upper=False).T
    squared = z.pow(2).sum(dim=1).numpy()
    assert squared.min() >= stats.chi2.isf(tail, dim) * (1 - 1e-9)
    # Directions uniform: the mean direction is close to 0.
    directions = z / z.norm(dim=1, keepdim=True)
    assert float(directions.mean(dim=0).norm()) < 0.15


def test_radius_scale_multiplies_the_mahalanobis_radius():
    means = torch.randn(3, 4, dtype=torch.float64)
    factor = torch.linalg.cholesky(torch.eye(4, dtype=torch.float64) * 2 + 0.5)
    plain, labels = sample_virtual_outliers(means, factor, 100, 2, seed=5)
    scaled, _ = sample_virtual_outliers(means, factor, 100, 2, seed=5, radius_scale=2.5)
    torch.testing.assert_close(scaled - means[labels], 2.5 * (plain - means[labels]))


def test_bad_variant_options_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="OUTLIER_TAIL"):
        _layer(outlier_tail=1e-3, sampler="gaussian")
    with pytest.raises(ValueError, match="OUTLIER_TAIL"):
        _layer(outlier_tail=1.5)
    with pytest.raises(ValueError, match="OUTLIER_RADIUS_SCALE"):
        _layer(outlier_radius_scale=0.0)
    with pytest.raises(ValueError, match="OUTLIER_SYNTHESIS"):
        _layer(outlier_synthesis="uniform")
    with pytest.raises(ValueError, match="BOTTLENECK_DIM"):
        _layer(bottleneck_dim=-1)
    with pytest.raises(ValueError, match="NPOS.BOUNDARY"):
        _layer(outlier_synthesis="npos", npos_boundary=19)  # 3 classes x 6 queued


# --- bottleneck ---------------------------------------------------------------------------------


def test_bottleneck_box_predictor_synthesises_in_the_bottleneck():
    layer = _layer(bottleneck_dim=4)
    x = torch.randn(5, DIM)
    scores, deltas, features = layer(x)
    torch.testing.assert_close(features, F.relu(layer.bottleneck[0](x)))
    torch.testing.assert_close(scores, layer.cls_score(features))
    torch.testing.assert_close(deltas, layer.bbox_pred(x))
    assert layer.feature_queues.feature_dim == 4
    losses = _train_two_steps(layer)
    assert losses["loss_vos"].item() > 0
    losses["loss_vos"].backward()
    assert torch.count_nonzero(layer.bottleneck[0].weight.grad) > 0
    assert torch.count_nonzero(layer.energy_weights.grad) > 0


def test_bottleneck_classification_head():
    torch.manual_seed(0)
    head = VOSClassificationHead(DIM, num_classes=NUM_CLASSES, bottleneck_dim=4, sample_number=2, starting_iter=1,
                                 sample_from=50, balanced_loss=True, outlier_tail=1e-6, select=3)
    features = torch.randn(6, DIM) + 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(head(features), head.cls_score(F.relu(head.bottleneck[0](features))))
    with EventStorage(0):
        head.losses(head(features), features, labels)
    torch.testing.assert_close(head.feature_queues.features[0, 0], F.relu(head.bottleneck[0](features[0])).detach())
    with EventStorage(1):
        losses = head.losses(head(features), features, labels)
    losses["loss_vos"].backward()
    assert torch.count_nonzero(head.bottleneck[0].weight.grad) > 0


# --- NPOS ---------------------------------------------------------------------------------------


def test_knn_distances_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(30, 5, generator=generator), dim=1)
    queries = F.normalize(torch.randn(7, 5, generator=generator), dim=1)
    distances = torch.cdist(queries.double(), keys.double())
    torch.testing.assert_close(knn_distances(queries, keys, 3).double(), distances.sort(dim=1).values[:, 2])
    self_distances = torch.cdist(keys.double(), keys.double()) + torch.diag(torch.full((30,), float("inf")))
    torch.testing.assert_close(
        knn_distances(keys, keys, 2, exclude_self=True).double(), self_distances.sort(dim=1).values[:, 1],
        atol=1e-6, rtol=1e-5,
    )


def test_npos_outliers_match_a_direct_implementation():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(60, 6, generator=generator) * 3
    outliers = npos_outliers(features, 5, k=4, num_boundary=10, num_candidates=80, noise_scale=0.3,
                             generator=torch.Generator().manual_seed(7))
    # Direct: loops over points, brute-force distances.
    unit = features / features.norm(dim=1, keepdim=True)
    knn = []
    for i in range(60):
        d = sorted(float((unit[i] - unit[j]).norm()) for j in range(60) if j != i)
        knn.append(d[3])
    boundary = np.argsort(knn)[::-1][:10]
    draws = torch.Generator().manual_seed(7)
    choice = torch.randint(10, (80,), generator=draws)
    noise = torch.randn(80, 6, generator=draws) * (0.3 / math.sqrt(6))
    candidates = [unit[boundary[c]] + n for c, n in zip(choice.tolist(), noise)]
    candidate_knn = [sorted(float((c / c.norm() - u).norm()) for u in unit)[3] for c in candidates]
    keep = np.argsort(candidate_knn)[::-1][:5]
    expected = torch.stack([candidates[i] * features[boundary[choice[i]]].norm() for i in keep])
    torch.testing.assert_close(outliers, expected, atol=1e-5, rtol=1e-5)


def test_npos_variant_trains_the_box_predictor():
    layer = _layer(outlier_synthesis="npos", npos_k=3, npos_boundary=5, balanced_loss=True)
    losses = _train_two_steps(layer)
    assert math.isfinite(losses["loss_vos"].item()) and losses["loss_vos"].item() > 0
    losses["loss_vos"].backward()
    assert torch.count_nonzero(layer.energy_weights.grad) > 0
