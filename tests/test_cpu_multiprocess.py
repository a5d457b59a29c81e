"""tools/train_net.py on 2 CPU processes (gloo, DDP without device_ids), then --resume.

The run goes through train_net.py's own ``argument_parser``, ``main`` and the launch call of
its command line (:func:`vos_det.engine.launch.launch_from_args`); only the worker is
wrapped, to save what each rank holds at the end of training (the checkpoint is rank 0's),
and both runs happen in the same two processes.
"""
import functools
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from detectron2.utils import comm

from vos_det.data import generate_digits_det
from vos_det.engine import Trainer
from vos_det.engine.launch import launch_from_args

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"
NUM_PROCESSES = 2
FIRST_MAX_ITER = 4
RESUMED_MAX_ITER = 6
STARTING_ITER = 2


def _train_net():
    """tools/train_net.py as a module; the spawned workers find it the same way."""
    if str(TOOLS_DIR) not in sys.path:
        sys.path.insert(0, str(TOOLS_DIR))
    import train_net

    return train_net


def _record(trainer, phase):
    """What this rank holds at the end of training, saved to ``<OUTPUT_DIR>/rank<r>_<phase>.pt``."""
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    queues = model.roi_heads.box_predictor.feature_queues
    state = {
        "ddp": type(trainer.model).__name__,
        "backend": torch.distributed.get_backend(),
        "start_iter": trainer.start_iter,
        "iter": trainer.iter,
        "parameters": {name: p.detach().clone() for name, p in model.named_parameters()},
        "queues": {name: b.clone() for name, b in queues.named_buffers()},
        # Rank 0 logs the losses, averaged over the ranks.
        "loss_vos": [v for v, _ in trainer.storage.history("loss_vos").values()] if comm.is_main_process() else None,
    }
    torch.save(state, os.path.join(trainer.cfg.OUTPUT_DIR, f"rank{comm.get_rank()}_{phase}.pt"))


def _worker(resumed_args, first_args):
    """Every rank: train_net.main with ``first_args``, then again with ``resumed_args``
    (--resume), in the same processes (spawning costs most of the test's time)."""
    train_net = _train_net()
    train = Trainer.train
    for phase, args in (("first", first_args), ("resumed", resumed_args)):

        def train_and_record(trainer, phase=phase):
            results = train(trainer)
            _record(trainer, phase)
            return results

        Trainer.train = train_and_record  # in this spawned worker only
        train_net.main(args)
        comm.synchronize()


def _command_line(output_dir, max_iter, dist_url, *extra):
    return [
        "--config", "digits_vos_tiny.yaml",
        "--num-gpus", str(NUM_PROCESSES),
        "--dist-url", dist_url,
        *extra,
        "MODEL.DEVICE", "cpu",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "MODEL.VOS.STARTING_ITER", str(STARTING_ITER),
        "MODEL.VOS.SAMPLE_NUMBER", "4",
        "MODEL.VOS.SAMPLE_FROM", "200",
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.OOD.BOX_SELECTION", "fixed",
        "TEST.OOD.SCORE_THRESHOLD", "0.0",
        "TEST.OOD.PLOTS", "False",
        "TEST.OOD.CALIBRATION_DATASET", "",
        "OUTPUT_DIR", str(output_dir),
    ]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, local_dist_url):
    """Trains FIRST_MAX_ITER iterations on 2 CPU processes, then resumes to RESUMED_MAX_ITER.

    Returns the per-rank states of both runs and the wall time of the launch.
    """
    root = tmp_path_factory.mktemp("datasets")
    generate_digits_det(str(root), num_train=16, num_val=2, num_test=4, num_ood=4)
    output_dir = tmp_path_factory.mktemp("train_net_2proc")
    parser = _train_net().argument_parser()
    # The first run skips the final evaluation; the resumed one evaluates on both ranks.
    first_args = parser.parse_args(
        _command_line(output_dir, FIRST_MAX_ITER, local_dist_url(), "DATASETS.TEST", "()", "DATASETS.OOD_TEST", "()")
    )
    resumed_args = parser.parse_args(_command_line(output_dir, RESUMED_MAX_ITER, local_dist_url(), "--resume"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        # The spawned workers register the built-in datasets under this root on import; with
        # CUDA hidden even a GPU machine takes the CPU route.
        monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        start = time.perf_counter()
        launch_from_args(functools.partial(_worker, resumed_args), first_args)
        elapsed = time.perf_counter() - start
    states = {
        phase: [torch.load(output_dir / f"rank{rank}_{phase}.pt") for rank in range(NUM_PROCESSES)]
        for phase in ("first", "resumed")
    }
    return states, elapsed, output_dir


def _assert_ranks_identical(first, second):
    assert set(first["parameters"]) == set(second["parameters"])
    for name, parameter in first["parameters"].items():
        assert torch.equal(parameter, second["parameters"][name]), name
    for name, buffer in first["queues"].items():
        assert torch.equal(buffer, second["queues"][name]), name


def test_two_cpu_processes_train_with_gloo_and_identical_state(two_process_runs):
    states, elapsed, output_dir = two_process_runs
    print(f"2 CPU processes, {FIRST_MAX_ITER} + {RESUMED_MAX_ITER - FIRST_MAX_ITER} iterations: {elapsed:.1f} s")
    first, second = states["first"]
    for state in (first, second):
        assert state["ddp"] == "DistributedDataParallel" and state["backend"] == "gloo"
        assert state["start_iter"] == 0 and state["iter"] == FIRST_MAX_ITER
    _assert_ranks_identical(first, second)
    # The queues filled and synthesis started (the uncertainty loss is 0 before).
    assert torch.equal(first["queues"]["counts"], torch.full_like(first["queues"]["counts"], 4))
    assert first["loss_vos"][-1] > 0.0
    assert (output_dir / "model_final.pth").exists()


def test_two_cpu_process_run_resumes_from_its_checkpoint(two_process_runs):
    states, _, output_dir = two_process_runs
    first, second = states["resumed"]
    for state in (first, second):
        assert state["start_iter"] == FIRST_MAX_ITER and state["iter"] == RESUMED_MAX_ITER
    _assert_ranks_identical(first, second)
    # The resumed run continued from the first run's weights and queues, and trained on.
    before = states["first"][0]
    assert any(
        not torch.equal(p, first["parameters"][name]) for name, p in before["parameters"].items()
    )
    # Both ranks took part in the final evaluation, whose report rank 0 wrote.
    assert (output_dir / "ood_results.json").exists()
