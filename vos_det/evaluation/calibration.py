"""Calibration of the OOD threshold (gamma of eq. 9) on ID validation boxes.

The threshold is the one on ``Instances.ood_scores`` (the score named by the box predictor's
``ood_score``, larger = more OOD) that keeps a fraction ``keep`` (95%) of the ID boxes as ID:
a box is flagged ``is_ood`` when its OOD score is > the threshold, so the threshold is the
smallest score value t with ``#{ID boxes with score <= t} >= keep * #ID boxes`` (exactly
``keep`` of the boxes when ``keep * n`` is an integer and the scores are distinct). For the
"vos" score (1 - p(ID)) it is 1 - gamma: a box is OOD when p(ID) < gamma.

It is written into the model's ``calibrated_ood_threshold`` buffer, which is saved with the
model's state dict and used by ``is_ood`` from then on (unless
``MODEL.VOS.USE_CALIBRATED_THRESHOLD`` is False). The same rule serves images (a classifier's
samples): :func:`calibrate_on_samples` takes the kept samples its caller already scored.
"""
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from detectron2.utils import comm

from ..utils.file_io import atomic_open

__all__ = [
    "CALIBRATED_MODEL_FILE",
    "THRESHOLD_FILE",
    "Calibration",
    "calibrate_on_samples",
    "calibrate_threshold",
    "find_ood_head",
    "save_calibrated_model",
    "threshold_keeping",
]

logger = logging.getLogger(__name__)

# Files written next to each other in the output folder by save_calibrated_model.
CALIBRATED_MODEL_FILE = "model_calibrated.pth"
THRESHOLD_FILE = "ood_threshold.json"


def threshold_keeping(id_ood_scores, keep: float = 0.95) -> float:
    """The smallest threshold t such that a fraction >= ``keep`` of the scores are <= t.

    Args:
        id_ood_scores: 1-D array of OOD scores of ID samples (larger = more OOD), no NaN.
        keep: fraction of ID samples to keep, in (0, 1].

    Returns:
        float: the ceil(keep * n)-th smallest score.
    """
    scores = np.sort(np.asarray(id_ood_scores, dtype=np.float64).reshape(-1))
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if scores.size == 0:
        raise ValueError("no ID score to calibrate the OOD threshold on")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} NaN ID score(s): cannot calibrate")
    # round() keeps e.g. 0.95 * 60 = 56.99999999999999 from becoming 57 - 1 boxes.
    count = min(max(math.ceil(round(keep * scores.size, 9)), 1), scores.size)
    return float(scores[count - 1])


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


@dataclass
class Calibration:
    """The result of a calibration.

    Attributes:
        ood_score: name of the score behind ``ood_scores`` / ``is_ood``.
        threshold: a box is OOD when its ood_score is > this.
        gamma: for the "vos" score, the threshold on p(ID) (1 - threshold); else None.
        keep: the requested fraction of ID boxes kept.
        kept_fraction: the fraction actually kept (>= keep; more only with tied scores).
        num_boxes: number of ID boxes calibrated on.
        dataset: the calibration set.
        box_selection: the box-selection rule applied to its detections.
        protocol: the OOD protocol whose box selection that is (``TEST.OOD.PROTOCOL``).
    """

    ood_score: str
    threshold: float
    gamma: Optional[float]
    keep: float
    kept_fraction: float
    num_boxes: int
    dataset: str = ""
    box_selection: str = ""
    protocol: str = ""

    def describe(self, unit: str = "boxes") -> str:
        """One sentence: the threshold and the share of the ID samples (``unit``) it keeps."""
        gamma = f", i.e. gamma = {self.gamma:.4f} on p(ID)" if self.gamma is not None else ""
        return (
            f"OOD threshold on '{self.ood_score}' = {self.threshold:.6g}{gamma}: keeps "
            f"{100 * self.kept_fraction:.2f}% of {self.num_boxes} ID {unit}"
            + (f" of {self.dataset}" if self.dataset else "")
            + f" (target {100 * self.keep:.0f}%); is_ood = ood_score > threshold"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(model, id_ood_scores, keep: float = 0.95, **info) -> Calibration:
    """Compute the threshold keeping ``keep`` of the ID boxes and store it in ``model``.

    Args:
        model (nn.Module): the detector; its OOD head's ``calibrated_ood_threshold`` is set.
        id_ood_scores: 1-D array, the ``ood_scores`` (the head's score) of the ID boxes.
        keep: fraction of ID boxes to keep as ID.
        info: ``dataset``, ``box_selection`` and ``protocol`` strings, recorded in the result.

    Returns:
        Calibration
    """
    head = find_ood_head(model)
    scores = np.asarray(id_ood_scores, dtype=np.float64).reshape(-1)
    threshold = threshold_keeping(scores, keep)
    head.calibrated_ood_threshold.fill_(threshold)
    if not getattr(head, "use_calibrated_threshold", True):
        logger.warning(
            "the calibrated threshold is stored, but MODEL.VOS.USE_CALIBRATED_THRESHOLD is "
            "False: is_ood keeps using MODEL.VOS.OOD_THRESHOLD"
        )
    stored = float(head.calibrated_ood_threshold)  # float32 buffer: compare what is_ood uses
    ood_score = getattr(head, "ood_score", "")
    return Calibration(
        ood_score=ood_score,
        threshold=stored,
        gamma=(1.0 - stored) if ood_score == "vos" else None,
        keep=keep,
        kept_fraction=float(np.mean(scores <= stored)),
        num_boxes=int(scores.size),
        **info,
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


def calibrate_on_samples(model, ood_scores, keep: float, *, unit="boxes", output_dir=None, weights="", **info):
    """Calibrate the OOD threshold on the kept samples of an ID validation set, and save it.

    Args:
        model (nn.Module): the model; its OOD head's threshold buffer is set.
        ood_scores (dict[str, np.ndarray]): score name -> (N,) OOD scores of the kept ID
            samples; the head's own score is used, its NaN values left out.
        keep: fraction of ID samples to keep as ID (``TEST.OOD.CALIBRATION_ID_KEEP``).
        unit: "boxes" or "images", for the messages.
        output_dir (str, optional): where the main process saves the model and
            ``ood_threshold.json`` (:func:`save_calibrated_model`).
        weights: the weights the model was loaded from, recorded in the JSON.
        info: ``dataset``, ``box_selection`` and ``protocol`` strings, recorded in the result.

    Returns:
        Calibration
    """
    head = find_ood_head(model)
    scores = np.asarray(ood_scores.get(head.ood_score, ()), dtype=np.float64).reshape(-1)
    if not scores.size:
        raise ValueError(
            f"no {unit} of {info.get('dataset', 'the calibration set')} kept "
            f"({info.get('box_selection', '')}): cannot calibrate the OOD threshold"
        )
    calibration = calibrate_threshold(model, scores[~np.isnan(scores)], keep, **info)
    logger.info("Calibration on %s: %s", calibration.dataset, calibration.describe(unit))
    if output_dir and comm.is_main_process():
        paths = save_calibrated_model(model, output_dir, calibration, weights)
        logger.info("Calibrated model written to %s (threshold also in %s)", paths["model"], paths["json"])
    return calibration
