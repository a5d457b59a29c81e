"""Tests of the VOS diagnostics (vos_det/modeling/vos/diagnostics.py): each logged quantity
against a direct computation on a small box predictor, and the random-weights control."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.classification.head import VOSClassificationHead
from vos_det.modeling.vos.diagnostics import (
    mahalanobis_radius_ratio,
    prior_entropy,
    random_energy_weight_aurocs,
)
from vos_det.evaluation.records import computing_all_ood_scores

NUM_CLASSES = 3
DIM = 8
SAMPLE_NUMBER = 6
STARTING_ITER = 2
SELECT = 4
# The options of the box predictor of the new_layer fixture (tests/conftest.py).
VOS_LAYER_OPTIONS = dict(sample_number=SAMPLE_NUMBER, starting_iter=STARTING_ITER, sample_from=100, select=SELECT)


def _proposals(gt_classes, seed):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(len(gt_classes), 2, generator=generator) * 40
    boxes = torch.cat([xy, xy + 10], dim=1)
    instances = Instances((64, 64))
    instances.proposal_boxes = Boxes(boxes)
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.as_tensor(gt_classes, dtype=torch.long)
    return [instances]


def _step(layer, gt_classes, iteration, seed):
    features = torch.randn(len(gt_classes), DIM, generator=torch.Generator().manual_seed(seed)) + 1.0
    predictions = layer(features)
    with EventStorage(iteration) as storage:
        losses = layer.losses(predictions, _proposals(gt_classes, seed))
    return losses, predictions, storage


def _latest(storage):
    return {name: value for name, (value, _) in storage.latest().items()}


def _direct_radius(points, queue_rows, labels, eps):
    """min_k sqrt((x - mu_k)^T (Sigma + eps I)^-1 (x - mu_k)) / sqrt(D), all in float64."""
    queue_rows, points = queue_rows.double(), points.double()
    means = torch.stack([queue_rows[labels == k].mean(0) for k in range(NUM_CLASSES)])
    centred = queue_rows - means[labels]
    covariance = centred.T @ centred / len(queue_rows) + eps * torch.eye(DIM, dtype=torch.float64)
    precision = torch.linalg.inv(covariance)
    differences = points[:, None, :] - means[None]
    squared = torch.einsum("nkd,de,nke->nk", differences, precision, differences)
    return squared.min(dim=1).values.sqrt() / math.sqrt(DIM)


@pytest.mark.parametrize("balanced", [False, True])
def test_logged_diagnostics_match_a_direct_computation(balanced, new_layer):
    layer = new_layer(balanced_loss=balanced)
    _step(layer, list(range(NUM_CLASSES)) * SAMPLE_NUMBER, iteration=0, seed=1)
    gt = [0, 1, 2, 2, 1, 0, 0, 3, 3]  # 3 = background: not an ID sample of the loss
    losses, predictions, storage = _step(layer, gt, iteration=STARTING_ITER, seed=2)
    logged = _latest(storage)

    # The same outliers again (same queues, same per-iteration seed).
    outliers = layer.synthesize_outliers(STARTING_ITER)
    foreground = torch.tensor(gt) < NUM_CLASSES
    with torch.no_grad():
        id_logits = predictions[0][foreground, :NUM_CLASSES].double()
        outlier_logits = layer.cls_score(outliers.float())[:, :NUM_CLASSES].double()
        weights = torch.relu(layer.energy_weights).double()

        def energies(logits):  # -log sum_k w_k exp(f_k), directly
            return -torch.log((weights * logits.exp()).sum(dim=1))

        id_energy, outlier_energy = energies(id_logits), energies(outlier_logits)
        linear = layer.uncertainty_classifier
        a, b = linear.weight.double()[:, 0], linear.bias.double()
        p_id = [torch.softmax(-e[:, None] * a + b, dim=1)[:, 1] for e in (id_energy, outlier_energy)]
        ce_id, ce_out = -torch.log(p_id[0]), -torch.log(1 - p_id[1])
    num_id, num_out = len(id_energy), len(outlier_energy)
    assert num_out == NUM_CLASSES * SELECT
    if balanced:
        loss = 0.5 * (ce_id.mean() + ce_out.mean())
        entropy = math.log(2)
    else:
        loss = torch.cat([ce_id, ce_out]).mean()
        p = num_id / (num_id + num_out)
        entropy = -p * math.log(p) - (1 - p) * math.log(1 - p)
    torch.testing.assert_close(losses["loss_vos"].double(), 0.1 * loss, rtol=1e-5, atol=1e-7)

    assert logged["vos/id_energy"] == pytest.approx(float(id_energy.mean()), rel=1e-5)
    assert logged["vos/outlier_energy"] == pytest.approx(float(outlier_energy.mean()), rel=1e-5)
    assert logged["vos/id_accuracy"] == pytest.approx(float((p_id[0] > 0.5).double().mean()))
    assert logged["vos/outlier_accuracy"] == pytest.approx(float((p_id[1] < 0.5).double().mean()))
    assert logged["vos/loss_over_prior_entropy"] == pytest.approx(float(loss) / entropy, rel=1e-5)
    assert logged["vos/energy_weight_norm"] == pytest.approx(float(weights.norm()), rel=1e-6)
    assert logged["vos/energy_weight_std"] == pytest.approx(float(np.std(weights.numpy())), rel=1e-5)

    queue_rows = layer.feature_queues.features.flatten(0, 1)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(SAMPLE_NUMBER)
    expected_outlier = _direct_radius(outliers, queue_rows, labels, layer.covariance_eps).mean()
    expected_id = _direct_radius(queue_rows, queue_rows, labels, layer.covariance_eps).mean()
    assert logged["vos/outlier_radius_ratio"] == pytest.approx(float(expected_outlier), rel=1e-4)
    assert logged["vos/id_radius_ratio"] == pytest.approx(float(expected_id), rel=1e-4)


def test_no_diagnostics_before_synthesis(new_layer):
    layer = new_layer()
    _, _, storage = _step(layer, [0, 1, 2], iteration=0, seed=1)
    logged = _latest(storage)
    assert logged["vos/synthesis_active"] == 0.0
    assert not any(name in logged for name in ("vos/id_accuracy", "vos/outlier_radius_ratio"))


def test_classification_head_logs_the_same_diagnostics():
    torch.manual_seed(0)
    head = VOSClassificationHead(DIM, num_classes=NUM_CLASSES, sample_number=2, starting_iter=1, sample_from=50)
    features = torch.randn(6, DIM) + 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with EventStorage(0):
        head.losses(head(features), features, labels)
    with EventStorage(1) as storage:
        head.losses(head(features), features, labels)
    logged = _latest(storage)
    for name in ("id_energy", "outlier_energy", "id_accuracy", "outlier_accuracy", "loss_over_prior_entropy",
                 "outlier_radius_ratio", "id_radius_ratio", "energy_weight_norm", "energy_weight_std"):
        assert math.isfinite(logged[f"vos/{name}"]), name


def test_prior_entropy():
    assert prior_entropy(120, 5) == pytest.approx(-(120 / 125) * math.log(120 / 125) - (5 / 125) * math.log(5 / 125))
    assert prior_entropy(120, 5, balanced=True) == pytest.approx(math.log(2))
    assert prior_entropy(0, 5) == 0.0 and prior_entropy(4, 0) == 0.0


def test_radius_ratio_of_gaussian_samples_is_about_one():
    generator = torch.Generator().manual_seed(0)
    dim = 64
    factor = torch.linalg.cholesky(torch.eye(dim) + 0.5 * torch.ones(dim, dim)).double()
    means = torch.zeros(1, dim, dtype=torch.float64)
    samples = torch.randn(4000, dim, generator=generator, dtype=torch.float64) @ factor.T
    ratio = mahalanobis_radius_ratio(samples, means, factor)
    assert float(ratio.pow(2).mean()) == pytest.approx(1.0, abs=0.01)  # E ||z||^2 = D


def test_random_energy_weight_aurocs_match_sklearn():
    generator = torch.Generator().manual_seed(3)
    id_logits = torch.randn(40, 4, generator=generator) + 2
    ood_logits = torch.randn(30, 4, generator=generator)
    aurocs = random_energy_weight_aurocs(id_logits, ood_logits, num_draws=5, seed=11)
    weights = torch.rand(5, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    labels = np.r_[np.zeros(40), np.ones(30)]
    for auroc, w in zip(aurocs, weights):
        energies = -torch.log((w * torch.cat([id_logits, ood_logits]).double().exp()).sum(dim=1))
        assert auroc == pytest.approx(roc_auc_score(labels, energies.numpy()))


# --- offline diagnostics (tools/vos_diagnostics.py) -------------------------------------------


def _trained_head():
    torch.manual_seed(0)
    head = VOSClassificationHead(DIM, num_classes=NUM_CLASSES, sample_number=4, starting_iter=1, sample_from=50)
    features = torch.randn(12, DIM) + 1
    labels = torch.arange(NUM_CLASSES).repeat(4)
    with EventStorage(0):
        head.losses(head(features), features, labels)
    return head


def test_virtual_outlier_logits_are_the_model_outliers():
    from vos_det.modeling.vos.uncertainty_report import virtual_outlier_logits

    head = _trained_head()
    logits, queue_logits, radii = virtual_outlier_logits(head, num_steps=3)
    expected = torch.cat([head.synthesize_outliers(step) for step in range(3)]).float()
    torch.testing.assert_close(logits, head.cls_score(expected).detach())
    torch.testing.assert_close(queue_logits, head.cls_score(head.feature_queues.features.flatten(0, 1)).detach())
    assert radii.shape == (2,) and bool((radii > 0).all())


def test_uncertainty_report_matches_a_direct_computation():
    from vos_det.modeling.vos.uncertainty_report import uncertainty_report

    head = _trained_head()
    generator = torch.Generator().manual_seed(1)
    id_logits = torch.randn(30, NUM_CLASSES, generator=generator) + 1.5
    ood_logits = torch.randn(20, NUM_CLASSES, generator=generator)
    report = uncertainty_report(head, {"id": id_logits, "ood": ood_logits}, id_set="id", ood_set="ood", num_draws=20)
    w = torch.relu(head.energy_weights).detach().double()
    energies = {n: -torch.log((w * x.double().exp()).sum(1)) for n, x in (("id", id_logits), ("ood", ood_logits))}
    labels = np.r_[np.zeros(30), np.ones(20)]
    trained = 100 * roc_auc_score(labels, torch.cat([energies["id"], energies["ood"]]).numpy())
    assert report["auroc_trained_weights"] == pytest.approx(trained)
    random = np.array(report["random_aurocs"])
    assert report["fraction_random_beaten"] == pytest.approx(float(np.mean(random < trained)))
    assert report["sets"]["id"]["weighted_energy"]["mean"] == pytest.approx(float(energies["id"].mean()), rel=1e-5)
    a, b = head.uncertainty_classifier.weight.detach()[:, 0].double(), head.uncertainty_classifier.bias.detach().double()
    p_id = torch.softmax(-energies["ood"][:, None] * a + b, dim=1)[:, 1]
    assert report["sets"]["ood"]["fraction_called_id"] == pytest.approx(float((p_id > 0.5).double().mean()))


def test_detection_logits_are_those_of_the_output_boxes():
    from detectron2.modeling import build_model

    from vos_det.config import load_config
    from vos_det.modeling.vos.uncertainty_report import detection_logits

    cfg = load_config("digits_vos_tiny.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 255, (3, 128, 128), generator=generator, dtype=torch.uint8),
               "height": 128, "width": 128} for _ in range(2)]
    with torch.no_grad(), computing_all_ood_scores(model):
        instances = [output["instances"] for output in model(inputs)]
    threshold = 0.1
    logits = detection_logits(model, [inputs], threshold)
    expected = torch.cat([i.ood_scores_energy[i.scores >= threshold] for i in instances])
    assert len(expected) > 0
    torch.testing.assert_close(-torch.logsumexp(logits, dim=1), expected)


def test_synthesis_rule_energies_use_the_model_classifier():
    from vos_det.modeling.vos.uncertainty_report import SYNTHESIS_RULES, synthesis_rule_energies

    head = _trained_head()
    head.synthesize_outliers(0)
    head.npos_k, head.npos_boundary = 3, 5
    table = synthesis_rule_energies(head, num_outliers=30)
    assert set(table) == {"queued ID features", *SYNTHESIS_RULES}
    queued = head.feature_queues.features.flatten(0, 1)
    w = torch.relu(head.energy_weights).detach().double()
    expected = -torch.log((w * head.cls_score(queued).detach().double().exp()).sum(1))
    assert table["queued ID features"]["energy_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert table["queued ID features"]["fraction_above_id_median"] == pytest.approx(
        float((expected > expected.median()).double().mean()))
    # Larger radius scale: outliers farther out.
    assert table["OUTLIER_RADIUS_SCALE 4"]["radius_ratio"] > 1.5 * table["OUTLIER_RADIUS_SCALE 2"]["radius_ratio"]


def test_diagnose_checkpoint_end_to_end(tiny_digits_root, tiny_cfg, tmp_path):
    """tools/vos_diagnostics.py's library call on a few-iteration model with full queues."""
    import json

    from vos_det.config import load_config
    from vos_det.engine import Trainer
    from vos_det.engine.checkpoint_diagnostics import DIAGNOSTICS_FILE, diagnose_checkpoint, format_diagnostics

    torch.manual_seed(0)
    trainer = Trainer(tiny_cfg(tmp_path / "train", "TEST.OOD.CALIBRATION_DATASET", "", "DATASETS.TEST", "()"))
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = str(tmp_path / "train" / "model_final.pth")
    # The synthesis-rule table draws NPOS outliers from the 20 queued features: fewer boundary ones.
    cfg = tiny_cfg(
        tmp_path / "train", "MODEL.WEIGHTS", weights, "MODEL.VOS.NPOS.BOUNDARY", "5", "MODEL.VOS.NPOS.K", "3"
    )
    cfg.freeze()

    report = diagnose_checkpoint(
        cfg, id_dataset="digits_det_val", ood_dataset="digits_det_ood", output_dir=str(tmp_path / "out"),
        num_draws=10, synthesis_steps=2, score_threshold=0.0,
    )

    assert set(report["sets"]) == {
        "ID boxes (digits_det_val)", "OOD boxes (digits_det_ood)", "queued ID training features", "virtual outliers",
    }
    assert len(report["random_aurocs"]) == 10
    assert report["fraction_random_beaten"] == pytest.approx(
        float(np.mean(np.array(report["random_aurocs"]) < report["auroc_trained_weights"])))
    assert report["selection"] == "detections with class score >= 0.0" and report["weights"] == weights
    assert json.loads((tmp_path / "out" / DIAGNOSTICS_FILE).read_text()) == json.loads(json.dumps(report))
    for name in ("energy_histogram.png", "random_weights_control.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
    text = format_diagnostics(report)
    assert "trained beats" in text and "virtual outliers" in text
