"""Atomic checkpoints, and --resume continuing exactly (queues, counters, random state, data)."""
import os

import pytest
import torch
from detectron2.engine import HookBase

from vos_det.engine import Trainer
from vos_det.engine.checkpoint import AtomicWritePathManager

MAX_ITER = 8
CHECKPOINT_PERIOD = 4  # a checkpoint after iteration 3 (the 4th)


class _Interrupt(Exception):
    pass


class _InterruptAfter(HookBase):
    """Stops training after iteration ``iteration`` (after the checkpoint hook ran)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise _Interrupt()


def _cfg(tiny_cfg, output_dir):
    return tiny_cfg(
        output_dir,
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
        "SOLVER.STEPS", "(5,)",
        "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()",
        "DATASETS.OOD_TEST", "()",
        # The tiny validation set gives no detection to calibrate on after 10 iterations.
        "TEST.OOD.CALIBRATION_DATASET", "",
    )


def _losses(trainer):
    return {
        name: {int(i): v for v, i in trainer.storage.history(name).values()}
        for name in ("total_loss", "loss_vos", "loss_cls", "lr")
    }


def test_interrupted_then_resumed_run_matches_uninterrupted(tiny_digits_root, tmp_path, tiny_cfg):
    torch.manual_seed(0)
    straight = Trainer(_cfg(tiny_cfg, tmp_path / "straight"))
    straight.resume_or_load(resume=False)
    straight.train()
    expected = _losses(straight)

    torch.manual_seed(0)
    first = Trainer(_cfg(tiny_cfg, tmp_path / "interrupted"))
    first.register_hooks([_InterruptAfter(CHECKPOINT_PERIOD)])
    first.resume_or_load(resume=False)
    with pytest.raises(_Interrupt):
        first.train()
    before = _losses(first)

    torch.manual_seed(12345)  # the resumed process starts from another random state
    resumed = Trainer(_cfg(tiny_cfg, tmp_path / "interrupted"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == CHECKPOINT_PERIOD
    resumed.train()
    after = _losses(resumed)

    for name, values in expected.items():
        combined = {i: v for i, v in before[name].items() if i < CHECKPOINT_PERIOD}
        combined.update(after[name])
        assert sorted(combined) == list(range(MAX_ITER)), name
        for iteration in range(MAX_ITER):
            assert combined[iteration] == pytest.approx(values[iteration], rel=1e-5, abs=1e-7), (
                name, iteration,
            )
    # Synthesis was running on both sides of the interruption.
    assert all(expected["loss_vos"][i] > 0 for i in range(CHECKPOINT_PERIOD, MAX_ITER))
    straight_queues = straight.model.roi_heads.box_predictor.feature_queues
    resumed_queues = resumed.model.roi_heads.box_predictor.feature_queues
    for name, buffer in straight_queues.named_buffers():
        torch.testing.assert_close(buffer, getattr(resumed_queues, name), msg=name)


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    from detectron2.utils.file_io import PathManager

    manager = AtomicWritePathManager(PathManager)
    target = tmp_path / "model_final.pth"
    with manager.open(str(target), "wb") as f:
        torch.save({"version": 1}, f)
    with pytest.raises(RuntimeError, match="disk died"):
        with manager.open(str(target), "wb") as f:
            f.write(b"partial")
            raise RuntimeError("disk died")
    assert torch.load(str(target)) == {"version": 1}
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary file left behind
