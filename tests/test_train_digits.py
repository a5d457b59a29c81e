"""A few CPU iterations of the digits-det tiny config through the Trainer, end to end."""
import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog

from vos_det.engine import Trainer
from vos_det.engine.trainer import OOD_RESULTS_FILE


def test_vos_loss_starts_at_starting_iter_and_outputs_carry_ood_fields(tiny_digits_root, tmp_path, tiny_cfg, tiny_schedule):
    starting_iter, max_iter = tiny_schedule
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    history = dict((int(i), v) for v, i in trainer.storage.history("loss_vos").values())
    assert sorted(history) == list(range(max_iter))
    assert all(history[i] == 0.0 for i in range(starting_iter))
    # The queues (4 per class, ~16 foreground ROIs per image) are full before STARTING_ITER.
    assert all(history[i] > 0.0 for i in range(starting_iter, max_iter))

    # The final evaluation ran on the ID test set and the OOD set, for every score.
    with open(tmp_path / OOD_RESULTS_FILE) as f:
        results = json.load(f)["results"]
    assert set(results["digits_det_test"]["bbox"]) >= {"AP", "AP50"}
    per_score = results["ood"]["digits_det_test"]["digits_det_ood"]
    # maxlogit and gen: the post-hoc scores that need no fitted state.
    assert set(per_score) == {"vos", "vos_release", "energy", "weighted_energy", "msp", "maxlogit", "gen"}
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


def test_checkpoint_restores_queues_exactly(tiny_digits_root, tmp_path, tiny_cfg):
    torch.manual_seed(0)
    trainer = Trainer(tiny_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.train()
    queues = trainer.model.roi_heads.box_predictor.feature_queues
    assert queues.all_full()
    DetectionCheckpointer(trainer.model, save_dir=str(tmp_path)).save("after_training")

    restored = Trainer.build_model(tiny_cfg(tmp_path))
    DetectionCheckpointer(restored).load(str(tmp_path / "after_training.pth"))
    restored_queues = restored.roi_heads.box_predictor.feature_queues
    for name, buffer in queues.named_buffers():
        assert torch.equal(buffer, getattr(restored_queues, name)), name


def test_class_count_differing_from_the_dataset_is_refused(tiny_digits_root, tmp_path, tiny_cfg):
    with pytest.raises(ValueError, match="NUM_CLASSES=7 but the training set 'digits_det_train' has 5"):
        Trainer(tiny_cfg(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "7"))
