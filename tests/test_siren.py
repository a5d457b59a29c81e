"""SIREN: the vMF log-normaliser, the loss, the prototype update and the ``siren`` score."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import special
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.config import default_config
from vos_det.engine import Trainer
from vos_det.engine.trainer import OOD_RESULTS_FILE
from vos_det.modeling.ood_scores.siren import siren_ood_score
from vos_det.modeling.ood_scores.von_mises_fisher import vmf_log_likelihoods, vmf_log_normalizer
from vos_det.modeling.output_layers import VOSOutputLayers
from vos_det.modeling.regularizers.siren import SIRENLoss

DIM = 6  # box feature dimension
NUM_CLASSES = 3


def _scipy_log_normalizer(kappa, dim):
    """log C_d(kappa) from scipy's exponentially scaled Bessel function: log I_v = log ive + kappa."""
    order = dim / 2 - 1
    return order * math.log(kappa) - dim / 2 * math.log(2 * math.pi) - (math.log(special.ive(order, kappa)) + kappa)


def _siren(embedding_dim=4, kappa_init=10.0, momentum=0.95, loss_weight=0.1):
    torch.manual_seed(0)
    return SIRENLoss(
        DIM, NUM_CLASSES, embedding_dim=embedding_dim, loss_weight=loss_weight, kappa_init=kappa_init,
        prototype_momentum=momentum,
    ).double()


def _release_prototype_update(prototypes, embeddings, labels, momentum):
    """The released loop: each box in turn, mu <- normalize(0.05 normalize(z) + 0.95 mu) at 0.95."""
    prototypes = prototypes.clone()
    for z, label in zip(embeddings, labels.tolist()):
        prototypes[label] = F.normalize((1 - momentum) * F.normalize(z, dim=0) + momentum * prototypes[label], dim=0)
    return prototypes


# --- the vMF density ----------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3, 16, 64, 128])
def test_log_normalizer_and_its_gradient_match_scipy(dim):
    kappas = [1e-2, 0.5, 3.0, 10.0, 100.0, 1e3, 1e4, 1e5]
    kappa = torch.tensor(kappas, dtype=torch.float64, requires_grad=True)
    values = vmf_log_normalizer(kappa, dim)
    (gradient,) = torch.autograd.grad(values.sum(), kappa)
    order = dim / 2 - 1
    for k, value, slope in zip(kappas, values.tolist(), gradient.tolist()):
        expected = _scipy_log_normalizer(k, dim)
        # float64 terms of size ~kappa log kappa: an absolute error of a few ulps of that.
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-13 * k * math.log(2 + k)), (dim, k)
        # d/dkappa log C_d = -I_{v+1}(kappa) / I_v(kappa).
        assert slope == pytest.approx(-special.ive(order + 1, k) / special.ive(order, k), rel=1e-9, abs=1e-12), (dim, k)


@pytest.mark.parametrize("dim", [2, 5, 64])
def test_log_normalizer_at_zero_is_the_uniform_density(dim):
    kappa = torch.zeros(2, requires_grad=True)
    values = vmf_log_normalizer(kappa, dim)
    # 1 / the area of S^{d-1} = Gamma(d/2) / (2 pi^(d/2)).
    expected = math.lgamma(dim / 2) - math.log(2) - dim / 2 * math.log(math.pi)
    torch.testing.assert_close(values, torch.full((2,), expected), rtol=1e-6, atol=1e-6)
    values.sum().backward()
    assert torch.isfinite(kappa.grad).all()
    assert values.dtype == torch.float32


@pytest.mark.parametrize("kappa", [0.3, 7.0, 60.0])
def test_circle_density_integrates_to_one(kappa):
    # On S^1: the integral of C_2(kappa) exp(kappa cos theta) over theta in [0, 2 pi).
    theta = np.linspace(0.0, 2 * np.pi, 20001)[:-1]
    log_c = float(vmf_log_normalizer(torch.tensor(kappa, dtype=torch.float64), 2))
    integral = np.exp(log_c + kappa * np.cos(theta)).mean() * 2 * np.pi
    assert integral == pytest.approx(1.0, rel=1e-9)


def test_normalizer_refuses_a_dimension_below_two():
    with pytest.raises(ValueError, match="dimension must be >= 2, got 1"):
        vmf_log_normalizer(torch.ones(1), 1)


def test_log_likelihoods_are_kappa_cosine_plus_log_normalizer():
    generator = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(5, 4, generator=generator, dtype=torch.float64), dim=1)
    mu = F.normalize(torch.randn(3, 4, generator=generator, dtype=torch.float64), dim=1)
    kappa = torch.tensor([0.5, 4.0, 30.0], dtype=torch.float64)
    expected = [[float(kappa[k] * (z[i] @ mu[k])) + _scipy_log_normalizer(float(kappa[k]), 4) for k in range(3)] for i in range(5)]
    torch.testing.assert_close(vmf_log_likelihoods(z, mu, kappa), torch.tensor(expected, dtype=torch.float64))


# --- the loss -----------------------------------------------------------------------------


def test_loss_and_prototypes_follow_the_release():
    loss_module = _siren(embedding_dim=4, momentum=0.95, loss_weight=0.7)
    start = F.normalize(torch.randn(NUM_CLASSES, 4, dtype=torch.float64), dim=1)
    start[2] = 0.0  # a class not seen yet
    loss_module.prototypes.copy_(start)
    with torch.no_grad():
        loss_module.kappa_weight.copy_(torch.tensor([2.0, 15.0, 40.0]))
    features = torch.randn(9, DIM, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1])

    loss = loss_module(features, labels)["loss_siren"]

    projections = loss_module.projection(features).detach()
    mu = _release_prototype_update(start, projections, labels, 0.95)
    torch.testing.assert_close(loss_module.prototypes, mu)
    # weighted_vmf_loss of the release: p_y = Z(kappa_y) e^{kappa_y cos_y} / sum_k Z(kappa_k) e^{kappa_k cos_k},
    # cos from cosine_similarity of the raw projection with the updated prototypes.
    kappa = [2.0, 15.0, 40.0]
    losses = []
    for projection, label in zip(projections, labels.tolist()):
        cosines = [float(projection @ mu[k]) / float(projection.norm() * mu[k].norm()) for k in range(NUM_CLASSES)]
        weighted = [math.exp(_scipy_log_normalizer(kappa[k], 4) + kappa[k] * cosines[k]) for k in range(NUM_CLASSES)]
        losses.append(-math.log(weighted[label] / sum(weighted)))
    assert float(loss) == pytest.approx(0.7 * sum(losses) / len(losses), rel=1e-10)


def test_gradients_reach_the_concentrations_and_the_projection_head_not_the_prototypes():
    loss_module = _siren()
    features = torch.randn(12, DIM, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2] * 4)
    loss_module(features, labels)["loss_siren"].backward()
    assert loss_module.kappa_weight.grad is not None and (loss_module.kappa_weight.grad != 0).all()
    for name, parameter in loss_module.projection.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert features.grad.abs().sum() > 0
    assert not loss_module.prototypes.requires_grad
    assert set(dict(loss_module.named_parameters())) == {
        "kappa_weight", "projection.0.weight", "projection.0.bias", "projection.2.weight", "projection.2.bias"
    }


def test_concentration_gradient_matches_finite_differences():
    loss_module = _siren(kappa_init=6.0)
    features = torch.randn(10, DIM, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    loss_module.prototypes.copy_(F.normalize(torch.randn(NUM_CLASSES, 4, dtype=torch.float64), dim=1))
    start = loss_module.prototypes.clone()
    loss_module.eval()  # the prototypes stay put between the evaluations
    loss_module(features, labels)["loss_siren"].backward()
    step = 1e-6
    for k in range(NUM_CLASSES):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                loss_module.kappa_weight[k] += sign * step
                values.append(float(loss_module(features, labels)["loss_siren"]))
                loss_module.kappa_weight[k] -= sign * step
        assert float(loss_module.kappa_weight.grad[k]) == pytest.approx((values[0] - values[1]) / (2 * step), rel=1e-5)
    torch.testing.assert_close(loss_module.prototypes, start)


def test_prototypes_move_only_in_training_and_start_at_the_first_embedding():
    loss_module = _siren(momentum=0.95)
    features = torch.randn(1, DIM, dtype=torch.float64)
    loss_module(features, torch.tensor([1]))
    first = F.normalize(loss_module.projection(features), dim=1)[0].detach()
    torch.testing.assert_close(loss_module.prototypes[1], first)
    assert float(loss_module.prototypes[[0, 2]].abs().sum()) == 0.0
    loss_module.eval()
    before = loss_module.prototypes.clone()
    loss_module(torch.randn(4, DIM, dtype=torch.float64), torch.tensor([0, 1, 2, 1]))
    assert torch.equal(loss_module.prototypes, before)


def test_a_batch_without_foreground_boxes_gives_a_zero_loss_connected_to_every_parameter():
    loss_module = _siren()
    loss = loss_module(torch.zeros(0, DIM, dtype=torch.float64), torch.zeros(0, dtype=torch.long))["loss_siren"]
    assert float(loss) == 0.0
    loss.backward()
    for name, parameter in loss_module.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) == 0.0, name


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("embedding_dim", 1, "EMBEDDING_DIM must be >= 2"),
        ("kappa_init", 0.0, "KAPPA_INIT must be > 0"),
        ("momentum", 1.0, r"PROTOTYPE_MOMENTUM must be in \[0, 1\)"),
    ],
)
def test_bad_settings_name_the_key(option, value, message):
    with pytest.raises(ValueError, match=f"MODEL.EMBEDDING.SIREN.{message}"):
        _siren(**{option: value})


# --- the score ----------------------------------------------------------------------------


def test_a_box_near_a_prototype_scores_lower_than_one_far_from_all():
    prototypes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    kappa = torch.tensor([20.0, 5.0])
    near = F.normalize(torch.tensor([[0.95, 0.05, 0.0]]), dim=1)
    far = torch.tensor([[0.0, 0.0, 1.0]])
    scores = siren_ood_score(torch.cat([near, far]), prototypes, kappa)
    assert scores[0] < scores[1]
    # The negated largest class log-density.
    expected = -max(float(kappa[k] * (near[0] @ prototypes[k])) + _scipy_log_normalizer(float(kappa[k]), 3) for k in range(2))
    assert float(scores[0]) == pytest.approx(expected, rel=1e-5)


def _proposals(gt_classes):
    boxes = torch.tensor([[2.0 * i, 2.0 * i, 2.0 * i + 20, 2.0 * i + 20] for i in range(len(gt_classes))])
    instances = Instances((64, 64))
    instances.proposal_boxes = Boxes(boxes)
    instances.gt_boxes = Boxes(boxes + 1.0)
    instances.gt_classes = torch.as_tensor(gt_classes)
    return [instances]


def _predictor(*overrides):
    cfg = default_config()
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES, "MODEL.VOS.ENABLED", False, *overrides])
    torch.manual_seed(0)
    return VOSOutputLayers(cfg, ShapeSpec(channels=DIM))


def test_predictor_trains_siren_and_scores_its_detections_with_it():
    predictor = _predictor("MODEL.EMBEDDING.LOSSES", ["SIRENLoss"], "MODEL.OOD.SCORE", "siren")
    assert {"embedding_losses.0.prototypes", "embedding_losses.0.kappa_weight"} <= set(predictor.state_dict())
    gt_classes = [0, 1, 2, 3, 3, 1]  # 3 = background
    features = torch.randn(len(gt_classes), DIM)
    with EventStorage(0):
        losses = predictor.losses(predictor(features), _proposals(gt_classes))
    assert "loss_siren" in losses and torch.isfinite(losses["loss_siren"])
    # Only the 4 foreground boxes moved the prototypes.
    assert predictor.embedding_losses[0].prototypes.norm(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])

    predictor.eval()
    instances = [Instances((64, 64))]
    instances[0].pred_classes = torch.zeros(len(gt_classes), dtype=torch.long)
    with torch.no_grad():
        logits, _, box_features = predictor(features)
        predictor.add_ood_fields(instances, logits[:, :NUM_CLASSES], box_features)
        expected = predictor.embedding_losses[0].ood_scores(box_features)["siren"]
    torch.testing.assert_close(instances[0].ood_scores, expected)
    torch.testing.assert_close(instances[0].ood_scores_siren, expected)


def test_a_model_without_siren_refuses_the_score():
    with pytest.raises(ValueError, match=r"MODEL\.OOD\.SCORE='siren' is learnt during training by SIRENLoss: add it to "
                       r"MODEL\.EMBEDDING\.LOSSES \(this model has \['CenterLoss'\]\)"):
        _predictor("MODEL.EMBEDDING.LOSSES", ["CenterLoss"], "MODEL.OOD.SCORE", "siren")
    # Its other scores leave "siren" out.
    predictor = _predictor("MODEL.OOD.SCORE", "energy").eval()
    table, _ = predictor.ood_score_table(torch.randn(4, NUM_CLASSES), torch.randn(4, DIM))
    assert "siren" not in table and "energy" in table


def test_a_few_iterations_of_digits_training_learn_and_output_the_siren_score(tiny_digits_root, tmp_path, tiny_cfg, tiny_schedule):
    _, max_iter = tiny_schedule
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path, "MODEL.EMBEDDING.LOSSES", '["SIRENLoss"]', "MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "siren")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = [value for value, _ in trainer.storage.history("loss_siren").values()]
    assert len(history) == max_iter and all(math.isfinite(value) and value > 0 for value in history)
    siren = trainer.model.roi_heads.box_predictor.embedding_losses[0]
    assert torch.allclose(siren.prototypes.norm(dim=1), torch.ones(5))
    with open(tmp_path / OOD_RESULTS_FILE) as f:
        per_score = json.load(f)["results"]["ood"]["digits_det_test"]["digits_det_ood"]
    assert "siren" in per_score
    assert 0.0 <= per_score["siren"]["AUROC"] <= 100.0
