"""The file of fitted post-hoc score states, written next to the weights they belong to."""
import os
import pickle
import zipfile
from typing import Dict

import torch

from ...errors import UserError
from ...utils.file_io import atomic_open
from .base import FIT_TOOL, PostHocScore

__all__ = ["POST_HOC_STATE_FILE", "load_post_hoc_state", "read_post_hoc_info", "save_post_hoc_state"]

# Default file name, next to the weights (tools/fit_ood_scores.py).
POST_HOC_STATE_FILE = "post_hoc_scores.pth"
_FORMAT_VERSION = 1


def save_post_hoc_state(scores: Dict[str, PostHocScore], path: str, feature_dim: int, num_classes: int, **info):
    """Write the fitted state of every fitted score to ``path``, atomically.

    Args:
        scores: name -> scorer; those not fitted (or without state) are left out.
        feature_dim, num_classes: of the model, checked on load.
        info: plain values recorded with the states (e.g. the weights file).
    """
    state = {
        "format_version": _FORMAT_VERSION,
        "feature_dim": feature_dim,
        "num_classes": num_classes,
        "info": info,
        "scores": {name: s.fitted_state() for name, s in scores.items() if s.needs_fit and s.is_fitted()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def _read_state_file(path: str) -> Dict:
    """The dict of a state file, or a UserError naming the file and MODEL.OOD.POST_HOC.STATE
    when it is truncated, not a torch file, or a torch file of something else."""
    problem = None
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut copy lost its directory
        problem = "truncated or not a torch file (no zip directory at its end)"
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
            # torch's message runs over several lines; its first sentence says what broke.
            problem = f"truncated or not a torch file: {str(error).splitlines()[0].split('. ')[0]}"
        else:
            if not isinstance(state, dict) or state.get("format_version") != _FORMAT_VERSION:
                problem = "a torch file, but not a post-hoc OOD score state"
    if problem:
        raise UserError(
            f"MODEL.OOD.POST_HOC.STATE {path} ({os.path.getsize(path)} bytes) cannot be read: {problem}; "
            f"write it again with {FIT_TOOL}"
        )
    return state


def load_post_hoc_state(scores: Dict[str, PostHocScore], path: str, feature_dim: int, num_classes: int) -> Dict:
    """Load the states of ``path`` into the scorers (``torch.load(weights_only=True)``).

    Returns:
        dict: the file's ``info``.

    Raises:
        FileNotFoundError / UserError / ValueError: naming the file, the key and the problem
            (missing; truncated or not a state file; fitted to another model shape).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"post-hoc OOD score state not found: {path} (MODEL.OOD.POST_HOC.STATE); "
            f"write it with {FIT_TOOL}"
        )
    state = _read_state_file(path)
    if (state["feature_dim"], state["num_classes"]) != (feature_dim, num_classes):
        raise ValueError(
            f"{path} was fitted to a model with {state['feature_dim']}-d box features and "
            f"{state['num_classes']} classes, but this model has {feature_dim}-d features and "
            f"{num_classes} classes: run {FIT_TOOL} for these weights"
        )
    unknown = sorted(set(state["scores"]) - set(scores))
    if unknown:
        raise ValueError(f"{path} holds states of unknown scores {unknown}")
    for name, score_state in state["scores"].items():
        scores[name].load_fitted_state(score_state)
    return state["info"]


def read_post_hoc_info(path: str) -> Dict:
    """The ``info`` a state file records (the weights it was fitted on, ...), nothing loaded.

    Raises:
        UserError: the file is truncated or not a state file (named).
    """
    return _read_state_file(path)["info"]
