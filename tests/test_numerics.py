"""Degenerate numbers during training: NaN/Inf features or logits, singular covariances."""
import pytest
import torch
from detectron2.utils.events import EventStorage

from test_output_layers import DIM, NUM_CLASSES, SAMPLE_NUMBER, STARTING_ITER, _layer, _proposals

NUM_BOXES = NUM_CLASSES * SAMPLE_NUMBER


def _step(layer, features, iteration, seed=0):
    """One training step over NUM_BOXES foreground proposals covering every class."""
    proposals = _proposals([list(range(NUM_CLASSES)) * SAMPLE_NUMBER], seed=seed)
    with EventStorage(iteration) as storage:
        storage.iter = iteration
        losses = layer.losses(layer(features), proposals)
    return losses, storage


def _finite_features(seed):
    return torch.randn(NUM_BOXES, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nonfinite_features_never_reach_the_queues_and_the_loss_stays_finite(bad_value):
    layer = _layer()
    _step(layer, _finite_features(0), iteration=0)
    features = _finite_features(1)
    features[::4, 2] = bad_value
    losses, storage = _step(layer, features, iteration=STARTING_ITER + 1)
    assert torch.isfinite(layer.feature_queues.features).all()
    assert torch.isfinite(layer.feature_queues.class_sums).all()
    assert torch.isfinite(losses["loss_vos"]) and losses["loss_vos"] > 0
    assert storage.history("vos/nonfinite_boxes").latest() == len(range(0, NUM_BOXES, 4))
    losses["loss_vos"].backward()
    assert torch.isfinite(layer.energy_weights.grad).all()


def test_nonfinite_logits_are_left_out_of_the_loss():
    layer = _layer()
    _step(layer, _finite_features(0), iteration=0)
    scores, deltas, features = layer(_finite_features(1))
    scores = scores.clone()
    scores[:3, 0] = float("inf")
    proposals = _proposals([list(range(NUM_CLASSES)) * SAMPLE_NUMBER], seed=1)
    with EventStorage(STARTING_ITER + 1) as storage:
        losses = layer.losses((scores, deltas, features), proposals)
    assert storage.history("vos/nonfinite_boxes").latest() == 3
    assert torch.isfinite(losses["loss_vos"]) and losses["loss_vos"] > 0


@pytest.mark.parametrize("degenerate", ["duplicated", "all_zero"])
def test_singular_covariance_still_synthesises_finite_outliers(degenerate):
    layer = _layer()
    if degenerate == "duplicated":
        features = _finite_features(0)[:1].repeat(NUM_BOXES, 1)  # every queued feature identical
    else:
        features = torch.zeros(NUM_BOXES, DIM)
    _step(layer, features, iteration=0)
    means, covariance = layer.feature_queues.gaussian()
    assert torch.linalg.matrix_rank(covariance) == 0
    outliers = layer.synthesize_outliers(STARTING_ITER + 1)
    assert outliers is not None and torch.isfinite(outliers).all()
    losses, _ = _step(layer, features, iteration=STARTING_ITER + 1)
    assert torch.isfinite(losses["loss_vos"]) and losses["loss_vos"] > 0
