"""One check of a GPU machine: the CUDA path of training, resuming, evaluating and exporting.

:func:`run_gpu_check` (``tools/check_gpu.py``) runs, on generated VOC-like data (digits-det:
VOC-layout ID splits, a COCO-json OOD split), one step after the other:

1. ``data``: generate and register the data;
2. ``train``: the VOC R-50-FPN recipe (``VOC-Detection/vos_rcnn.yaml``: random
   initialisation, 5 classes, the recipe's input sizes, queues and synthesis) with AMP, for
   half the iterations, synthesis active from a third of them, stopping after the
   checkpoint written half-way;
3. ``resume``: ``--resume`` from that checkpoint to the last iteration (the final
   evaluation, with calibration, included);
4. ``ood_eval``: fit every post-hoc score (``tools/fit_ood_scores.py``'s fitting) and run
   the OOD protocol (``tools/ood_eval.py``'s evaluation) with all of them;
5. ``export``: trace the trained detector to TorchScript, reload it and compare its
   detections with the eager model's;
6. ``benchmarks``: ``benchmarks/run_all.py --device cuda --quick``.

and writes one JSON report: pass / fail of each step (with the error of a failed one),
iterations per second, peak GPU memory, and the VOS overhead ratio (median iteration time
with synthesis active over that of the same run before synthesis starts). A step whose
inputs a failed step should have made is reported as skipped.

``tiny=True`` checks the plumbing on any machine (the tests run it on the CPU): the tiny
digits recipe for a few iterations, no AMP off CUDA (detectron2's AMPTrainer needs CUDA).
"""
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from statistics import median

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from ..config import load_config
from ..data import generate_digits_det
from ..data.builtin import register_all_digits_det
from ..export import compare_detections, export_torchscript, load_exported, ood_detections
from ..modeling.ood_scores import EMBEDDING_POST_HOC_SCORES, POST_HOC_SCORES
from ..utils.file_io import atomic_open
from .ood_evaluation import ood_eval_config
from .post_hoc_fitting import fit_post_hoc_scores
from .trained_model import load_trained_model
from .trainer import Trainer

__all__ = ["GPU_CHECK_STEPS", "REPORT_FILE", "run_gpu_check"]

logger = logging.getLogger(__name__)

GPU_CHECK_STEPS = ("data", "train", "resume", "ood_eval", "export", "benchmarks")
REPORT_FILE = "gpu_check.json"
_DIGITS_NAMES = (
    "digits_det_train", "digits_det_val", "digits_det_test", "digits_det_ood", "digits_det_far_ood",
    "digits_det_shifted_test", "digits_det_ood_val",
)
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (config, data sizes, iterations, overrides) of the full check and of the tiny one. Full:
# 400 training images of digits; 8 images per step (one GPU), the recipe's learning rate
# scaled to them; queues of 300 features per class (the recipe's 1000 would not fill
# before a third of 300 steps of a randomly initialised detector on 5 classes).
_FULL = {
    "config": "VOC-Detection/vos_rcnn.yaml",
    "data": dict(num_train=400, num_val=40, num_test=40, num_ood=40),
    "iterations": 300,
    "opts": [
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.BASE_LR", "0.01", "DATALOADER.NUM_WORKERS", "4",
        "MODEL.VOS.SAMPLE_NUMBER", "300",
    ],
}
_TINY = {
    "config": "Digits-Detection/digits_vos_tiny.yaml",
    "data": dict(num_train=16, num_val=4, num_test=4, num_ood=4),
    "iterations": 8,
    "opts": [
        "SOLVER.IMS_PER_BATCH", "4", "MODEL.VOS.SAMPLE_NUMBER", "2", "MODEL.VOS.SAMPLE_FROM", "200",
        "DATALOADER.NUM_WORKERS", "0", "TEST.OOD.SCORE_THRESHOLD", "0.0", "TEST.OOD.BOX_SELECTION", "fixed",
        "MODEL.OOD.POST_HOC.SAFE.EPOCHS", "1",
    ],
}


class _Interrupted(Exception):
    """Raised by :class:`_StopAfter` to end a run as a crash would."""


class _StopAfter(HookBase):
    """Interrupts training after iteration ``iteration`` (after the checkpointer saved it)."""

    def __init__(self, iteration):
        self._iteration = iteration

    def after_step(self):
        if self.trainer.iter == self._iteration:
            raise _Interrupted()


class _Steps:
    """Runs the steps, recording each one's outcome in the report."""

    def __init__(self, report):
        self.report = report

    def passed(self, *names):
        return all(self.report["steps"].get(name, {}).get("status") == "passed" for name in names)

    def run(self, name, function, needs=()):
        """``function()`` -> dict of facts, recorded under ``name``; skipped unless the
        steps ``needs`` passed; an exception fails the step (the others still run)."""
        entry = self.report["steps"].setdefault(name, {})
        if not self.passed(*needs):
            entry.update(status="skipped", reason=f"needs {', '.join(needs)}")
            return
        logger.info("GPU check: %s", name)
        start = time.perf_counter()
        try:
            entry.update(function() or {})
            entry["status"] = "passed"
        except Exception as error:  # reported in the JSON; the other steps still run
            entry.update(status="failed", error=f"{type(error).__name__}: {error}",
                         traceback=traceback.format_exc(limit=-8))
            logger.error("GPU check: %s failed: %s", name, entry["error"])
        entry["seconds"] = round(time.perf_counter() - start, 2)


def _register_digits(root):
    for name in _DIGITS_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    register_all_digits_det(root)


def _config(setup, output_dir, device, iterations, opts, weights=""):
    amp = torch.device(device).type == "cuda"
    half = iterations // 2
    return load_config(
        setup["config"],
        [
            "MODEL.DEVICE", device,
            "MODEL.WEIGHTS", weights,
            "MODEL.ROI_HEADS.NUM_CLASSES", "5",
            "MODEL.VOS.STARTING_ITER", str(max(1, iterations // 3)),
            "SOLVER.AMP.ENABLED", str(amp),
            "SOLVER.MAX_ITER", str(iterations),
            "SOLVER.STEPS", f"({int(iterations * 0.8)},)",
            "SOLVER.WARMUP_ITERS", str(max(1, iterations // 10)),
            "SOLVER.CHECKPOINT_PERIOD", str(half),
            "DATASETS.TRAIN", "('digits_det_train',)",
            "DATASETS.TEST", "('digits_det_test',)",
            "DATASETS.OOD_TEST", "('digits_det_ood',)",
            "TEST.OOD.CALIBRATION_DATASET", "digits_det_val",
            "TEST.EVAL_PERIOD", "0",
            "SEED", "0",
            "OUTPUT_DIR", os.path.join(output_dir, "train"),
            *setup["opts"],
            *opts,
        ],
        freeze=False,
    )


def _iteration_log(trainer):
    """Per iteration the trainer ran: its seconds (detectron2's IterationTimer, which leaves
    out the first iterations of a run) and whether outlier synthesis was active."""
    history = trainer.storage.histories()
    times = {int(i): t for t, i in history["time"].values()} if "time" in history else {}
    active = {}
    if "vos/synthesis_active" in history:
        active = {int(i): bool(v) for v, i in history["vos/synthesis_active"].values()}
    return times, active


def _train(cfg, resume, stop_after=None):
    """Train (or resume) with vos_det's Trainer; its iteration times and the facts (the
    iterations per second from detectron2's IterationTimer, which leaves out the first
    iterations of a run)."""
    seed_all_rng(cfg.SEED)  # the initial weights (a resumed run then loads its states)
    trainer = Trainer(cfg)
    if stop_after is not None:
        trainer.register_hooks([_StopAfter(stop_after)])
    trainer.resume_or_load(resume=resume)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train()
        last = trainer.iter - 1  # the loop leaves iter one past the last iteration
    except _Interrupted:
        last = trainer.iter
    times, active = _iteration_log(trainer)
    seconds = sum(times.values())
    return (times, active), {
        "start_iteration": trainer.start_iter,
        "iterations": last - trainer.start_iter + 1,
        "iterations_per_second": round(len(times) / seconds, 3) if seconds > 0 else None,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }


def _vos_overhead_ratio(times, active):
    """Median iteration time with synthesis active over the median before it started;
    None without timed iterations of both kinds."""
    before = [t for i, t in times.items() if not active.get(i, False)]
    during = [t for i, t in times.items() if active.get(i, False)]
    if not before or not during:
        return None
    return round(median(during) / median(before), 3)


def _check_scores(results, skip=()):
    """Every post-hoc score but those of ``skip`` is in the OOD table of each (ID set, OOD
    set) pair."""
    pairs = [(i, o, scores) for i, by_ood in results["ood"].items() for o, scores in by_ood.items()]
    if not pairs:
        raise RuntimeError("the evaluation produced no OOD table")
    for id_set, ood_set, scores in pairs:
        missing = sorted(set(POST_HOC_SCORES) - set(skip) - set(scores))
        if missing:
            raise RuntimeError(f"OOD scores {missing} missing from the table of {id_set} vs {ood_set}")
    return sorted(pairs[0][2])


def run_gpu_check(output_dir, *, device="cuda", tiny=False, iterations=None, opts=(), benchmark_command=None):
    """Run the checks of the module docstring and write ``output_dir/gpu_check.json``.

    Args:
        output_dir (str): where the data, the runs and the report go.
        device (str): "cuda" (the check) or "cpu" (with ``tiny``, the plumbing).
        tiny (bool): the tiny digits recipe for a few iterations instead of R-50-FPN.
        iterations (int, optional): training iterations (default 300, tiny 8); the run is
            interrupted half-way and resumed.
        opts (list[str]): config overrides (KEY VALUE ...) applied last.
        benchmark_command (list[str], optional): the benchmark step's command; default
            ``python benchmarks/run_all.py --device <device> --quick``; an empty list skips it.

    Returns:
        dict: the report (also written to the JSON file): ``passed`` (every step run
        passed), ``steps`` (name -> status "passed" / "failed" / "skipped" (a step it
        needs failed) / "not run" (not asked for), seconds, error, facts),
        ``iterations_per_second``, ``peak_gpu_memory_bytes``, ``vos_overhead_ratio``.
    """
    setup = _TINY if tiny else _FULL
    iterations = iterations or setup["iterations"]
    if iterations < 4:
        raise ValueError(f"the GPU check needs at least 4 iterations (to stop half-way and resume), got {iterations}")
    os.makedirs(output_dir, exist_ok=True)
    report = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu",
        "torch": torch.__version__,
        "recipe": setup["config"],
        "tiny": tiny,
        "iterations": iterations,
        "steps": {},
    }
    steps = _Steps(report)
    default_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    half = iterations // 2
    cfg = _config(setup, output_dir, device, iterations, opts)
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    times, active = {}, {}

    def data():
        root = os.path.join(output_dir, "datasets")
        generate_digits_det(root, **setup["data"])
        _register_digits(root)
        return {"root": root, **setup["data"]}

    def train():
        part, facts = _train(cfg, resume=False, stop_after=half - 1)
        if facts["iterations"] != half:
            raise RuntimeError(f"trained {facts['iterations']} iterations before the interruption, not {half}")
        times.update(part[0])
        active.update(part[1])
        return {**facts, "amp": cfg.SOLVER.AMP.ENABLED}

    def resume():
        part, facts = _train(cfg, resume=True)
        if facts["start_iteration"] != half or facts["iterations"] != iterations - half:
            raise RuntimeError(
                f"resumed at iteration {facts['start_iteration']} for {facts['iterations']} iterations, "
                f"not at {half} for {iterations - half}"
            )
        times.update(part[0])
        active.update(part[1])
        if not any(active.values()):
            raise RuntimeError("outlier synthesis never ran")
        report["iterations_per_second"] = facts["iterations_per_second"]
        report["peak_gpu_memory_bytes"] = facts["peak_gpu_memory_bytes"]
        report["vos_overhead_ratio"] = _vos_overhead_ratio(times, active)
        return {**facts, "synthesis_active_iterations": sum(active.values())}

    def ood_eval():
        eval_cfg = _config(setup, output_dir, device, iterations, opts, weights=weights)
        state = fit_post_hoc_scores(eval_cfg, weights, val_id="digits_det_val", val_ood="digits_det_ood_val")
        eval_cfg.MODEL.OOD.POST_HOC.STATE = state
        eval_cfg = ood_eval_config(eval_cfg, calibrate="", output_dir=os.path.join(output_dir, "ood_eval"))
        model = load_trained_model(eval_cfg)
        results, _ = Trainer.evaluate_ood_of(eval_cfg, model, log_report=False)
        # SAFE reads residual projection shortcuts: the tiny backbone has none; the embedding
        # scores need a model trained with an embedding loss.
        skip = ("safe",) if tiny else ()
        if model.roi_heads.box_predictor.embedding_of() is None:
            skip += EMBEDDING_POST_HOC_SCORES
        return {"scores": _check_scores(results, skip=skip), "post_hoc_state": state}

    def export():
        export_cfg = _config(setup, output_dir, device, iterations, opts, weights=weights)
        return _export(export_cfg, os.path.join(output_dir, "export"))

    command = benchmark_command
    if command is None:
        command = [sys.executable, os.path.join(_REPOSITORY, "benchmarks", "run_all.py"),
                   "--device", device, "--quick", "--results-dir", os.path.join(output_dir, "benchmarks")]

    def benchmarks():
        log = os.path.join(output_dir, "benchmarks.log")
        with open(log, "w") as f:
            returncode = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT)
        if returncode:
            raise RuntimeError(f"{' '.join(command)} exited with {returncode} (see {log})")
        return {"command": command, "log": log}

    try:
        steps.run("data", data)
        steps.run("train", train, needs=("data",))
        steps.run("resume", resume, needs=("train",))
        steps.run("ood_eval", ood_eval, needs=("resume",))
        steps.run("export", export, needs=("resume",))
        if command:
            steps.run("benchmarks", benchmarks)
        else:
            report["steps"]["benchmarks"] = {"status": "not run", "reason": "not asked for"}
    finally:
        _register_digits(default_root)
        report["passed"] = all(step.get("status") in ("passed", "not run") for step in report["steps"].values())
        with atomic_open(os.path.join(output_dir, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
    return report


def _export(cfg, output_dir):
    """Trace the detector on a test image, reload the file on the device and compare."""
    from ..data.mapper import ImageNamingDatasetMapper

    os.makedirs(output_dir, exist_ok=True)
    model = load_trained_model(cfg)
    mapper = ImageNamingDatasetMapper(cfg, is_train=False)
    images = [mapper(dict(record))["image"].float() for record in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:3]]
    path = os.path.join(output_dir, "model.ts")
    metadata = export_torchscript(model, images[0], path)
    exported = load_exported(path, cfg.MODEL.DEVICE)
    differences = []
    for image in images:
        with torch.no_grad():
            differences.append(compare_detections(ood_detections(model, image), exported(image)))
    return {"file": path, "traced_on": metadata["device"], "max_abs_diff": max(differences)}
