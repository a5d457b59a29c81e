"""Checkpointing that never leaves a half-written file and restores the random state."""
import errno
import logging
import os
import pickle
import random
import shutil
import zipfile

import math

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import UserError
from ..utils.file_io import atomic_open
from .ood_evaluation import find_ood_head
from .post_hoc_weights import check_post_hoc_states

logger = logging.getLogger(__name__)

__all__ = [
    "AtomicWritePathManager",
    "CaptureRandomStates",
    "RandomState",
    "SaveCalibratedFinalModel",
    "check_checkpoint_matches_model",
    "check_weights_file",
    "disk_full_error",
]


def _mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (the "disk")."""
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or an exception it was raised from is "no space left on device"
    (torch.save reports a failed write as "unexpected pos ..." raised from the OSError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: str) -> OSError:
    """An ENOSPC OSError naming the disk, its free space and the file that was being written."""
    directory = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(directory).free
    return OSError(
        errno.ENOSPC,
        f"no space left on the disk {_mount_point(directory)} ({free / 2**20:.1f} MiB free) while writing "
        f"{path}; it was not written, the previous checkpoint and last_checkpoint are unchanged. Free some "
        "space (or set OUTPUT_DIR to another disk) and rerun with --resume",
    )


class _DiskFullNamingFile:
    """Wraps an atomic file: a failure from a full disk is re-raised as :func:`disk_full_error`."""

    def __init__(self, path, file):
        self._path, self._file = path, file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        try:
            self._file.__exit__(exc_type, exc, traceback)
        except OSError as error:
            if _is_disk_full(error):
                raise disk_full_error(self._path) from error
            raise
        if exc is not None and _is_disk_full(exc):
            raise disk_full_error(self._path) from exc
        return False


class AtomicWritePathManager:
    """Wraps an iopath PathManager so that files opened for writing on local disk are atomic.

    fvcore's Checkpointer writes the checkpoint and the ``last_checkpoint`` tag through its
    ``path_manager``; with this wrapper both appear complete or not at all, and a full disk
    is reported as such (an OSError naming the disk and the file), not as torch's
    "unexpected pos". Reads, remote paths and every other method go to the wrapped manager.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path, mode="r", **kwargs):
        if ("w" in mode or "x" in mode) and "://" not in str(path) and not kwargs:
            try:
                return _DiskFullNamingFile(str(path), atomic_open(str(path), mode))
            except OSError as error:
                if _is_disk_full(error):
                    raise disk_full_error(str(path)) from error
                raise
        return self._path_manager.open(path, mode, **kwargs)


def _local_random_state():
    """This process's global random states: torch CPU, its current CUDA device, numpy, Python.

    Tensors, lists and plain values only, so that a checkpoint holding them loads with
    ``torch.load(weights_only=True)``.
    """
    version, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(python_version),
            "internal": list(python_internal),
            "gauss": python_gauss,
        },
    }
    if torch.cuda.is_available():
        # The stream of this rank's own device (each rank of detectron2's launch uses one).
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_local_random_state(state):
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
    cuda_state = state.get("cuda")
    if cuda_state is not None and torch.cuda.is_available():
        if isinstance(cuda_state, (list, tuple)):
            # Checkpoints written before per-rank states held every visible device's stream.
            device = torch.cuda.current_device()
            if device >= len(cuda_state):
                return
            cuda_state = cuda_state[device]
        torch.cuda.set_rng_state(cuda_state)


class RandomState:
    """A checkpointable holding the global random states of every rank (torch CPU / CUDA,
    numpy, Python).

    Added to the trainer's checkpointer, it makes a resumed run draw the random numbers
    the uninterrupted run would have drawn (proposal sampling, augmentations in the main
    process), on every rank: only rank 0 saves checkpoints, so the states of all ranks
    are all-gathered first, at the same iteration on every rank, by :meth:`capture`
    (:class:`CaptureRandomStates` calls it just before the checkpointer saves). On
    resume, rank r restores the state saved for rank r; a rank the checkpoint has no
    state for (a run resumed on more processes) keeps its own, with a warning. Each
    CUDA state is that of the rank's own device, so a run resumes on any number of
    visible GPUs.
    """

    def __init__(self):
        self._states = None

    def capture(self):
        """All-gather every rank's random state; collective: call it on every rank."""
        self._states = comm.all_gather(_local_random_state())

    def state_dict(self):
        """``{"ranks": [state of rank 0, rank 1, ...]}``; just this process's state when
        :meth:`capture` was never called (a save outside the training loop)."""
        return {"ranks": list(self._states) if self._states is not None else [_local_random_state()]}

    def load_state_dict(self, state):
        # Checkpoints written before per-rank states hold one (rank 0's) state.
        states = state["ranks"] if "ranks" in state else [state]
        rank = comm.get_rank()
        if rank >= len(states):
            logger.warning(
                "The checkpoint holds the random states of %d rank(s); rank %d keeps its own "
                "(a resumed run with more processes draws other random numbers)",
                len(states), rank,
            )
            return
        _restore_local_random_state(states[rank])


class CaptureRandomStates(HookBase):
    """Gathers every rank's random state (:meth:`RandomState.capture`) at the iterations at
    which detectron2's ``PeriodicCheckpointer`` saves: register it on every rank, before
    that hook (which only rank 0 has).
    """

    def __init__(self, random_state: RandomState, period: int):
        """
        Args:
            random_state: the checkpointer's :class:`RandomState`.
            period: the checkpointer's period (``SOLVER.CHECKPOINT_PERIOD``).
        """
        self._random_state = random_state
        self._period = period

    def after_step(self):
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration >= self.trainer.max_iter - 1:
            self._random_state.capture()


class SaveCalibratedFinalModel(HookBase):
    """Saves ``model_final.pth`` again after the final evaluation calibrated the OOD threshold.

    With ``TEST.OOD.CALIBRATION_DATASET`` set, the evaluation at the end of training writes
    the calibrated threshold into the model's ``calibrated_ood_threshold`` buffer, after
    ``model_final.pth`` was saved. Registered after the evaluation hook, this hook saves the
    final checkpoint once more, so that ``model_final.pth`` (not only
    ``model_calibrated.pth``) flags OOD boxes with the calibrated threshold. It does nothing
    when training stopped early or no threshold was calibrated.
    """

    def after_train(self):
        trainer = self.trainer
        if trainer.iter < trainer.max_iter or not trainer.cfg.TEST.OOD.CALIBRATION_DATASET:
            return
        try:
            threshold = float(find_ood_head(trainer.model).calibrated_ood_threshold)
        except TypeError:  # a model without VOS OOD scores
            return
        if math.isfinite(threshold):
            # The trainer's state is saved with the file: give it the iteration the periodic
            # checkpointer wrote model_final.pth at, so that --resume after a longer
            # SOLVER.MAX_ITER continues at max_iter, not one iteration later.
            after_loop_iter, trainer.iter = trainer.iter, trainer.max_iter - 1
            try:
                trainer.checkpointer.save("model_final")
            finally:
                trainer.iter = after_loop_iter


# Buffers whose shapes may differ between checkpoint and model: the VOS feature queues
# (training state, unused at inference) and the Mahalanobis statistics (their class count
# is data, adopted on load).
_SHAPE_FREE_BUFFERS = (".feature_queues.", ".mahalanobis.")


def check_weights_file(weights: str, option: str = "MODEL.WEIGHTS") -> None:
    """Raise when ``weights`` is a local path with no file, or a truncated ``.pth`` file.

    Cheap (no tensor is read): run it before the model is built. Remote paths
    (``detectron2://...``, ``https://...``) and "" are not checked.

    Raises:
        FileNotFoundError: no such file (named, with ``option``).
        UserError: a ``.pth`` file whose zip directory is missing (a truncated copy).
    """
    if weights and "://" not in weights and not os.path.isfile(weights):
        where = "a folder, not a file" if os.path.isdir(weights) else "not found"
        raise FileNotFoundError(f"weights file {weights} ({option}) {where}")
    if weights.endswith(".pth") and os.path.isfile(weights) and not zipfile.is_zipfile(weights):
        with open(weights, "rb") as f:
            legacy_pickle = f.read(1) == b"\x80"  # torch's pre-1.6 format is a plain pickle
        if not legacy_pickle:
            raise UserError(
                f"weights file {weights} ({option}, {os.path.getsize(weights)} bytes) is truncated or "
                "not a torch .pth checkpoint (no zip directory at its end)"
            )


def _load_checkpoint(weights: str):
    """torch.load of a .pth file, with errors that name it (missing, truncated, not a checkpoint)."""
    check_weights_file(weights)
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        size = os.path.getsize(weights)
        first_sentence = str(error).split(". ")[0]
        raise UserError(
            f"weights file {weights} ({size} bytes) cannot be read as a checkpoint: truncated or not a "
            f"torch .pth file ({first_sentence})"
        ) from error


def check_checkpoint_matches_model(weights: str, model) -> None:
    """Raise if a checkpoint's tensors do not have the shapes of the model's.

    detectron2's checkpointer skips mismatched tensors with a warning (right for
    fine-tuning, wrong for evaluation: a model whose class count differs from the
    checkpoint's would silently predict with random layers). Only ``.pth`` files are
    checked; they are read with ``weights_only=True``, which runs no pickled code. The
    VOS feature queues and the Mahalanobis statistics are not compared. A post-hoc OOD score
    state the model was built with must have been fitted on these weights
    (:func:`~vos_det.engine.post_hoc_weights.check_post_hoc_states`).

    Args:
        weights (str): the checkpoint path.
        model (nn.Module): the model built from the config.

    Raises:
        FileNotFoundError: no such file (named).
        UserError: the file is truncated or no checkpoint (named).
        ValueError: naming the file, each mismatched tensor and both shapes.
        UserError: MODEL.OOD.POST_HOC.STATE was fitted on other weights (both named).
    """
    check_weights_file(weights)
    if not weights.endswith(".pth"):
        return
    checkpoint = _load_checkpoint(weights)
    state = checkpoint.get("model", checkpoint)
    model_state = model.state_dict()
    mismatched = [
        f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[name].shape)}"
        for name, value in state.items()
        if name in model_state
        and tuple(value.shape) != tuple(model_state[name].shape)
        and not any(part in name for part in _SHAPE_FREE_BUFFERS)
    ]
    if mismatched:
        raise ValueError(
            f"{weights} does not fit the model built from the config (does "
            f"MODEL.ROI_HEADS.NUM_CLASSES or the box head differ from training?):\n  "
            + "\n  ".join(mismatched)
        )
    check_post_hoc_states(weights, state, model)
