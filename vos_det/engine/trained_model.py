"""A trained model, ready to evaluate: its weights file checked, the model built from its
config, the checkpoint checked against the model and its post-hoc OOD state, then loaded.

:func:`check_weights_file` is cheap (no tensor is read), so a tool runs it before anything
else; :func:`load_trained_model` then builds the model and loads a checkpoint only once
:func:`check_checkpoint_matches_model` has found every tensor of the model's shape and the
model's post-hoc state fitted on these weights.

Which weights a post-hoc OOD score state belongs to is a content hash, recorded and checked:
tools/fit_ood_scores.py fits its states (k-NN bank, ViM subspace, class Gaussians, ...) to the
features of one set of weights; with other weights the states describe another feature space
and the scores are meaningless (e.g. a state of ``model_final.pth`` used with
``model_0000399.pth`` flagged 29 of 32 detections OOD, silently). The fit records
:func:`weights_fingerprint` of its checkpoint in the state's info (``weights_sha256``);
:func:`check_post_hoc_states` compares it with the checkpoint a model is loaded from. The hash
covers what the fitted scores read: every tensor of the checkpoint's model except the buffers
that change without changing a box's features (VOS feature queues, Mahalanobis statistics,
the calibrated OOD threshold), so ``model_calibrated.pth`` keeps the hash of the
``model_final.pth`` it was calibrated from.
"""
import hashlib
import logging
import os
import pickle
import zipfile
from typing import Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..errors import UserError
from ..modeling.ood_scores import attach_post_hoc_hooks
from ..modeling.ood_scores.base import FIT_TOOL
from ..modeling.ood_scores.scoring import PostHocScoring
from ..modeling.ood_scores.state_file import read_post_hoc_info

__all__ = [
    "WEIGHTS_HASH_KEY",
    "check_checkpoint_matches_model",
    "check_post_hoc_states",
    "check_weights_file",
    "load_trained_model",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

# Buffers whose shapes may differ between checkpoint and model: the VOS feature queues
# (training state, unused at inference) and the Mahalanobis statistics (their class count
# is data, adopted on load).
_SHAPE_FREE_BUFFERS = (".feature_queues.", ".mahalanobis.")
# The key of the state file's info holding weights_fingerprint of the fitted weights.
WEIGHTS_HASH_KEY = "weights_sha256"
# Dotted name components / names of checkpoint tensors left out of the hash (module docstring).
_UNHASHED_COMPONENTS = ("feature_queues", "mahalanobis", "post_hoc")
_UNHASHED_NAMES = ("calibrated_ood_threshold",)


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


def _hashed(name: str) -> bool:
    parts = name.split(".")
    return not any(part in _UNHASHED_COMPONENTS for part in parts) and parts[-1] not in _UNHASHED_NAMES


def weights_fingerprint(model_state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the names, dtypes, shapes and bytes of a checkpoint's model tensors.

    Args:
        model_state: the checkpoint's ``"model"`` dict (name -> tensor); entries that are not
            tensors and the buffers named in the module docstring are left out.
    """
    digest = hashlib.sha256()
    for name in sorted(model_state):
        value = model_state[name]
        if not torch.is_tensor(value) or not _hashed(name):
            continue
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _state_modules(model):
    model = getattr(model, "module", model)  # DistributedDataParallel
    return [m for m in model.modules() if isinstance(m, PostHocScoring) and m.state_file]


def check_post_hoc_states(weights: str, model_state: Mapping[str, torch.Tensor], model) -> Optional[str]:
    """Refuse a model whose post-hoc state file was fitted on other weights than ``weights``.

    Args:
        weights: the checkpoint file (MODEL.WEIGHTS), named in the message.
        model_state: its ``"model"`` dict.
        model: the model built with ``MODEL.OOD.POST_HOC.STATE``; without a state, nothing
            is checked.

    Returns:
        str or None: the fingerprint of ``weights`` when a state was checked.

    Raises:
        UserError: naming the state file, the weights it was fitted on and ``weights``.
    """
    modules = _state_modules(model)
    if not modules:
        return None
    fingerprint = weights_fingerprint(model_state)
    for module in modules:
        info = read_post_hoc_info(module.state_file)
        fitted_on = info.get("weights", "unknown weights")
        recorded = info.get(WEIGHTS_HASH_KEY)
        if recorded is None:
            logger.warning(
                "MODEL.OOD.POST_HOC.STATE %s records no hash of the weights it was fitted on (%s), so it "
                "cannot be checked against MODEL.WEIGHTS %s; fit it again with %s to have it checked",
                module.state_file, fitted_on, weights, FIT_TOOL,
            )
        elif recorded != fingerprint:
            raise UserError(
                f"MODEL.OOD.POST_HOC.STATE {module.state_file} belongs to other weights: it was fitted on "
                f"{fitted_on} (sha256 {recorded[:12]}), not on MODEL.WEIGHTS {weights} (sha256 "
                f"{fingerprint[:12]}); use the state fitted on these weights, or fit one with "
                f"{FIT_TOOL} --weights {weights}"
            )
    return fingerprint


def check_checkpoint_matches_model(weights: str, model) -> None:
    """Raise if a checkpoint's tensors do not have the shapes of the model's.

    detectron2's checkpointer skips mismatched tensors with a warning (right for
    fine-tuning, wrong for evaluation: a model whose class count differs from the
    checkpoint's would silently predict with random layers). Only ``.pth`` files are
    checked; they are read with ``weights_only=True``, which runs no pickled code. The
    VOS feature queues and the Mahalanobis statistics are not compared. A post-hoc OOD score
    state the model was built with must have been fitted on these weights
    (:func:`check_post_hoc_states`).

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


def load_trained_model(cfg, weights: Optional[str] = None):
    """The model of ``cfg`` with trained weights loaded, in eval mode.

    The checkpoint is checked against the built model before it is loaded
    (:func:`check_checkpoint_matches_model`): detectron2's checkpointer would skip a tensor
    of another shape with a warning and leave that layer random. The forward hooks of a
    fitted post-hoc score (SAFE) are attached.

    Args:
        cfg (CfgNode): the config the weights were trained with (any META_ARCHITECTURE).
        weights (str, optional): the checkpoint; default ``cfg.MODEL.WEIGHTS``.

    Returns:
        nn.Module: the model, in eval mode, on ``cfg.MODEL.DEVICE``.

    Raises:
        FileNotFoundError: no such checkpoint (named).
        UserError: the file is truncated or no checkpoint, or a post-hoc state of the config
            was fitted on other weights.
        ValueError: a tensor of the checkpoint does not have the model's shape (each named).
    """
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    model = attach_post_hoc_hooks(build_model(cfg))
    check_checkpoint_matches_model(weights, model)
    DetectionCheckpointer(model).load(weights)
    return model.eval()
