"""The CUDA path checked on a CPU-only machine: every tensor of a step on one device, no host
conversion of device tensors, full precision under autocast, and few host-device syncs.

The helpers of tests/device_checks.py stand in for the GPU: ``fake_cuda`` (FakeTensorMode,
whose "cuda" tensors refuse to meet CPU tensors and any read of their values),
``SimulatedDeviceTensor`` (real values that refuse ``.numpy()`` and host tensors) and
``HostSyncCounter``. Each test names the fault it guards against; each failed before its fix.
"""
import copy
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from device_checks import HostSyncCounter, devices_of, fake_cuda, on_simulated_device
from test_ood_scores import _fit_data, _queries
from vos_det.engine.post_hoc_fitting import choose_knn_k
from vos_det.modeling.ood_scores import build_post_hoc_scores
from vos_det.modeling.ood_scores.knn import kth_neighbour_distance
from vos_det.modeling.ood_scores.mahalanobis import GaussianDiscriminant
from vos_det.modeling.output_layers import VOSOutputLayers
from vos_det.modeling.vos import energy_logistic_loss
from vos_det.modeling.vos.feature_queues import ClassFeatureQueues
from vos_det.modeling.vos.npos import npos_outliers
from vos_det.modeling.vos.vos_diagnostics import random_energy_weight_aurocs

aten = torch.ops.aten

# The scores fitted on host data by tools/fit_ood_scores.py whose fit has no data-dependent
# branch (FakeTensorMode runs it); every fitted score's state file is loaded below.
FIT_ON_DEVICE = ("vim", "knn", "react")
FITTED = ("vim", "knn", "react", "mahalanobis_multilayer", "safe")


def _score(name):
    score = build_post_hoc_scores()[name]
    if name == "mahalanobis_multilayer":
        score.in_features = ("p2", "p3")
    return score


def _score_inputs(data, device):
    features, logits, layers = _queries(data)
    weight = data.classifier_weight.to(device)
    bias = data.classifier_bias.to(device)
    return dict(
        features=features.to(device),
        logits=logits.to(device),
        layer_features={name: value.to(device) for name, value in layers.items()},
        logits_of=lambda x: x @ weight.T + bias,
    )


# --- 1. crashes: state on the model's device ------------------------------------------------


def test_mahalanobis_statistics_of_a_checkpoint_load_onto_the_models_device():
    """A checkpoint (loaded onto the CPU) with fitted statistics, into a CUDA model: the
    class-count-sized buffers were re-created on the CPU, and scoring failed."""
    fitted = GaussianDiscriminant(4).fit(torch.randn(30, 4), torch.arange(30) % 3, 3)
    state = fitted.state_dict()
    with fake_cuda():
        model = GaussianDiscriminant(4).to("cuda")
        model.load_state_dict(state)
        assert devices_of(model) == {"cuda"}
        assert model.ood_scores(torch.randn(5, 4, device="cuda")).device.type == "cuda"


@pytest.mark.parametrize("name", FIT_ON_DEVICE)
def test_a_score_fitted_on_host_data_keeps_its_state_on_the_models_device(name):
    """set_fitted registered the state on the device of the fit data (the host), not of
    the model holding the scorer (bench_inference --device cuda failed in ViM)."""
    data = _fit_data()
    with fake_cuda():
        score = _score(name).to("cuda")
        score.fit(data)
        assert devices_of(score) == {"cuda"}
        assert score(**_score_inputs(data, "cuda")).device.type == "cuda"


@pytest.mark.parametrize("name", FITTED)
def test_a_state_file_loads_onto_the_models_device(name):
    """The fitted state (read onto the CPU) into a CUDA model, submodules (Gaussians, the
    SAFE MLP) included: they were built on the CPU by after_load."""
    data = _fit_data()
    state = _score(name).fit(data).fitted_state()
    with fake_cuda():
        score = _score(name).to("cuda")
        score.load_fitted_state(state)
        assert devices_of(score) == {"cuda"}
        assert score(**_score_inputs(data, "cuda")).device.type == "cuda"


def test_multilayer_mahalanobis_builds_its_gaussians_on_its_device():
    """fit() built the Gaussians on the CPU, so CUDA features were moved to the CPU."""
    score = _score("mahalanobis_multilayer").to("meta")
    score.fitted_config = {"in_features": ["p2"], "include_box_features": False, "feature_dim": 6}
    score.after_load()
    assert devices_of(score.gaussians) == {"meta"}


# --- 1. crashes: host code given device tensors ---------------------------------------------


class _RecordsMoves(torch.nn.Linear):
    """A Linear that records being moved (``.cpu()``, ``.to()``) in place."""

    moved = False

    def _apply(self, fn, recurse=True):
        self.moved = True
        return super()._apply(fn, recurse)


def _head_with_recorded_classifier():
    from vos_det.classification.head import VOSClassificationHead

    torch.manual_seed(0)
    head = VOSClassificationHead(8, num_classes=3, sample_number=4, starting_iter=1, sample_from=50)
    recorded = _RecordsMoves(1, 2)
    recorded.load_state_dict(head.uncertainty_classifier.state_dict())
    head.uncertainty_classifier = recorded
    return head


def test_uncertainty_report_leaves_the_live_head_where_it_is():
    """uncertainty_report moved the live model's uncertainty classifier to the CPU in place."""
    from vos_det.evaluation.uncertainty_diagnostics import uncertainty_report

    head = _head_with_recorded_classifier()
    generator = torch.Generator().manual_seed(0)
    logits = {
        "id": on_simulated_device(torch.randn(20, 3, generator=generator) + 1),
        "ood": on_simulated_device(torch.randn(15, 3, generator=generator)),
    }
    report = uncertainty_report(head, logits, id_set="id", ood_set="ood", num_draws=5)
    assert not head.uncertainty_classifier.moved
    assert 0.0 <= report["auroc_trained_weights"] <= 100.0


def test_random_energy_weight_control_takes_device_logits():
    """random_energy_weight_aurocs mixed device logits with its host weights and called
    .numpy() on device tensors."""
    generator = torch.Generator().manual_seed(0)
    id_logits, ood_logits = torch.randn(20, 3, generator=generator) + 1, torch.randn(15, 3, generator=generator)
    expected = random_energy_weight_aurocs(id_logits, ood_logits, 4)
    actual = random_energy_weight_aurocs(on_simulated_device(id_logits), on_simulated_device(ood_logits), 4)
    np.testing.assert_array_equal(actual, expected)


def test_choose_knn_k_takes_device_features_and_computes_the_similarities_once(monkeypatch):
    """choose_knn_k called .numpy() on device tensors, and recomputed the whole similarity
    matrix for every candidate k."""
    from vos_det.engine import post_hoc_fitting

    generator = torch.Generator().manual_seed(0)
    train, id_val = torch.randn(60, 6, generator=generator), torch.randn(20, 6, generator=generator)
    ood_val = torch.randn(25, 6, generator=generator) * 3
    candidates = (1, 3, 10, 100)
    calls = []
    original = post_hoc_fitting.nearest_similarities
    monkeypatch.setattr(
        post_hoc_fitting, "nearest_similarities", lambda *args, **kwargs: calls.append(args[2]) or original(*args, **kwargs)
    )
    k, results = choose_knn_k(*(on_simulated_device(x) for x in (train, id_val, ood_val)), candidates=candidates)
    assert calls == [10, 10]  # one top-k per query set, with the largest k that fits
    bank = F.normalize(train, dim=1)
    for k_tried in (1, 3, 10):
        id_scores = kth_neighbour_distance(F.normalize(id_val, dim=1), bank, k_tried).numpy()
        ood_scores = kth_neighbour_distance(F.normalize(ood_val, dim=1), bank, k_tried).numpy()
        from vos_det.evaluation.ood_metrics import auroc, fpr_at_tpr

        assert results[k_tried] == {"fpr95": fpr_at_tpr(id_scores, ood_scores), "auroc": auroc(id_scores, ood_scores)}
    assert sorted(results) == [1, 3, 10] and k in results


# --- 1. the VOS training step on "cuda" -------------------------------------------------------


class _RandomDrawDevices(TorchDispatchMode):
    """Records the device of every random draw."""

    DRAWS = {aten.randint.low, aten.randint.default, aten.randn.default, aten.randn.generator, aten.normal_.default,
             aten.random_.default, aten.uniform_.default, aten.exponential_.default}

    def __init__(self):
        super().__init__()
        self.devices = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.DRAWS:
            self.devices.append(out.device.type)
        return out


def test_the_vos_step_after_its_two_reads_runs_on_the_device_without_reading_it():
    """Enqueue (with the running Gaussian statistics), the class Gaussians, NPOS outliers and
    the uncertainty loss on "cuda" under FakeTensorMode, which refuses any read of a device
    value and any CPU tensor meeting a CUDA one: NPOS drew its 10^4-10^7 random values on
    the CPU and copied them over."""
    num_classes, dim = 3, 6
    queues = ClassFeatureQueues(num_classes, 8, dim)
    queues.enqueue(torch.randn(30, dim), torch.arange(30) % num_classes)
    queues.gaussian()  # the host now knows the queues are full and the statistics valid
    classifier, weights = torch.nn.Linear(1, 2), torch.rand(num_classes)
    with fake_cuda():
        queues, classifier, weights = queues.to("cuda"), classifier.to("cuda"), weights.to("cuda")
        queues.enqueue(torch.randn(9, dim, device="cuda"), torch.arange(9, device="cuda") % num_classes)
        means, covariance = queues.gaussian()
        with _RandomDrawDevices() as draws:
            outliers = npos_outliers(
                queues.features.flatten(0, 1), 3, k=2, num_boundary=4, num_candidates=50, noise_scale=0.5
            )
        assert draws.devices and set(draws.devices) == {"cuda"}
        scalars = {}
        loss = energy_logistic_loss(
            torch.randn(7, num_classes, device="cuda"), outliers[:, :num_classes], weights, classifier, None,
            scalars=scalars,
        )
        assert {means.device.type, covariance.device.type, outliers.device.type, loss.device.type} == {"cuda"}
        assert {value.device.type for value in scalars.values()} == {"cuda"}


# --- 1. export: the device of the trace -------------------------------------------------------


def test_export_records_its_device_and_refuses_another(tmp_path):
    """The trace bakes in its device and nothing said which: a CPU export loaded onto a GPU
    failed (or ran) far from the cause."""
    from detectron2.modeling import build_model

    from vos_det.config import load_config
    from vos_det.export import export_torchscript, load_exported, load_metadata

    torch.manual_seed(0)
    model = build_model(load_config("digits_vos_tiny.yaml", ["MODEL.DEVICE", "cpu"])).eval()
    path = str(tmp_path / "model.ts")
    image = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(0)).float()
    assert export_torchscript(model, image, path)["device"] == "cpu"
    assert load_metadata(path)["device"] == "cpu"
    assert load_exported(path) is not None and load_exported(path, "cpu") is not None
    with pytest.raises(ValueError, match=r"traced on cpu and runs only there.*not on cuda:0"):
        load_exported(path, "cuda")


# --- 2. mixed precision -----------------------------------------------------------------------

NUM_CLASSES, DIM = 5, 16
# Under autocast only the ID logits (the model's class layer) are bfloat16, each within
# 2^-9 (relative) of float32's; the loss, a mean of float32 cross-entropies of energies of
# those logits, moved by 9e-6 (relative) here. With the energies, the outliers' logits and
# the logistic regression in bfloat16 (before), it moved by 3e-4 (Gaussian) and 4e-4 (NPOS).
BF16_LOSS_RTOL = 1e-4


def _step_inputs(iteration):
    generator = torch.Generator().manual_seed(iteration)
    features = torch.randn(64, DIM, generator=generator) + 1.0
    xy = torch.rand(64, 2, generator=generator) * 40
    instances = Instances((64, 64))
    instances.proposal_boxes = Boxes(torch.cat([xy, xy + 10], dim=1))
    instances.gt_boxes = Boxes(torch.cat([xy, xy + 12], dim=1))
    gt_classes = torch.randint(0, NUM_CLASSES + 1, (64,), generator=generator)
    gt_classes[:NUM_CLASSES] = torch.arange(NUM_CLASSES)
    instances.gt_classes = gt_classes
    return features, [instances]


def _layer_ready_to_synthesise(synthesis):
    """A box predictor whose queues are full, at the iteration where synthesis runs."""
    torch.manual_seed(0)
    layer = VOSOutputLayers(
        ShapeSpec(channels=DIM), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=NUM_CLASSES, sample_number=6, starting_iter=3, sample_from=400, select=2,
        outlier_synthesis=synthesis, npos_k=3, npos_boundary=10,
    )
    with EventStorage(0) as storage:
        for iteration in range(3):
            storage.iter = iteration
            features, proposals = _step_inputs(iteration)
            layer.losses(layer(features), proposals)
    return layer


def _vos_step(layer, autocast):
    outliers = []
    synthesize = layer.synthesize_outliers
    layer.synthesize_outliers = lambda iteration: outliers.append(synthesize(iteration)) or outliers[-1]
    features, proposals = _step_inputs(3)
    with EventStorage(3), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = layer.losses(layer(features), proposals)
    return losses["loss_vos"], outliers[0]


@pytest.mark.parametrize("synthesis", ["gaussian", "npos"])
def test_a_bfloat16_autocast_step_gives_the_float32_outliers_and_loss(synthesis):
    """Under autocast, NPOS ranked bfloat16 similarities (other outliers), and the outliers'
    logits, the energies and the logistic regression were bfloat16."""
    layer = _layer_ready_to_synthesise(synthesis)
    loss, outliers = _vos_step(copy.deepcopy(layer), autocast=False)
    mixed_loss, mixed_outliers = _vos_step(layer, autocast=True)
    assert torch.equal(mixed_outliers, outliers)
    assert mixed_loss.dtype == torch.float32
    torch.testing.assert_close(mixed_loss, loss, rtol=BF16_LOSS_RTOL, atol=0.0)


def test_inference_scores_under_autocast_are_the_float32_scores():
    """ood_score_table ran the uncertainty classifier (and the post-hoc scores) in bfloat16."""
    layer = _layer_ready_to_synthesise("gaussian").eval()
    logits = torch.randn(40, NUM_CLASSES, generator=torch.Generator().manual_seed(5)) * 3
    table, id_scores = layer.ood_score_table(logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_table, mixed_id_scores = layer.ood_score_table(logits)
    assert torch.equal(mixed_id_scores, id_scores)
    for name, values in table.items():
        assert mixed_table[name].dtype == torch.float32 and torch.equal(mixed_table[name], values), name


# --- 3. host-device synchronisations ----------------------------------------------------------

# Device syncs of one VOS training step once synthesis runs, vos_det's code only
# (detectron2's Fast R-CNN losses add their own): the foreground rows (one nonzero), the
# Cholesky factorisation's success (with the covariance's finiteness), and the step's
# logged scalars (one transfer). Before: 32 with the Gaussian synthesis.
SYNC_BUDGET = 3
# Runs on host tensors by construction (the chi-square radii are drawn with a CPU
# generator and solved on the CPU, then copied without waiting): no device sync on a GPU.
HOST_ONLY = ("chi2_isf_log",)


@pytest.mark.parametrize("synthesis", ["gaussian", "npos"])
def test_a_vos_training_step_syncs_with_the_device_at_most_three_times(synthesis):
    layer = _layer_ready_to_synthesise(synthesis)
    # The first synthesis step also reads, once, that the queues are full and the queued
    # features' class counts (for the exact Gaussian statistics, again every
    # COVARIANCE_RECOMPUTE_PERIOD steps): the budget is that of the steps after it.
    _vos_step(layer, autocast=False)
    features, proposals = _step_inputs(4)
    predictions = layer(features)
    with EventStorage(4), HostSyncCounter() as counter:
        losses = layer.losses(predictions, proposals)
    assert float(losses["loss_vos"]) > 0  # synthesis ran
    syncs = counter.in_package(exclude_functions=HOST_ONLY)
    assert len(syncs) <= SYNC_BUDGET, syncs
