"""SaveCalibratedFinalModel: model_final.pth re-saved with the calibrated threshold and the
iteration a resumed run must continue from."""
from types import SimpleNamespace

import torch

from vos_det.engine import checkpoint as checkpoint_module
from vos_det.engine.checkpoint import SaveCalibratedFinalModel


class _RecordingCheckpointer:
    def __init__(self, trainer):
        self.trainer = trainer
        self.saved = []

    def save(self, name):
        self.saved.append((name, self.trainer.iter))


def _finished_trainer(threshold, calibration_dataset="digits_det_val", max_iter=6):
    trainer = SimpleNamespace(
        iter=max_iter,  # the training loop leaves iter at max_iter
        max_iter=max_iter,
        model=SimpleNamespace(calibrated_ood_threshold=torch.tensor(threshold)),
        cfg=SimpleNamespace(TEST=SimpleNamespace(OOD=SimpleNamespace(CALIBRATION_DATASET=calibration_dataset))),
    )
    trainer.checkpointer = _RecordingCheckpointer(trainer)
    return trainer


def _run_hook(trainer, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "find_ood_head", lambda model: model)
    hook = SaveCalibratedFinalModel()
    hook.trainer = trainer
    hook.after_train()


def test_final_model_is_saved_at_the_last_trained_iteration(monkeypatch):
    trainer = _finished_trainer(0.25)
    _run_hook(trainer, monkeypatch)
    # detectron2's resume starts at the saved iteration + 1 = max_iter.
    assert trainer.checkpointer.saved == [("model_final", trainer.max_iter - 1)]
    assert trainer.iter == trainer.max_iter


def test_nothing_is_saved_without_a_calibrated_threshold(monkeypatch):
    uncalibrated = _finished_trainer(float("nan"))
    _run_hook(uncalibrated, monkeypatch)
    no_dataset = _finished_trainer(0.25, calibration_dataset="")
    _run_hook(no_dataset, monkeypatch)
    stopped_early = _finished_trainer(0.25)
    stopped_early.iter = 3
    _run_hook(stopped_early, monkeypatch)
    assert uncalibrated.checkpointer.saved == no_dataset.checkpointer.saved == stopped_early.checkpointer.saved == []
