"""The model side of the OOD threshold: read a model's ``is_ood`` rule, store a calibrated
threshold in it, and save the calibrated model.

The threshold itself comes from :func:`vos_det.evaluation.calibration.calibrate`, which sees
only scores. It is written into the model's ``calibrated_ood_threshold`` buffer, saved with the
model's state dict and used by ``is_ood`` from then on (unless
``MODEL.VOS.USE_CALIBRATED_THRESHOLD`` is False).
"""
import json
import logging
import os

import torch

from detectron2.utils import comm

from ..evaluation.calibration import Calibration, OODRule
from ..evaluation.ood_summary import OOD_RESULTS_FILE
from ..evaluation.report import write_json
from ..utils.file_io import atomic_open

__all__ = [
    "CALIBRATED_MODEL_FILE",
    "THRESHOLD_FILE",
    "find_ood_head",
    "keep_calibration",
    "ood_rule_of",
    "save_calibrated_model",
    "set_ood_threshold",
]

logger = logging.getLogger(__name__)

# Files written next to each other in the output folder by save_calibrated_model.
CALIBRATED_MODEL_FILE = "model_calibrated.pth"
THRESHOLD_FILE = "ood_threshold.json"


def find_ood_head(model):
    """The module of ``model`` that holds the ``calibrated_ood_threshold`` buffer.

    Raises:
        TypeError: no such module (a model without VOS OOD scores), or several.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    heads = [m for m in model.modules() if "calibrated_ood_threshold" in dict(m.named_buffers(recurse=False))]
    if len(heads) != 1:
        raise TypeError(
            f"expected one module with a calibrated_ood_threshold buffer (the VOS box "
            f"predictor), found {len(heads)} in {type(model).__name__}"
        )
    return heads[0]


def ood_rule_of(model):
    """The ``is_ood`` rule of ``model`` (:class:`OODRule`); None for a model without OOD head."""
    try:
        head = find_ood_head(model)
    except TypeError:
        return None
    return OODRule(head.ood_score, float(head.current_ood_threshold()), float(head.calibrated_ood_threshold))


def set_ood_threshold(model, calibration: Calibration):
    """Store ``calibration.threshold`` in the model's ``calibrated_ood_threshold`` buffer.

    Raises:
        TypeError: the model has no OOD head.
        ValueError: the calibration is of another score than the model's ``is_ood``.
    """
    head = find_ood_head(model)
    if calibration.ood_score != head.ood_score:
        raise ValueError(
            f"the calibration is of score {calibration.ood_score!r}, the model's is_ood uses {head.ood_score!r}"
        )
    head.calibrated_ood_threshold.fill_(calibration.threshold)
    if not getattr(head, "use_calibrated_threshold", True):
        logger.warning(
            "the calibrated threshold is stored, but MODEL.VOS.USE_CALIBRATED_THRESHOLD is "
            "False: is_ood keeps using MODEL.VOS.OOD_THRESHOLD"
        )


def save_calibrated_model(model, output_dir: str, calibration: Calibration, weights: str = ""):
    """Write the model (with its calibrated threshold) and a small JSON next to it.

    Files: ``<output_dir>/model_calibrated.pth`` (``{"model": state_dict}``, loadable by
    DetectionCheckpointer and ``torch.load(weights_only=True)``) and
    ``<output_dir>/ood_threshold.json``. Neither touches ``last_checkpoint``.

    Returns:
        dict: ``{"model": path, "json": path}``.
    """
    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, CALIBRATED_MODEL_FILE)
    json_path = os.path.join(output_dir, THRESHOLD_FILE)
    state = getattr(model, "module", model).state_dict()
    with atomic_open(model_path, "wb") as f:
        torch.save({"model": state}, f)
    with atomic_open(json_path, "w") as f:
        json.dump({**calibration.to_dict(), "weights": weights, "calibrated_model": model_path}, f, indent=2)
    return {"model": model_path, "json": json_path}


def keep_calibration(model, report, output_dir: str, weights: str = ""):
    """Store the threshold an evaluation calibrated in the model, and save the model with it.

    Args:
        model (nn.Module): the evaluated model.
        report (dict): the evaluation's report (nothing is done when it has no
            ``calibration``); from the main process, the files are added under
            ``calibration.files`` and ``<output_dir>/ood_results.json`` is written again.
        output_dir (str): where the model, ``ood_threshold.json`` and the report go.
        weights (str): the weights the model was loaded from, recorded in the JSON.
    """
    if not report.get("calibration"):
        return
    calibration = Calibration.from_dict(report["calibration"])
    set_ood_threshold(model, calibration)
    if not comm.is_main_process():
        return
    paths = save_calibrated_model(model, output_dir, calibration, weights)
    logger.info("Calibrated model written to %s (threshold also in %s)", paths["model"], paths["json"])
    report["calibration"]["files"] = paths
    write_json(report, os.path.join(output_dir, OOD_RESULTS_FILE))
