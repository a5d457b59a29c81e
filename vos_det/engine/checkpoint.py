"""Checkpointing that never leaves a half-written file and restores the random state."""
import random

import numpy as np
import torch

from ..utils.file_io import atomic_open

__all__ = ["AtomicWritePathManager", "RandomState", "check_checkpoint_matches_model"]


class AtomicWritePathManager:
    """Wraps an iopath PathManager so that files opened for writing on local disk are atomic.

    fvcore's Checkpointer writes the checkpoint and the ``last_checkpoint`` tag through its
    ``path_manager``; with this wrapper both appear complete or not at all. Reads, remote
    paths and every other method go to the wrapped manager.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path, mode="r", **kwargs):
        if ("w" in mode or "x" in mode) and "://" not in str(path) and not kwargs:
            return atomic_open(str(path), mode)
        return self._path_manager.open(path, mode, **kwargs)


class RandomState:
    """A checkpointable holding the global random states (torch CPU/CUDA, numpy, Python).

    Added to the trainer's checkpointer, it makes a resumed run draw the random numbers
    the uninterrupted run would have drawn (proposal sampling, augmentations in the main
    process). Everything is stored as tensors, lists and ints, so the checkpoint loads with
    ``torch.load(weights_only=True)``.
    """

    def state_dict(self):
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
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state):
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
        random.setstate(
            (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
        )
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# Buffers whose shapes may differ between checkpoint and model: the VOS feature queues
# (training state, unused at inference) and the Mahalanobis statistics (their class count
# is data, adopted on load).
_SHAPE_FREE_BUFFERS = (".feature_queues.", ".mahalanobis.")


def check_checkpoint_matches_model(weights: str, model) -> None:
    """Raise if a checkpoint's tensors do not have the shapes of the model's.

    detectron2's checkpointer skips mismatched tensors with a warning (right for
    fine-tuning, wrong for evaluation: a model whose class count differs from the
    checkpoint's would silently predict with random layers). Only ``.pth`` files are
    checked; they are read with ``weights_only=True``, which runs no pickled code. The
    VOS feature queues and the Mahalanobis statistics are not compared.

    Args:
        weights (str): the checkpoint path.
        model (nn.Module): the model built from the config.

    Raises:
        ValueError: naming the file, each mismatched tensor and both shapes.
    """
    if not weights.endswith(".pth"):
        return
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
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
