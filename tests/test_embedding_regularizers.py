"""Tests of the embedding regularisers: margin classifiers, center loss and CIDER."""
import math

import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.config import default_config
from vos_det.errors import ConfigError
from vos_det.modeling.regularizers.center_loss import CenterLoss
from vos_det.modeling.regularizers.cider import CIDERLoss
from vos_det.modeling.regularizers.hypersphere import sequential_prototype_update
from vos_det.modeling.regularizers.embedding_losses import build_embedding_losses
from vos_det.modeling.regularizers.margin_classifiers import (
    ArcFaceClassifier,
    CosFaceClassifier,
    L2SoftmaxClassifier,
    LinearClassifier,
    SphereFaceClassifier,
    build_box_classifier,
)
from vos_det.modeling.output_layers import VOSOutputLayers

DIM = 6
NUM_OUTPUTS = 4  # 3 foreground classes + background


def _cfg(**embedding):
    cfg = default_config()
    for key, value in embedding.items():
        node = cfg.MODEL.EMBEDDING
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def _data(num=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num, DIM, generator=generator).double()
    labels = torch.randint(0, NUM_OUTPUTS, (num,), generator=generator)
    return features, labels


def _slow_cosines(features, weight):
    return torch.tensor(
        [
            [float(x @ w / (x.norm() * w.norm())) for w in weight]
            for x in features
        ],
        dtype=torch.float64,
    )


# --- margin classifiers -------------------------------------------------------------------


def test_linear_classifier_is_plain_softmax():
    classifier = build_box_classifier(_cfg(), DIM, NUM_OUTPUTS).double()
    assert isinstance(classifier, LinearClassifier)
    features, labels = _data()
    logits = classifier(features)
    torch.testing.assert_close(logits, features @ classifier.weight.t() + classifier.bias)
    assert classifier.training_logits(logits, features, labels, 0) is logits


def test_l2_softmax_fixes_the_feature_norm():
    classifier = build_box_classifier(_cfg(CLASSIFIER="L2SoftmaxClassifier", L2_SOFTMAX__ALPHA=5.0), DIM, NUM_OUTPUTS)
    classifier = classifier.double()
    assert isinstance(classifier, L2SoftmaxClassifier)
    features, labels = _data()
    expected = torch.stack([5.0 * x / x.norm() @ classifier.weight.t() + classifier.bias for x in features])
    torch.testing.assert_close(classifier(features), expected)
    torch.testing.assert_close(classifier(3.0 * features), expected)  # norm-free
    logits = classifier(features)
    assert classifier.training_logits(logits, features, labels, 0) is logits


@pytest.mark.parametrize("name", ["CosFaceClassifier", "ArcFaceClassifier"])
def test_cosine_classifiers_inference_logits_are_scaled_cosines(name):
    classifier = build_box_classifier(_cfg(CLASSIFIER=name), DIM, NUM_OUTPUTS).double()
    features, _ = _data()
    torch.testing.assert_close(classifier(features), classifier.scale * _slow_cosines(features, classifier.weight))


def test_cosface_subtracts_the_margin_from_the_true_class_only():
    classifier = CosFaceClassifier(DIM, NUM_OUTPUTS, scale=20.0, margin=0.35).double()
    features, labels = _data()
    logits = classifier(features)
    trained = classifier.training_logits(logits, features, labels, 0)
    cosines = _slow_cosines(features, classifier.weight)
    for i, label in enumerate(labels.tolist()):
        for j in range(NUM_OUTPUTS):
            expected = 20.0 * (cosines[i, j] - 0.35) if j == label else 20.0 * cosines[i, j]
            assert float(trained[i, j]) == pytest.approx(float(expected), abs=1e-9)


def test_arcface_adds_the_margin_to_the_angle():
    margin = 0.5
    classifier = ArcFaceClassifier(DIM, NUM_OUTPUTS, scale=10.0, margin=margin).double()
    # True-class cosines across [-1, 1], both sides of theta = pi - m.
    cosines = torch.linspace(-0.99, 0.99, 41, dtype=torch.float64)
    labels = torch.zeros(len(cosines), dtype=torch.long)
    logits = torch.zeros(len(cosines), NUM_OUTPUTS, dtype=torch.float64)
    logits[:, 0] = 10.0 * cosines
    logits[:, 1:] = 1.0
    trained = classifier.training_logits(logits, None, labels, 0)
    for cosine, value in zip(cosines.tolist(), trained[:, 0].tolist()):
        theta = math.acos(cosine)
        if theta + margin <= math.pi:
            expected = math.cos(theta + margin)
        else:
            expected = cosine - margin * math.sin(margin)
        assert value == pytest.approx(10.0 * expected, abs=1e-9)
    assert torch.all(trained[:, 1:] == 1.0)
    # The true-class logit decreases with the angle everywhere, the switch point included.
    assert torch.all(torch.diff(trained[:, 0]) > 0)


def _slow_psi(theta, m):
    k = min(int(m * theta / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def test_sphereface_psi_and_annealed_margin():
    classifier = SphereFaceClassifier(
        DIM, NUM_OUTPUTS, margin=4, lambda_base=1000.0, lambda_min=5.0, lambda_gamma=0.12, lambda_power=1.0
    ).double()
    thetas = torch.linspace(0.01, math.pi - 0.01, 200, dtype=torch.float64)
    psi = classifier.psi(torch.cos(thetas))
    for theta, value in zip(thetas.tolist(), psi.tolist()):
        assert value == pytest.approx(_slow_psi(theta, 4), abs=1e-6)
    assert torch.all(torch.diff(psi) < 0)  # monotone decreasing on [0, pi]

    assert classifier.blend_lambda(0) == 1000.0
    assert classifier.blend_lambda(100) == pytest.approx(1000.0 / (1 + 0.12 * 100))
    assert classifier.blend_lambda(10**6) == 5.0

    features, labels = _data()
    logits = classifier(features)
    weight_directions = F.normalize(classifier.weight, dim=1)
    torch.testing.assert_close(logits, features @ weight_directions.t())  # ||x|| cos(theta)
    trained = classifier.training_logits(logits, features, labels, 100)
    blend = classifier.blend_lambda(100)
    cosines = _slow_cosines(features, classifier.weight)
    for i, label in enumerate(labels.tolist()):
        norm, cosine = float(features[i].norm()), float(cosines[i, label])
        expected = norm * (blend * cosine + _slow_psi(math.acos(cosine), 4)) / (1 + blend)
        assert float(trained[i, label]) == pytest.approx(expected, rel=1e-6)
        others = [j for j in range(NUM_OUTPUTS) if j != label]
        torch.testing.assert_close(trained[i, others], logits[i, others])


@pytest.mark.parametrize(
    "name", ["L2SoftmaxClassifier", "CosFaceClassifier", "ArcFaceClassifier", "SphereFaceClassifier"]
)
def test_margin_gradients_are_finite_when_features_align_with_weights(name):
    classifier = build_box_classifier(_cfg(CLASSIFIER=name), DIM, NUM_OUTPUTS)
    features = (classifier.weight.detach()[[0, 1, 2, 3]] * 2.0).clone().requires_grad_(True)
    labels = torch.arange(NUM_OUTPUTS)
    logits = classifier(features)
    loss = F.cross_entropy(classifier.training_logits(logits, features, labels, 0), labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    assert torch.isfinite(classifier.weight.grad).all()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("ARCFACE__MARGIN", 2.0, "ARCFACE.MARGIN"),
        ("COSFACE__SCALE", 0.0, "COSFACE.SCALE"),
        ("SPHEREFACE__MARGIN", 0, "SPHEREFACE.MARGIN"),
        ("L2_SOFTMAX__ALPHA", -1.0, "L2_SOFTMAX.ALPHA"),
    ],
)
def test_bad_classifier_settings_name_the_key(key, value, message):
    classifier = {"ARCFACE": "ArcFace", "COSFACE": "CosFace", "SPHEREFACE": "SphereFace", "L2_SOFTMAX": "L2Softmax"}
    cfg = _cfg(CLASSIFIER=classifier[key.split("__")[0]] + "Classifier", **{key: value})
    with pytest.raises(ValueError, match=message):
        build_box_classifier(cfg, DIM, NUM_OUTPUTS)


# --- center loss --------------------------------------------------------------------------


def test_center_loss_value_and_center_update_follow_the_paper():
    loss_module = CenterLoss(DIM, 3, loss_weight=0.5, center_lr=0.3).double()
    loss_module.centers.copy_(torch.randn(3, DIM, generator=torch.Generator().manual_seed(1)))
    features, _ = _data(12)
    labels = torch.tensor([0, 0, 2, 2, 2, 0, 2, 0, 0, 2, 2, 2])  # class 1 absent
    centers = loss_module.centers.clone()

    loss = loss_module(features, labels)["loss_center"]
    expected = 0.5 * sum(0.5 * float((x - centers[y]).pow(2).sum()) for x, y in zip(features, labels)) / 12
    assert float(loss) == pytest.approx(expected)

    for j in range(3):
        members = features[labels == j]
        delta = (centers[j] - members).sum(dim=0) / (1 + len(members)) if len(members) else 0.0
        torch.testing.assert_close(loss_module.centers[j], centers[j] - 0.3 * delta)
    torch.testing.assert_close(loss_module.centers[1], centers[1])


def test_center_loss_gradient_and_no_update_in_eval():
    loss_module = CenterLoss(DIM, 3, loss_weight=1.0, center_lr=0.5).double()
    features, _ = _data(4)
    features.requires_grad_(True)
    labels = torch.tensor([0, 1, 1, 2])
    loss_module(features, labels)["loss_center"].backward()
    torch.testing.assert_close(features.grad, features.detach() / 4)  # centers were zero
    loss_module.eval()
    before = loss_module.centers.clone()
    loss_module(features.detach(), labels)
    torch.testing.assert_close(loss_module.centers, before)
    empty = loss_module(torch.zeros(0, DIM, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    assert float(empty["loss_center"]) == 0.0


# --- CIDER --------------------------------------------------------------------------------


def _slow_prototype_update(prototypes, embeddings, labels, momentum):
    prototypes = prototypes.clone()
    for z, label in zip(embeddings, labels.tolist()):
        prototypes[label] = F.normalize(momentum * prototypes[label] + (1 - momentum) * z, dim=0)
    return prototypes


def test_sequential_prototype_update_equals_the_one_by_one_loop():
    generator = torch.Generator().manual_seed(3)
    prototypes = F.normalize(torch.randn(4, 5, generator=generator, dtype=torch.float64), dim=1)
    prototypes[3] = 0.0  # an unseen class
    embeddings = F.normalize(torch.randn(17, 5, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.tensor([2, 0, 0, 3, 2, 2, 0, 1, 2, 2, 0, 3, 2, 1, 2, 2, 0])
    result = sequential_prototype_update(prototypes, embeddings, labels, 0.7)
    torch.testing.assert_close(result, _slow_prototype_update(prototypes, embeddings, labels, 0.7))
    # The first embedding of an unseen class sets its direction.
    only_first = sequential_prototype_update(prototypes, embeddings[3:4], labels[3:4], 0.7)
    torch.testing.assert_close(only_first[3], embeddings[3])


def test_cider_losses_match_their_formulas():
    torch.manual_seed(0)
    num_classes, tau = 3, 0.2
    loss_module = CIDERLoss(
        DIM, num_classes, embedding_dim=4, temperature=tau, prototype_momentum=0.6,
        compactness_weight=0.7, dispersion_weight=1.3,
    ).double()
    start = F.normalize(torch.randn(num_classes, 4, dtype=torch.float64), dim=1)
    loss_module.prototypes.copy_(start)
    features = torch.randn(9, DIM, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1])

    losses = loss_module(features, labels)
    z = F.normalize(loss_module.projection(features), dim=1).detach()
    mu = _slow_prototype_update(start, z, labels, 0.6)
    torch.testing.assert_close(loss_module.prototypes, mu)

    compactness = -sum(
        math.log(math.exp(float(z[i] @ mu[labels[i]]) / tau) / sum(math.exp(float(z[i] @ m) / tau) for m in mu))
        for i in range(9)
    ) / 9
    dispersion = sum(
        math.log(sum(math.exp(float(mu[i] @ mu[j]) / tau) for j in range(num_classes) if j != i) / (num_classes - 1))
        for i in range(num_classes)
    ) / num_classes
    scale = tau / 0.1
    assert float(losses["loss_cider_comp"]) == pytest.approx(0.7 * scale * compactness)
    assert float(losses["loss_cider_dis"]) == pytest.approx(1.3 * scale * dispersion)

    # The dispersion loss reaches the features through the prototype update.
    grad = torch.autograd.grad(losses["loss_cider_dis"], features)[0]
    assert grad.abs().sum() > 0


def test_cider_dispersion_needs_two_seen_classes():
    loss_module = CIDERLoss(
        DIM, 3, embedding_dim=4, temperature=0.1, prototype_momentum=0.9,
        compactness_weight=1.0, dispersion_weight=1.0,
    )
    features = torch.randn(5, DIM)
    losses = loss_module(features, torch.zeros(5, dtype=torch.long))
    assert float(losses["loss_cider_dis"]) == 0.0
    assert float(loss_module.prototypes[0].norm()) == pytest.approx(1.0)
    assert float(loss_module.prototypes[1:].abs().sum()) == 0.0


def test_embedding_losses_are_built_by_name_and_rejects_duplicates():
    cfg = _cfg(LOSSES=["CenterLoss", "CIDERLoss"])
    losses = build_embedding_losses(cfg, DIM, 3)
    assert [type(loss) for loss in losses] == [CenterLoss, CIDERLoss]
    with pytest.raises(ValueError, match="twice"):
        build_embedding_losses(_cfg(LOSSES=["CenterLoss", "CenterLoss"]), DIM, 3)
    with pytest.raises(ConfigError, match=r"MODEL\.EMBEDDING\.LOSSES='NoSuchLoss': must be one of CIDERLoss, CenterLoss, SIRENLoss"):
        build_embedding_losses(_cfg(LOSSES=["NoSuchLoss"]), DIM, 3)


# --- in the box predictor -----------------------------------------------------------------


def _proposals(gt_classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(len(gt_classes), 2, generator=generator) * 30
    boxes = torch.cat([xy, xy + 10], dim=1)
    instances = Instances((64, 64))
    instances.proposal_boxes = Boxes(boxes)
    instances.gt_boxes = Boxes(boxes + 1.0)
    instances.gt_classes = torch.as_tensor(gt_classes)
    return [instances]


def test_predictor_trains_on_margin_logits_and_infers_without_margin():
    cfg = _cfg(CLASSIFIER="CosFaceClassifier", LOSSES=["CenterLoss", "CIDERLoss"])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.VOS.STARTING_ITER = 0
    cfg.MODEL.VOS.SAMPLE_NUMBER = 4
    cfg.MODEL.VOS.SAMPLE_FROM = 20
    torch.manual_seed(0)
    predictor = VOSOutputLayers(cfg, ShapeSpec(channels=DIM))
    assert isinstance(predictor.cls_score, CosFaceClassifier)
    assert {"embedding_losses.0.centers", "embedding_losses.1.prototypes"} <= set(predictor.state_dict())

    gt_classes = [0, 1, 2, 3, 3, 1]  # 3 = background
    proposals = _proposals(gt_classes)
    features = torch.randn(len(gt_classes), DIM)
    predictions = predictor(features)
    with EventStorage(5):
        losses = predictor.losses(predictions, proposals)
    assert {"loss_cls", "loss_box_reg", "loss_center", "loss_cider_comp", "loss_cider_dis", "loss_vos"} <= set(losses)
    labels = torch.tensor(gt_classes)
    margin_logits = predictions[0].clone()
    margin_logits[torch.arange(len(labels)), labels] -= predictor.cls_score.scale * predictor.cls_score.margin
    assert float(losses["loss_cls"]) == pytest.approx(float(F.cross_entropy(margin_logits, labels)), rel=1e-5)
    # Only the 4 foreground boxes reach the center loss.
    foreground = labels < 3
    centers = torch.zeros(3, DIM)
    expected_center = 0.003 * 0.5 * (features[foreground] - centers[labels[foreground]]).pow(2).sum(1).mean()
    assert float(losses["loss_center"]) == pytest.approx(float(expected_center), rel=1e-5)
    sum(losses.values()).backward()

    predictor.eval()
    proposals = _proposals(gt_classes)
    with torch.no_grad():
        logits, _, _ = predictor(features)
    torch.testing.assert_close(logits, 20.0 * F.linear(F.normalize(features, dim=1), F.normalize(predictor.cls_score.weight, dim=1)))
