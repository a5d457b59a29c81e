"""--resume on several processes: every rank restores its own random state (two gloo ranks).

Each rank draws, every iteration, from the streams a detector's training step uses (torch's
global generator as proposal sampling does, numpy, Python). A run interrupted after a
checkpoint and resumed must draw, on every rank, what the uninterrupted run drew. Before
per-rank states, only rank 0's state was saved and every rank restored it, so rank 1 of a
resumed run drew rank 0's numbers.

The training loop is detectron2's TrainerBase with vos_det's checkpointer and hooks as
``train_lazy_config`` registers them (no model: spawning costs most of the time here).
"""
import os
import random
from datetime import timedelta

import numpy as np
import pytest
import torch
from detectron2.engine import TrainerBase, hooks, launch
from detectron2.utils import comm
from torch import nn

from vos_det.lazyconfig import build_checkpointer, capture_random_states_hook

WORLD_SIZE = 2
COLLECTIVE_TIMEOUT = timedelta(seconds=120)
PERIOD = 3
MAX_ITER = 7


class _DrawingTrainer(TrainerBase):
    """Each step draws from the global random streams and records the draws."""

    def __init__(self):
        super().__init__()
        self.draws = {}

    def run_step(self):
        self.draws[self.iter] = (
            torch.randperm(50)[:5].tolist(),
            np.random.randint(0, 10**6, 3).tolist(),
            [random.random() for _ in range(2)],
        )


def _seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _train(output_dir, max_iter, resume):
    os.makedirs(output_dir, exist_ok=True)
    trainer = _DrawingTrainer()
    checkpointer = build_checkpointer(nn.Linear(2, 2), output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            capture_random_states_hook(checkpointer, PERIOD),
            hooks.PeriodicCheckpointer(checkpointer, PERIOD) if comm.is_main_process() else None,
        ]
    )
    start = 0
    if resume:
        checkpointer.resume_or_load("", resume=True)
        start = trainer.iter + 1
    trainer.train(start, max_iter)
    return trainer.draws


def _worker(output_dir):
    torch.set_num_threads(1)
    rank = comm.get_rank()
    interrupted, uninterrupted = os.path.join(output_dir, "interrupted"), os.path.join(output_dir, "uninterrupted")
    # Ranks start from different states, as detectron2's seeding makes them.
    _seed_everything(rank)
    before = _train(interrupted, PERIOD, resume=False)  # stops after the checkpoint of iteration PERIOD - 1
    _seed_everything(rank)
    whole = _train(uninterrupted, MAX_ITER, resume=False)
    comm.synchronize()  # rank 0's checkpoint is written before any rank reads it
    _seed_everything(1000 + rank)  # a new process: its own state until the checkpoint's is loaded
    after = _train(interrupted, MAX_ITER, resume=True)
    torch.save({"before": before, "whole": whole, "after": after}, os.path.join(output_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def draws(tmp_path_factory, local_dist_url):
    output_dir = tmp_path_factory.mktemp("resume_random_state")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo, CPU tensors
        launch(
            _worker,
            WORLD_SIZE,
            num_machines=1,
            machine_rank=0,
            dist_url=local_dist_url(),
            args=(str(output_dir),),
            timeout=COLLECTIVE_TIMEOUT,
        )
    return [torch.load(output_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def test_every_rank_of_a_resumed_run_draws_what_the_uninterrupted_run_drew(draws):
    for rank, result in enumerate(draws):
        assert sorted(result["after"]) == list(range(PERIOD, MAX_ITER)), rank
        for iteration, drawn in result["after"].items():
            assert drawn == result["whole"][iteration], (rank, iteration)
        # The first part of the interrupted run is the uninterrupted one's.
        assert all(result["whole"][i] == drawn for i, drawn in result["before"].items())


def test_the_ranks_draw_different_numbers(draws):
    first, second = draws
    assert all(first["whole"][i] != second["whole"][i] for i in range(MAX_ITER))
