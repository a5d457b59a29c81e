"""Tests of vos_det.modeling.output_layers.VOSOutputLayers: queues, loss_vos, OOD fields, and
degenerate numbers during training (NaN/Inf features or logits, singular covariances)."""
import math

import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.modeling.ood_scores import POST_HOC_SCORES
from vos_det.modeling.output_layers import OOD_SCORES
from vos_det.evaluation.records import computing_all_ood_scores

NUM_CLASSES = 3
DIM = 8
SAMPLE_NUMBER = 5
STARTING_ITER = 2
SELECT = 2
IMAGE_SIZE = (64, 80)
# The options of the box predictor of the new_layer fixture (tests/conftest.py).
VOS_LAYER_OPTIONS = dict(sample_number=SAMPLE_NUMBER, starting_iter=STARTING_ITER, sample_from=50, select=SELECT)


def _boxes(num, generator):
    xy = torch.rand(num, 2, generator=generator) * 40
    wh = 5 + torch.rand(num, 2, generator=generator) * 20
    return torch.cat([xy, xy + wh], dim=1)


def _proposals(gt_classes_per_image, seed=0):
    """Training proposals (proposal_boxes, gt_boxes, gt_classes), one Instances per image."""
    generator = torch.Generator().manual_seed(seed)
    proposals = []
    for gt_classes in gt_classes_per_image:
        gt_classes = torch.as_tensor(gt_classes, dtype=torch.long)
        boxes = _boxes(len(gt_classes), generator)
        instances = Instances(IMAGE_SIZE)
        instances.proposal_boxes = Boxes(boxes)
        instances.gt_boxes = Boxes(boxes + torch.rand(boxes.shape, generator=generator))
        instances.gt_classes = gt_classes
        proposals.append(instances)
    return proposals


def _features(num, seed=0):
    return torch.randn(num, DIM, generator=torch.Generator().manual_seed(seed))


def _fill_all_queues(layer, iteration=0, seed=100):
    """One training step whose foreground proposals fill every class queue."""
    gt = [list(range(NUM_CLASSES)) * SAMPLE_NUMBER]
    proposals = _proposals(gt, seed=seed)
    with EventStorage(iteration):
        layer.losses(layer(_features(len(gt[0]), seed=seed)), proposals)
    assert layer.feature_queues.all_full()


def _training_step(layer, gt_classes_per_image, iteration, seed=1):
    proposals = _proposals(gt_classes_per_image, seed=seed)
    features = _features(sum(len(g) for g in gt_classes_per_image), seed=seed)
    predictions = layer(features)
    with EventStorage(iteration) as storage:
        storage.iter = iteration
        losses = layer.losses(predictions, proposals)
    return losses, predictions, proposals, storage


# --- training ---------------------------------------------------------------------------------


def test_forward_returns_scores_deltas_and_features(new_layer):
    layer = new_layer()
    x = _features(6)
    scores, deltas, features = layer(x)
    assert scores.shape == (6, NUM_CLASSES + 1)
    assert deltas.shape == (6, NUM_CLASSES * 4)
    assert torch.equal(features, x)
    scores_4d, _, features_4d = layer(x[:, :, None, None])
    assert features_4d.shape == (6, DIM)
    torch.testing.assert_close(scores_4d, scores)


def test_loss_is_zero_before_starting_iter_but_reaches_parameters(new_layer):
    layer = new_layer()
    _fill_all_queues(layer)
    losses, *_ = _training_step(layer, [[0, 1, 2, 3], [1, 3]], iteration=STARTING_ITER - 1)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_vos"}
    assert losses["loss_vos"].item() == 0.0
    losses["loss_vos"].backward()
    assert layer.energy_weights.grad is not None
    assert torch.count_nonzero(layer.energy_weights.grad) == 0
    for parameter in layer.uncertainty_classifier.parameters():
        assert parameter.grad is not None
        assert torch.count_nonzero(parameter.grad) == 0


def test_queues_receive_only_foreground_features(new_layer):
    layer = new_layer()
    gt = [[0, 3, 1, 3], [3, 2, 0]]  # 3 == NUM_CLASSES is background
    _, predictions, _, _ = _training_step(layer, gt, iteration=0)
    features = predictions[2]
    assert layer.feature_queues.counts.tolist() == [2, 1, 1]
    assert torch.equal(layer.feature_queues.features[0, :2], features[[0, 6]])
    assert torch.equal(layer.feature_queues.features[1, :1], features[[2]])
    assert torch.equal(layer.feature_queues.features[2, :1], features[[5]])
    # Only background: nothing queued.
    _training_step(layer, [[3, 3, 3]], iteration=1, seed=2)
    assert layer.feature_queues.counts.tolist() == [2, 1, 1]


def test_no_loss_until_every_queue_is_full(monkeypatch, new_layer):
    layer = new_layer()
    calls = []
    original = layer.synthesize_outliers
    monkeypatch.setattr(layer, "synthesize_outliers", lambda it: calls.append(it) or original(it))
    # Classes 0 and 1 fill up, class 2 never appears: no synthesis even long after the start.
    gt = [[0, 1] * SAMPLE_NUMBER]
    for iteration in range(STARTING_ITER, STARTING_ITER + 4):
        losses, _, _, storage = _training_step(layer, gt, iteration=iteration, seed=iteration)
        assert losses["loss_vos"].item() == 0.0
    assert calls == []
    assert storage.latest()["vos/synthesis_active"][0] == 0.0
    # Class 2 fills up: the next step synthesises with the step's iteration.
    losses, _, _, storage = _training_step(layer, [[2] * SAMPLE_NUMBER + [0, 1]], iteration=20)
    assert layer.feature_queues.all_full()
    assert calls == [20]
    assert losses["loss_vos"].item() > 0
    assert storage.latest()["vos/synthesis_active"][0] == 1.0


def test_loss_after_starting_iter_trains_energy_weights_and_classifier(new_layer):
    layer = new_layer()
    _fill_all_queues(layer)
    losses, *_ = _training_step(layer, [[0, 1, 2, 3], [2, 3, 1]], iteration=STARTING_ITER)
    assert losses["loss_vos"].item() > 0
    assert torch.isfinite(losses["loss_vos"])
    losses["loss_vos"].backward()
    assert torch.count_nonzero(layer.energy_weights.grad) > 0
    assert torch.count_nonzero(layer.uncertainty_classifier.weight.grad) > 0
    assert torch.count_nonzero(layer.uncertainty_classifier.bias.grad) > 0
    # The outliers' logits come from the class layer, which gets gradients too.
    assert torch.count_nonzero(layer.cls_score.weight.grad) > 0


def test_loss_vos_is_weighted_cross_entropy_on_weighted_energies(monkeypatch, new_layer):
    beta = 0.3
    layer = new_layer(vos_loss_weight=beta)
    with torch.no_grad():
        layer.energy_weights.copy_(torch.tensor([0.4, -0.2, 1.1]))  # relu -> [0.4, 0, 1.1]
    _fill_all_queues(layer)
    outliers = torch.randn(NUM_CLASSES * SELECT, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(layer, "synthesize_outliers", lambda iteration: outliers)
    gt = [[0, 3, 2, 1, 3], [2, 2, 3]]
    losses, predictions, _, _ = _training_step(layer, gt, iteration=STARTING_ITER + 1)

    scores = predictions[0].detach().double()
    gt_classes = torch.tensor([c for image in gt for c in image])
    foreground = gt_classes < NUM_CLASSES
    weights = torch.tensor([0.4, 0.0, 1.1], dtype=torch.float64)

    def negative_energy(logits):  # log sum_k w_k exp(f_k), directly (moderate logits)
        return torch.log((weights * torch.exp(logits[:, :NUM_CLASSES])).sum(dim=1))

    with torch.no_grad():
        outlier_logits = layer.cls_score(outliers.float()).double()
        inputs = torch.cat([negative_energy(scores[foreground]), negative_energy(outlier_logits)])
        w = layer.uncertainty_classifier.weight.double()[:, 0]
        b = layer.uncertainty_classifier.bias.double()
        classifier_logits = inputs[:, None] * w[None, :] + b[None, :]
    labels = torch.cat([torch.ones(int(foreground.sum()), dtype=torch.long), torch.zeros(len(outliers), dtype=torch.long)])
    expected = beta * F.cross_entropy(classifier_logits, labels)
    assert losses["loss_vos"].item() == pytest.approx(expected.item(), rel=1e-5)
    # Not the same as the loss with every proposal (background included) counted as ID.
    all_inputs = torch.cat([negative_energy(scores), negative_energy(outlier_logits)])
    wrong = beta * F.cross_entropy(
        all_inputs[:, None] * w[None, :] + b[None, :],
        torch.cat([torch.ones(len(scores), dtype=torch.long), torch.zeros(len(outliers), dtype=torch.long)]),
    )
    assert losses["loss_vos"].item() != pytest.approx(wrong.item(), rel=1e-5)


def test_loss_is_zero_when_a_batch_has_no_foreground(new_layer):
    layer = new_layer()
    _fill_all_queues(layer)
    losses, *_ = _training_step(layer, [[3, 3], [3]], iteration=STARTING_ITER + 5)
    assert losses["loss_vos"].item() == 0.0
    losses["loss_vos"].backward()
    assert layer.energy_weights.grad is not None


def test_synthesis_is_seeded_by_iteration(new_layer):
    layer = new_layer()
    _fill_all_queues(layer)
    a = layer.synthesize_outliers(7)
    b = layer.synthesize_outliers(7)
    c = layer.synthesize_outliers(8)
    assert a.shape == (NUM_CLASSES * SELECT, DIM)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_state_dict_holds_queues_and_calibrated_threshold(new_layer):
    layer = new_layer()
    _fill_all_queues(layer)
    state = layer.state_dict()
    assert "feature_queues.features" in state and "feature_queues.counts" in state
    assert "calibrated_ood_threshold" in state and math.isnan(float(state["calibrated_ood_threshold"]))
    assert "energy_weights" in state and "uncertainty_classifier.weight" in state
    fresh = new_layer()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.feature_queues.features, layer.feature_queues.features)
    assert fresh.feature_queues.all_full()


# --- inference --------------------------------------------------------------------------------


def _inference_inputs(layer, sizes=(12, 9), seed=3, nan_rows=()):
    generator = torch.Generator().manual_seed(seed)
    proposals = []
    for size in sizes:
        instances = Instances(IMAGE_SIZE)
        instances.proposal_boxes = Boxes(_boxes(size, generator))
        proposals.append(instances)
    with torch.no_grad():
        scores, deltas, features = layer(_features(sum(sizes), seed=seed) * 3)
        for row in nan_rows:
            deltas[row] = float("nan")
    return (scores, deltas, features), proposals


def _reference_table(layer, logits):
    logits = logits[:, :NUM_CLASSES].double()
    table = {
        "energy": -torch.logsumexp(logits, dim=1),
        "msp": -torch.softmax(logits, dim=1).max(dim=1).values,
    }
    if layer.vos_enabled:
        weights = torch.relu(layer.energy_weights.detach().double())
        negative_energy = torch.log((weights * torch.exp(logits)).sum(dim=1))
        table["weighted_energy"] = -negative_energy
        w = layer.uncertainty_classifier.weight.detach().double()[:, 0]
        b = layer.uncertainty_classifier.bias.detach().double()
        id_scores = torch.softmax(negative_energy[:, None] * w + b, dim=1)[:, 1]
        table["vos"] = 1 - id_scores
        # The release's score: the head on the UNWEIGHTED logsumexp, p(ID) negated.
        plain = torch.logsumexp(logits, dim=1)
        table["vos_release"] = -torch.softmax(plain[:, None] * w + b, dim=1)[:, 1]
    else:
        id_scores = torch.sigmoid(-table["energy"])
    return table, id_scores


# The scores a model has without fitted post-hoc state (tests/test_ood_scores.py covers the
# fitted ones) and without SIRENLoss (tests/test_siren.py covers "siren").
SCORES_WITHOUT_POST_HOC_STATE = tuple(s for s in OOD_SCORES if s not in (*POST_HOC_SCORES, "siren")) + ("maxlogit", "gen")


@pytest.mark.parametrize("ood_score", SCORES_WITHOUT_POST_HOC_STATE)
def test_inference_adds_ood_fields_of_kept_boxes(ood_score, new_layer):
    layer = new_layer(ood_score=ood_score, ood_threshold=0.4)
    layer.eval()
    fit_features = torch.randn(30, DIM, generator=torch.Generator().manual_seed(5))
    layer.mahalanobis.fit(fit_features, torch.arange(30) % NUM_CLASSES, NUM_CLASSES)
    predictions, proposals = _inference_inputs(layer, nan_rows=(1, 14))
    with torch.no_grad(), computing_all_ood_scores(layer):
        instances, kept_indices = layer.inference(predictions, proposals)
    logits_per_image = predictions[0].split([len(p) for p in proposals])
    assert len(instances) == len(kept_indices) == len(proposals)
    total = 0
    for image, logits, kept, nan_row in zip(instances, logits_per_image, kept_indices, (1, 14 - 12)):
        n = len(image.pred_boxes)
        total += n
        for name in ("id_scores", "ood_scores", "is_ood", *(f"ood_scores_{s}" for s in SCORES_WITHOUT_POST_HOC_STATE)):
            assert image.has(name), name
            assert len(image.get(name)) == n
        assert len(kept) == n
        assert nan_row not in kept.tolist()  # the non-finite proposal was dropped
        # The kept indices point at the proposals the detections came from.
        probs = torch.softmax(logits[kept], dim=1)
        torch.testing.assert_close(image.scores, probs[torch.arange(n), image.pred_classes])
        table, id_scores = _reference_table(layer, logits[kept])
        assert ((image.id_scores >= 0) & (image.id_scores <= 1)).all()
        torch.testing.assert_close(image.id_scores.double(), id_scores, rtol=1e-5, atol=1e-6)
        for name, expected in table.items():
            torch.testing.assert_close(image.get(f"ood_scores_{name}").double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(image.ood_scores, image.get(f"ood_scores_{ood_score}"))
        if ood_score == "vos":
            torch.testing.assert_close(image.ood_scores, 1 - image.id_scores)
        assert torch.equal(image.is_ood, image.ood_scores > 0.4)
    assert total > 0


@pytest.mark.parametrize("nan_rows", [(), (1, 14)])
@pytest.mark.parametrize("ood_score", SCORES_WITHOUT_POST_HOC_STATE)
def test_inference_sets_the_field_of_the_score_behind_is_ood_with_its_values_among_all(ood_score, nan_rows, new_layer):
    layer = new_layer(ood_score=ood_score, ood_threshold=0.4)
    layer.eval()
    fit_features = torch.randn(30, DIM, generator=torch.Generator().manual_seed(5))
    layer.mahalanobis.fit(fit_features, torch.arange(30) % NUM_CLASSES, NUM_CLASSES)
    predictions, proposals = _inference_inputs(layer, nan_rows=nan_rows)
    with torch.no_grad():
        asked, asked_indices = layer.inference(predictions, proposals)
        with computing_all_ood_scores(layer):
            every, every_indices = layer.inference(predictions, proposals)
    assert not layer.compute_all_ood_scores
    logits_per_image = predictions[0].split([len(p) for p in proposals])
    for image, image_all, logits, kept, kept_all in zip(asked, every, logits_per_image, asked_indices, every_indices):
        assert len(image) > 0
        score_fields = {name for name in image.get_fields() if name.startswith("ood_scores_")}
        assert score_fields == {f"ood_scores_{ood_score}"}
        assert len(score_fields) < len([n for n in image_all.get_fields() if n.startswith("ood_scores_")])
        assert torch.equal(kept, kept_all)
        # Same ops on the same rows in this process: each value is the one it has among all.
        fields = ("scores", "pred_classes", "id_scores", "ood_scores", "is_ood", "proposal_scores")
        for name in (*fields, f"ood_scores_{ood_score}"):
            assert torch.equal(image.get(name), image_all.get(name)), name
        assert torch.equal(image.pred_boxes.tensor, image_all.pred_boxes.tensor)
        table, id_scores = _reference_table(layer, logits[kept])
        if ood_score in table:
            torch.testing.assert_close(image.ood_scores.double(), table[ood_score], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(image.id_scores.double(), id_scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(image.is_ood, image.ood_scores > 0.4)


@pytest.mark.parametrize("nan_rows", [(), (1, 14)])
def test_proposal_scores_are_the_largest_foreground_probability_of_each_detections_proposal(nan_rows, new_layer):
    layer = new_layer()
    layer.eval()
    predictions, proposals = _inference_inputs(layer, nan_rows=nan_rows)
    with torch.no_grad():
        instances, kept_indices = layer.inference(predictions, proposals)
    probabilities = torch.softmax(predictions[0], dim=1).split([len(p) for p in proposals])
    assert sum(len(image) for image in instances) > 0
    for image, image_probabilities, kept in zip(instances, probabilities, kept_indices):
        expected = image_probabilities[kept, :NUM_CLASSES].max(dim=1).values
        torch.testing.assert_close(image.proposal_scores, expected)
        assert (image.proposal_scores >= image.scores).all()


def test_scores_not_asked_for_are_not_computed(new_layer, monkeypatch):
    layer = new_layer(ood_score="vos")
    layer.eval()
    layer.mahalanobis.fit(torch.randn(30, DIM), torch.arange(30) % NUM_CLASSES, NUM_CLASSES)

    def not_asked(*args, **kwargs):
        raise AssertionError("a score nobody asked for was computed")

    for scorer in layer.post_hoc.scores.values():
        monkeypatch.setattr(scorer, "forward", not_asked)
    monkeypatch.setattr(layer.mahalanobis, "ood_scores", not_asked)
    monkeypatch.setattr("vos_det.modeling.vos.virtual_outliers.max_softmax_ood_score", not_asked)
    predictions, proposals = _inference_inputs(layer)
    with torch.no_grad():
        instances, _ = layer.inference(predictions, proposals)
        assert sum(len(image) for image in instances) > 0
        with computing_all_ood_scores(layer), pytest.raises(AssertionError, match="nobody asked"):
            layer.inference(predictions, proposals)


def test_calibrated_threshold_overrides_configured_one_only_when_wanted(new_layer):
    predictions, proposals = None, None
    results = {}
    for use_calibrated in (True, False):
        layer = new_layer(ood_score="energy", ood_threshold=1e6, use_calibrated_threshold=use_calibrated)
        layer.eval()
        predictions, proposals = _inference_inputs(layer)
        with torch.no_grad():
            (uncalibrated, _), _ = layer.inference(predictions, proposals)
        assert math.isnan(float(layer.calibrated_ood_threshold))
        assert not uncalibrated.is_ood.any()  # NaN buffer: the configured threshold is used
        threshold = uncalibrated.ood_scores.median().item()
        layer.calibrated_ood_threshold.fill_(threshold)
        with torch.no_grad():
            (image, _), _ = layer.inference(predictions, proposals)
        results[use_calibrated] = image
        assert layer.current_ood_threshold() == (pytest.approx(threshold) if use_calibrated else 1e6)
        expected = image.ood_scores > (threshold if use_calibrated else 1e6)
        assert torch.equal(image.is_ood, expected)
    assert results[True].is_ood.any() and not results[True].is_ood.all()
    assert not results[False].is_ood.any()


def test_calibrated_threshold_survives_state_dict(new_layer):
    layer = new_layer()
    layer.calibrated_ood_threshold.fill_(0.25)
    fresh = new_layer()
    fresh.load_state_dict(layer.state_dict())
    assert fresh.current_ood_threshold() == 0.25


# --- VOS disabled -----------------------------------------------------------------------------


def test_vos_disabled_is_the_vanilla_predictor(new_layer):
    layer = new_layer(vos_enabled=False, ood_score="energy")
    vanilla = FastRCNNOutputLayers(
        ShapeSpec(channels=DIM), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=NUM_CLASSES
    )
    assert {n for n, _ in layer.named_parameters()} == {n for n, _ in vanilla.named_parameters()}
    assert not hasattr(layer, "feature_queues")
    assert not hasattr(layer, "energy_weights")
    assert not hasattr(layer, "uncertainty_classifier")
    assert not any(name.startswith("feature_queues") for name in layer.state_dict())
    losses, *_ = _training_step(layer, [[0, 1, 3], [2]], iteration=STARTING_ITER + 10)
    assert set(losses) == {"loss_cls", "loss_box_reg"}

    layer.eval()
    predictions, proposals = _inference_inputs(layer)
    with torch.no_grad():
        instances, kept_indices = layer.inference(predictions, proposals)
    logits = predictions[0].split([len(p) for p in proposals])
    for image, image_logits, kept in zip(instances, logits, kept_indices):
        assert not image.has("ood_scores_vos") and not image.has("ood_scores_weighted_energy")
        table, id_scores = _reference_table(layer, image_logits[kept])
        torch.testing.assert_close(image.id_scores.double(), id_scores, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(image.ood_scores.double(), table["energy"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ood_score", ["vos", "weighted_energy"])
def test_vos_disabled_rejects_vos_scores(ood_score, new_layer):
    with pytest.raises(ValueError):
        new_layer(vos_enabled=False, ood_score=ood_score)


def test_invalid_names_raise(new_layer):
    with pytest.raises(ValueError):
        new_layer(ood_score="entropy")
    with pytest.raises(ValueError):
        new_layer(sampler="mvn")


def test_mahalanobis_field_scores_the_kept_boxes_features(new_layer):
    layer = new_layer()
    layer.eval()
    fit_features = torch.randn(30, DIM, generator=torch.Generator().manual_seed(5))
    layer.mahalanobis.fit(fit_features, torch.arange(30) % NUM_CLASSES, NUM_CLASSES)
    predictions, proposals = _inference_inputs(layer, nan_rows=())
    with torch.no_grad(), computing_all_ood_scores(layer):
        instances, kept_indices = layer.inference(predictions, proposals)
    features_per_image = predictions[2].split([len(p) for p in proposals])
    for image, features, kept in zip(instances, features_per_image, kept_indices):
        expected = layer.mahalanobis.ood_scores(features[kept]).float()
        torch.testing.assert_close(image.ood_scores_mahalanobis, expected)


def test_mahalanobis_score_without_statistics_is_a_clear_error(new_layer):
    layer = new_layer(ood_score="mahalanobis")
    layer.eval()
    predictions, proposals = _inference_inputs(layer, nan_rows=())
    with pytest.raises(RuntimeError, match="fit_mahalanobis"):
        layer.inference(predictions, proposals)


# --- degenerate numbers during training: NaN/Inf features or logits, singular covariances ----

NUM_BOXES = NUM_CLASSES * SAMPLE_NUMBER


def _all_classes_step(layer, features, iteration, seed=0):
    """One training step over NUM_BOXES foreground proposals covering every class."""
    proposals = _proposals([list(range(NUM_CLASSES)) * SAMPLE_NUMBER], seed=seed)
    with EventStorage(iteration) as storage:
        storage.iter = iteration
        losses = layer.losses(layer(features), proposals)
    return losses, storage


def _finite_features(seed):
    return torch.randn(NUM_BOXES, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nonfinite_features_never_reach_the_queues_and_the_loss_stays_finite(bad_value, new_layer):
    layer = new_layer()
    _all_classes_step(layer, _finite_features(0), iteration=0)
    features = _finite_features(1)
    features[::4, 2] = bad_value
    losses, storage = _all_classes_step(layer, features, iteration=STARTING_ITER + 1)
    assert torch.isfinite(layer.feature_queues.features).all()
    assert torch.isfinite(layer.feature_queues.class_sums).all()
    assert torch.isfinite(losses["loss_vos"]) and losses["loss_vos"] > 0
    assert storage.history("vos/nonfinite_boxes").latest() == len(range(0, NUM_BOXES, 4))
    losses["loss_vos"].backward()
    assert torch.isfinite(layer.energy_weights.grad).all()


def test_nonfinite_logits_are_left_out_of_the_loss(new_layer):
    layer = new_layer()
    _all_classes_step(layer, _finite_features(0), iteration=0)
    scores, deltas, features = layer(_finite_features(1))
    scores = scores.clone()
    scores[:3, 0] = float("inf")
    proposals = _proposals([list(range(NUM_CLASSES)) * SAMPLE_NUMBER], seed=1)
    with EventStorage(STARTING_ITER + 1) as storage:
        losses = layer.losses((scores, deltas, features), proposals)
    assert storage.history("vos/nonfinite_boxes").latest() == 3
    assert torch.isfinite(losses["loss_vos"]) and losses["loss_vos"] > 0


@pytest.mark.parametrize("degenerate", ["duplicated", "all_zero"])
def test_singular_covariance_still_synthesises_finite_outliers(degenerate, new_layer):
    layer = new_layer()
    if degenerate == "duplicated":
        features = _finite_features(0)[:1].repeat(NUM_BOXES, 1)  # every queued feature identical
    else:
        features = torch.zeros(NUM_BOXES, DIM)
    _all_classes_step(layer, features, iteration=0)
    means, covariance = layer.feature_queues.gaussian()
    assert torch.linalg.matrix_rank(covariance) == 0
    outliers = layer.synthesize_outliers(STARTING_ITER + 1)
    assert outliers is not None and torch.isfinite(outliers).all()
    losses, _ = _all_classes_step(layer, features, iteration=STARTING_ITER + 1)
    assert torch.isfinite(losses["loss_vos"]) and losses["loss_vos"] > 0
