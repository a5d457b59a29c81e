"""A few CPU iterations of the digits-det tiny config through the Trainer, end to end."""
import contextlib
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from vos_det import add_vos_config
from vos_det.config import resolve_config_file
from vos_det.data import generate_digits_det
from vos_det.data.builtin import register_all_digits_det
from vos_det.engine import Trainer
from vos_det.engine.trainer import OOD_RESULTS_FILE

DIGITS_DET_NAMES = (
    "digits_det_train",
    "digits_det_val",
    "digits_det_test",
    "digits_det_ood",
    "digits_det_far_ood",
    "digits_det_shifted_test",
    "digits_det_ood_val",
)
STARTING_ITER = 4
MAX_ITER = 8


@contextlib.contextmanager
def registered_tiny_digits(root, num_val):
    """A tiny digits-det written under ``root`` and registered in place of the default one
    while the context lasts."""
    generate_digits_det(root, num_train=16, num_val=num_val, num_test=4, num_ood=4)
    default_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))

    def reregister(dataset_root):
        for name in DIGITS_DET_NAMES:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_all_digits_det(dataset_root)

    reregister(root)
    try:
        yield root
    finally:
        reregister(default_root)


@pytest.fixture(scope="module")
def tiny_digits_root(tmp_path_factory):
    """A tiny digits-det under a temporary root, registered in place of the default one."""
    with registered_tiny_digits(str(tmp_path_factory.mktemp("datasets")), num_val=2) as root:
        yield root


def _tiny_cfg(output_dir, *overrides):
    cfg = get_cfg()
    add_vos_config(cfg)
    cfg.merge_from_file(resolve_config_file("digits_vos_tiny.yaml"))
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER", str(MAX_ITER),
            "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", "1000",
            "MODEL.VOS.STARTING_ITER", str(STARTING_ITER),
            "MODEL.VOS.SAMPLE_NUMBER", "4",
            "MODEL.VOS.SAMPLE_FROM", "500",
            "DATALOADER.NUM_WORKERS", "0",
            "TEST.OOD.SCORE_THRESHOLD", "0.0",
            "TEST.OOD.BOX_SELECTION", "fixed",
            "OUTPUT_DIR", str(output_dir),
            *overrides,
        ]
    )
    return cfg


def test_vos_loss_starts_at_starting_iter_and_outputs_carry_ood_fields(tiny_digits_root, tmp_path):
    torch.manual_seed(0)
    cfg = _tiny_cfg(tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    history = dict((int(i), v) for v, i in trainer.storage.history("loss_vos").values())
    assert sorted(history) == list(range(MAX_ITER))
    assert all(history[i] == 0.0 for i in range(STARTING_ITER))
    # The queues (4 per class, ~16 foreground ROIs per image) are full before STARTING_ITER.
    assert all(history[i] > 0.0 for i in range(STARTING_ITER, MAX_ITER))

    # The final evaluation ran on the ID test set and the OOD set, for every score.
    with open(tmp_path / OOD_RESULTS_FILE) as f:
        results = json.load(f)["results"]
    assert set(results["digits_det_test"]["bbox"]) >= {"AP", "AP50"}
    per_score = results["ood"]["digits_det_test"]["digits_det_ood"]
    # maxlogit and gen: the post-hoc scores that need no fitted state.
    assert set(per_score) == {"vos", "energy", "weighted_energy", "msp", "maxlogit", "gen"}
    for metrics in per_score.values():
        assert 0.0 <= metrics["FPR95"] <= 100.0 and 0.0 <= metrics["AUROC"] <= 100.0

    model = trainer.model.eval()
    dataset = DatasetCatalog.get("digits_det_test")
    from detectron2.data.detection_utils import read_image

    image = read_image(dataset[0]["file_name"], format="BGR")
    inputs = [{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": 128, "width": 128}]
    with torch.no_grad():
        instances = model(inputs)[0]["instances"]
    assert len(instances) > 0
    for field in ("id_scores", "ood_scores", "is_ood"):
        assert len(instances.get(field)) == len(instances)
    assert torch.allclose(instances.ood_scores, 1.0 - instances.id_scores)


def test_checkpoint_restores_queues_exactly(tiny_digits_root, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_tiny_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.train()
    queues = trainer.model.roi_heads.box_predictor.feature_queues
    assert queues.all_full()
    DetectionCheckpointer(trainer.model, save_dir=str(tmp_path)).save("after_training")

    restored = Trainer.build_model(_tiny_cfg(tmp_path))
    DetectionCheckpointer(restored).load(str(tmp_path / "after_training.pth"))
    restored_queues = restored.roi_heads.box_predictor.feature_queues
    for name, buffer in queues.named_buffers():
        assert torch.equal(buffer, getattr(restored_queues, name)), name


def test_class_count_differing_from_the_dataset_is_refused(tiny_digits_root, tmp_path):
    with pytest.raises(ValueError, match="NUM_CLASSES=7 but the training set 'digits_det_train' has 5"):
        Trainer(_tiny_cfg(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "7"))
