"""Fixtures shared by the tests: a tiny digits-det, the tiny detector's config, random weights.

Test modules import no other test module: what several of them need is a fixture here.
detectron2's dataset catalogs are global, so every fixture that registers a dataset restores
the default registration when it ends.
"""
import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform

from vos_det.config import load_config
from vos_det.data import generate_digits_det
from vos_det.data.builtin import register_all_digits_det
from vos_det.modeling.output_layers import VOSOutputLayers

# benchmarks/ holds scripts, not a package: its modules import each other by their bare names.
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS_DIR))

# Every dataset register_all_digits_det registers.
DIGITS_DET_NAMES = (
    "digits_det_train",
    "digits_det_val",
    "digits_det_test",
    "digits_det_ood",
    "digits_det_far_ood",
    "digits_det_shifted_test",
    "digits_det_ood_val",
    "digits_det_far_ood_matched",
)
# The schedule of the tiny config: synthesis from iteration TINY_STARTING_ITER of TINY_MAX_ITER.
TINY_STARTING_ITER = 4
TINY_MAX_ITER = 8


def _remove_from_catalogs(names):
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _default_datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


@contextlib.contextmanager
def _registered_tiny_digits(root, num_val):
    generate_digits_det(root, num_train=16, num_val=num_val, num_test=4, num_ood=4)

    def reregister(dataset_root):
        _remove_from_catalogs(DIGITS_DET_NAMES)
        register_all_digits_det(dataset_root)

    reregister(root)
    try:
        yield root
    finally:
        reregister(_default_datasets_root())


def _tiny_cfg(output_dir, *overrides):
    return load_config(
        "digits_vos_tiny.yaml",
        [
            "SOLVER.MAX_ITER", str(TINY_MAX_ITER),
            "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", "1000",
            "MODEL.VOS.STARTING_ITER", str(TINY_STARTING_ITER),
            "MODEL.VOS.SAMPLE_NUMBER", "4",
            "MODEL.VOS.SAMPLE_FROM", "500",
            "DATALOADER.NUM_WORKERS", "0",
            "TEST.OOD.SCORE_THRESHOLD", "0.0",
            "TEST.OOD.BOX_SELECTION", "fixed",
            "OUTPUT_DIR", str(output_dir),
            *overrides,
        ],
        freeze=False,
    )


@pytest.fixture
def new_layer(request):
    """``new_layer(**options)``: a VOSOutputLayers box predictor sized by the test module's
    ``DIM`` (box feature dimension) and ``NUM_CLASSES``, with its ``VOS_LAYER_OPTIONS``
    (sample_number, starting_iter, ...) updated by ``options``; its parameters are drawn
    after ``torch.manual_seed(0)``."""
    module = request.module

    def make(**options):
        torch.manual_seed(0)
        return VOSOutputLayers(
            ShapeSpec(channels=module.DIM),
            box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
            num_classes=module.NUM_CLASSES,
            **{**module.VOS_LAYER_OPTIONS, **options},
        )

    return make


@pytest.fixture(scope="session")
def digits_det_names():
    """The names of every digits-det dataset in detectron2's catalogs."""
    return DIGITS_DET_NAMES


@pytest.fixture(scope="session")
def remove_from_catalogs():
    """``remove_from_catalogs(names)``: drop datasets from DatasetCatalog and MetadataCatalog."""
    return _remove_from_catalogs


@pytest.fixture(scope="session")
def registered_tiny_digits():
    """``registered_tiny_digits(root, num_val)``: a context in which a tiny digits-det (16
    training, ``num_val`` validation, 4 test and 4 OOD images) written under ``root`` is
    registered in place of the default one (restored when the context exits)."""
    return _registered_tiny_digits


@pytest.fixture(scope="module")
def tiny_digits_root(tmp_path_factory):
    """A tiny digits-det under a temporary root, registered in place of the default one."""
    with _registered_tiny_digits(str(tmp_path_factory.mktemp("datasets")), num_val=2) as root:
        yield root


@pytest.fixture(scope="session")
def tiny_schedule():
    """(STARTING_ITER, MAX_ITER) of :func:`tiny_cfg`'s configs."""
    return TINY_STARTING_ITER, TINY_MAX_ITER


@pytest.fixture(scope="session")
def tiny_cfg():
    """``tiny_cfg(output_dir, *overrides)``: the digits tiny detector's config (not frozen)
    for a few CPU iterations: TINY_MAX_ITER iterations of 4 images, synthesis from
    TINY_STARTING_ITER on queues of 4 boxes, no loader workers, every box scored for OOD."""
    return _tiny_cfg


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A digits tiny model with random weights, saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(folder))
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_random")
    return str(folder / "model_random.pth")


def _random_detector_fitted(output_dir, overrides, **fit_options):
    from vos_det.engine.post_hoc_fitting import fit_post_hoc_scores

    cfg = _tiny_cfg(output_dir, *overrides)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(output_dir)).save("model")
    weights = str(Path(output_dir) / "model.pth")
    fit_cfg = load_config("digits_vos_tiny.yaml", ["OUTPUT_DIR", str(output_dir), *overrides])
    state = fit_post_hoc_scores(
        fit_cfg, weights, val_id="digits_det_val", val_ood="digits_det_ood_val", **fit_options
    )
    return cfg, weights, state


@pytest.fixture(scope="session")
def random_detector_fitted():
    """``random_detector_fitted(output_dir, overrides, **fit_options)``: a random-init digits
    tiny detector (:func:`tiny_cfg` with ``overrides``) saved as ``output_dir/model.pth``,
    and its post-hoc state fitted as the tool does on the registered digits-det (k of k-NN
    chosen on digits_det_val vs digits_det_ood_val); returns (cfg, weights, state file)."""
    return _random_detector_fitted


class _BoxInputs(dict):
    """What a box predictor's ``add_ood_fields`` received at its last call: "features"
    and "boxes"."""

    def __init__(self, predictor):
        super().__init__()
        original = predictor.add_ood_fields

        def capture(instances, logits, features=None, boxes=None):
            self.update(features=features, boxes=boxes)
            return original(instances, logits, features, boxes)

        predictor.add_ood_fields = capture


@pytest.fixture(scope="session")
def capture_box_inputs():
    """``capture_box_inputs(predictor)``: a dict that holds, after each inference, the box
    ``features`` and proposal ``boxes`` the predictor scored for OOD."""
    return _BoxInputs


# --- OOD evaluation (test_ood_evaluation.py, test_ood_protocol.py) ---------------------------


def _detection_records(rows, score_names=("vos",), proposal_scores=None):
    """DetectionRecords from (image_id, class, score, box) rows; every OOD score is -score."""
    import numpy as np  # imported here: this section is appended to the module

    from vos_det.evaluation import DetectionRecords

    image_ids, classes, scores, boxes = zip(*rows) if rows else ((), (), (), ())
    scores = np.asarray(scores, dtype=np.float64)
    return DetectionRecords(
        image_ids=np.asarray(image_ids, dtype=object),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        scores=scores,
        ood_score_table={name: -scores for name in score_names},
        num_images=len(set(image_ids)),
        proposal_scores=None if proposal_scores is None else np.asarray(proposal_scores, dtype=np.float64),
    )


def _box_iou(a, b):
    """IoU of two XYXY boxes, written out (the reference the box-selection tests compare with)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


@pytest.fixture(scope="session")
def detection_records():
    """``detection_records(rows, score_names=("vos",), proposal_scores=None)``: the
    DetectionRecords of a stand-in detector's (image_id, class, score, box) rows, each OOD
    score being -score."""
    return _detection_records


@pytest.fixture(scope="session")
def box_iou():
    """``box_iou(a, b)``: the IoU of two XYXY boxes, computed directly."""
    return _box_iou


def _local_dist_url():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="session")
def local_dist_url():
    """``local_dist_url()``: a ``tcp://127.0.0.1:<port>`` URL of a port free now, for the
    ``dist_url`` of a multi-process run on this machine."""
    return _local_dist_url


# --- end of the OOD evaluation section ---------------------------------------------------------
