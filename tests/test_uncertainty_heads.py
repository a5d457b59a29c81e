"""The uncertainty heads (MODEL.VOS.UNCERTAINTY_HEAD) and the release's score "vos_release".

"mlp" is the released main-MLP branch's head (roihead_gmm.py:533-537 there): its loss must be
``binary_cross_entropy_with_logits`` of the MLP's output on the weighted energy (ID label 1),
and its score the MLP's sigmoid on the UNWEIGHTED logsumexp (rcnn_predictor.py:135-136),
negated. Both are compared with direct re-implementations of the release's formulas.
"""
import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.config import load_config
from vos_det.modeling.output_layers import VOSOutputLayers
from vos_det.modeling.vos import MLPUncertaintyHead, build_uncertainty_head
from vos_det.errors import ConfigError

NUM_CLASSES = 4
DIM = 6
SAMPLE_NUMBER = 3
STARTING_ITER = 1


def _layer(head="mlp", **options):
    torch.manual_seed(0)
    return VOSOutputLayers(
        ShapeSpec(channels=DIM),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=NUM_CLASSES,
        sample_number=SAMPLE_NUMBER,
        starting_iter=STARTING_ITER,
        sample_from=40,
        select=1,
        uncertainty_head=head,
        **options,
    )


def _proposals(gt_classes, seed):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(len(gt_classes), 2, generator=generator) * 30
    boxes = torch.cat([xy, xy + 4 + torch.rand(len(gt_classes), 2, generator=generator) * 20], dim=1)
    instances = Instances((64, 64))
    instances.proposal_boxes = Boxes(boxes)
    instances.gt_boxes = Boxes(boxes + 1)
    instances.gt_classes = torch.as_tensor(gt_classes, dtype=torch.long)
    return [instances]


def _release_mlp(head, x):
    """The release's Sequential(Linear(1, 512), ReLU(), Linear(512, 1)), from its weights."""
    hidden = torch.relu(x @ head[0].weight.t() + head[0].bias)
    return hidden @ head[2].weight.t() + head[2].bias


def test_mlp_head_has_the_release_shapes_and_names():
    head = build_uncertainty_head("mlp")
    shapes = {name: tuple(value.shape) for name, value in head.state_dict().items()}
    assert shapes == {"0.weight": (512, 1), "0.bias": (512,), "2.weight": (1, 512), "2.bias": (1,)}
    assert isinstance(build_uncertainty_head("logistic"), torch.nn.Linear)
    with pytest.raises(ValueError, match="UNCERTAINTY_HEAD"):
        build_uncertainty_head("svm")


def test_mlp_loss_is_the_release_binary_cross_entropy(monkeypatch):
    layer = _layer("mlp", vos_loss_weight=0.1)
    with torch.no_grad():
        layer.energy_weights.copy_(torch.tensor([0.5, -0.3, 1.2, 0.8]))
    gt = list(range(NUM_CLASSES)) * SAMPLE_NUMBER
    with EventStorage(0):
        layer.losses(layer(torch.randn(len(gt), DIM)), _proposals(gt, 1))
    outliers = torch.randn(NUM_CLASSES, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(layer, "synthesize_outliers", lambda iteration: outliers)
    gt = [0, 4, 2, 3, 1, 4, 2]
    features = torch.randn(len(gt), DIM, generator=torch.Generator().manual_seed(3))
    predictions = layer(features)
    with EventStorage(STARTING_ITER):
        losses = layer.losses(predictions, _proposals(gt, 4))

    # The release (roihead_gmm.py:735-745, :866-876 of main-MLP): relu(weight_energy.weight)
    # inside a max-shifted logsumexp of the foreground logits, the MLP, BCE with logits.
    def release_log_sum_exp(logits):
        m = logits.max(dim=1, keepdim=True).values
        return m.squeeze(1) + torch.log((torch.relu(layer.energy_weights) * torch.exp(logits - m)).sum(dim=1))

    with torch.no_grad():
        foreground = torch.tensor(gt) < NUM_CLASSES
        fg_logits = predictions[0][foreground][:, :-1]
        ood_logits = layer.cls_score(outliers.float())[:, :-1]
        inputs = torch.cat([release_log_sum_exp(fg_logits), release_log_sum_exp(ood_logits)])
        labels = torch.cat([torch.ones(int(foreground.sum())), torch.zeros(len(outliers))])
        expected = 0.1 * F.binary_cross_entropy_with_logits(
            _release_mlp(layer.uncertainty_classifier, inputs.view(-1, 1)).view(-1), labels
        )
    torch.testing.assert_close(losses["loss_vos"], expected, rtol=1e-5, atol=1e-7)
    losses["loss_vos"].backward()
    for name, parameter in layer.uncertainty_classifier.named_parameters():
        assert torch.count_nonzero(parameter.grad) > 0, name
    assert torch.count_nonzero(layer.energy_weights.grad) > 0


@pytest.mark.parametrize("head", ["mlp", "logistic"])
def test_vos_release_score_is_the_head_on_the_unweighted_energy(head):
    layer = _layer(head)
    with torch.no_grad():
        layer.energy_weights.copy_(torch.tensor([0.1, 2.0, 0.0, 0.7]))
        if head == "mlp":
            layer.uncertainty_classifier[2].weight.mul_(40.0)  # some outputs saturate the sigmoid
    logits = torch.randn(50, NUM_CLASSES, generator=torch.Generator().manual_seed(5)) * 4
    with torch.no_grad():
        table, _ = layer.ood_score_table(logits)
        plain = torch.logsumexp(logits, dim=1).reshape(-1, 1)
        if head == "mlp":
            # rcnn_predictor.py:135-136 of main-MLP, and voc_coco_plot.py's id_score negation.
            expected = -_release_mlp(layer.uncertainty_classifier, plain).sigmoid().reshape(-1)
        else:
            expected = -torch.softmax(plain @ layer.uncertainty_classifier.weight.t() + layer.uncertainty_classifier.bias, 1)[:, 1]
        weighted = torch.log((torch.relu(layer.energy_weights) * torch.exp(logits)).sum(dim=1)).reshape(-1, 1)
    torch.testing.assert_close(table["vos_release"], expected, rtol=1e-6, atol=1e-7)
    # Rank ties of the release (float32 sigmoid saturating at 1) are kept: same ordering.
    if head == "mlp":
        assert torch.equal(table["vos_release"] == -1.0, expected == -1.0)
        assert int((expected == -1.0).sum()) > 0
    # Not the weighted energy's score (the "vos" score's input).
    assert not torch.allclose(table["vos_release"], -torch.softmax(layer.uncertainty_classifier(weighted), 1)[:, 1])
    # "vos" with the MLP head is p(outlier) of the weighted energy = sigmoid(-z).
    if head == "mlp":
        torch.testing.assert_close(
            table["vos"], torch.sigmoid(-_release_mlp(layer.uncertainty_classifier, weighted)).reshape(-1)
        )


def test_checkpoints_of_the_logistic_head_still_load_into_the_default():
    state = _layer("logistic").state_dict()
    assert "uncertainty_classifier.weight" in state and "uncertainty_classifier.0.weight" not in state
    fresh = VOSOutputLayers(
        ShapeSpec(channels=DIM), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=NUM_CLASSES,
        sample_number=SAMPLE_NUMBER,
    )
    fresh.load_state_dict(state)
    assert isinstance(fresh.uncertainty_classifier, torch.nn.Linear)
    mlp_state = _layer("mlp").state_dict()
    assert {k for k in mlp_state if k.startswith("uncertainty_classifier.")} == {
        f"uncertainty_classifier.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    assert isinstance(_layer("mlp").uncertainty_classifier, MLPUncertaintyHead)


def test_config_key_is_checked():
    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.VOS.UNCERTAINTY_HEAD", "mlp", "MODEL.OOD.SCORE", "vos_release"])
    assert cfg.MODEL.VOS.UNCERTAINTY_HEAD == "mlp"
    with pytest.raises(ConfigError, match="MODEL.VOS.UNCERTAINTY_HEAD"):
        load_config("digits_vos_tiny.yaml", ["MODEL.VOS.UNCERTAINTY_HEAD", "svm"])
    with pytest.raises(ConfigError, match="vos_release"):
        load_config("digits_vanilla_tiny.yaml", ["MODEL.OOD.SCORE", "vos_release"])
