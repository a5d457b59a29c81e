"""Which weights a post-hoc OOD score state belongs to: a content hash, recorded and checked.

tools/fit_ood_scores.py fits its states (k-NN bank, ViM subspace, class Gaussians, ...) to the
features of one set of weights; with other weights the states describe another feature space
and the scores are meaningless (e.g. a state of ``model_final.pth`` used with
``model_0000399.pth`` flagged 29 of 32 detections OOD, silently). The fit records
:func:`weights_fingerprint` of its checkpoint in the state's info (``weights_sha256``);
:func:`check_post_hoc_states` compares it with the checkpoint a model is loaded from.

The hash covers what the fitted scores read: every tensor of the checkpoint's model except the
buffers that change without changing a box's features (VOS feature queues, Mahalanobis
statistics, the calibrated OOD threshold), so ``model_calibrated.pth`` keeps the hash of the
``model_final.pth`` it was calibrated from.
"""
import hashlib
import logging
from typing import Mapping, Optional

import torch

from ..errors import UserError
from ..modeling.ood_scores.base import FIT_TOOL
from ..modeling.ood_scores.scoring import PostHocScoring
from ..modeling.ood_scores.state_file import read_post_hoc_info

__all__ = ["WEIGHTS_HASH_KEY", "check_post_hoc_states", "weights_fingerprint"]

logger = logging.getLogger(__name__)

# The key of the state file's info holding weights_fingerprint of the fitted weights.
WEIGHTS_HASH_KEY = "weights_sha256"
# Dotted name components / names of checkpoint tensors left out of the hash (see above).
_UNHASHED_COMPONENTS = ("feature_queues", "mahalanobis", "post_hoc")
_UNHASHED_NAMES = ("calibrated_ood_threshold",)


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
