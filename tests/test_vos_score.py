"""The `vos` score, p(outlier | box), stays strictly ordered when the energies are large."""
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from vos_det.modeling import VOSOutputLayers

NUM_CLASSES = 3


def _predictor():
    predictor = VOSOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=NUM_CLASSES,
        sample_number=4,
    )
    with torch.no_grad():
        predictor.energy_weights.fill_(1.0)  # weighted energy = plain energy
        # Logistic regression: ID logit = -E, outlier logit = 0, so p(outlier) = sigmoid(E).
        predictor.uncertainty_classifier.weight.copy_(torch.tensor([[0.0], [1.0]]))
        predictor.uncertainty_classifier.bias.zero_()
    return predictor.eval()


def test_vos_score_is_strictly_ordered_for_large_energies():
    # Logit gaps from 5 to 85: 1 - p(ID) in float32 is exactly 0 beyond ~16.7.
    levels = torch.arange(5.0, 85.0, 2.5)
    logits = levels[:, None].repeat(1, NUM_CLASSES)
    table, id_scores = _predictor().ood_score_table(logits)
    scores = table["vos"]
    energies = table["weighted_energy"]
    assert torch.all(energies[1:] < energies[:-1])
    # More negative energy = more ID = strictly smaller outlier probability, never 0.
    assert torch.all(scores[1:] < scores[:-1]) and torch.all(scores > 0)
    expected = torch.sigmoid(energies.double())
    assert torch.allclose(scores.double(), expected, rtol=1e-5, atol=0.0)
    assert torch.allclose(scores + id_scores, torch.ones_like(scores))
    # What the former 1 - p(ID) gave: ties at 0 from a gap of ~17 on.
    assert (1.0 - id_scores == 0).sum() > len(levels) // 2
