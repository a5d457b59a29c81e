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
from vos_det.modeling.vos.diagnostics import random_energy_weight_aurocs

aten = torch.ops.aten

# The scores fitted on host data by tools/fit_ood_scores.py whose fit has no data-dependent
# branch (FakeTensorMode runs it); every fitted score's state file is loaded below.
# ReAct is left out here: its fit keeps the activations above their minimum (a shape that
# depends on the data, which a fake tensor cannot take); its fitted state's device is checked
# by the state-file test below.
FIT_ON_DEVICE = ("vim", "knn")
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


@pytest.mark.parametrize("name", [name for name in FITTED if name != "safe"])
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


def _safe_fit_data(num_boxes=40, dim=6):
    from vos_det.modeling.ood_scores.safe import SAFEFitData

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(num_boxes, dim, generator=g)
    return SAFEFitData(
        layers=("backbone.bottom_up.res3.0.shortcut",), clean=clean,
        perturbed={8.0: clean + 0.5 * torch.randn(num_boxes, dim, generator=g)},
        image_index=torch.arange(num_boxes) // 4,
    )


def test_safe_loaded_from_its_state_scores_on_the_models_device():
    """SAFE's MLP, rebuilt from a state file (read onto the CPU), follows the model's device.
    (Its fit splits and batches boxes by image, data-dependent shapes that fake tensors
    cannot take: the fit path moves the trained MLP to :attr:`device` by reading.)"""
    data = _safe_fit_data()
    score = _score("safe")
    score.epochs = 1
    state = score.fit(data, 8.0).fitted_state()
    with fake_cuda():
        loaded = _score("safe").to("cuda").load_fitted_state(state)
        assert devices_of(loaded) == {"cuda"}
        assert loaded.score_features(torch.randn(3, 6, device="cuda")).device.type == "cuda"
