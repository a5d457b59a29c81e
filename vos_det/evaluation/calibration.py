"""Calibration of the OOD threshold (gamma of eq. 9) on ID validation boxes.

The threshold is the one on ``Instances.ood_scores`` (the score named by the box predictor's
``ood_score``, larger = more OOD) that keeps a fraction ``keep`` (95%) of the ID boxes as ID:
a box is flagged ``is_ood`` when its OOD score is > the threshold, so the threshold is the
smallest score value t with ``#{ID boxes with score <= t} >= keep * #ID boxes`` (exactly
``keep`` of the boxes when ``keep * n`` is an integer and the scores are distinct). For the
"vos" score (1 - p(ID)) it is 1 - gamma: a box is OOD when p(ID) < gamma.

It is written into the model's ``calibrated_ood_threshold`` buffer, which is saved with the
model's state dict and used by ``is_ood`` from then on (unless
``MODEL.VOS.USE_CALIBRATED_THRESHOLD`` is False).
"""
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.utils import comm

from ..utils.file_io import atomic_open
from .box_scores import collect_detections
from .box_selection import select_boxes_for_config

__all__ = [
    "CALIBRATED_MODEL_FILE",
    "THRESHOLD_FILE",
    "Calibration",
    "calibrate_on_dataset",
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

    def describe(self) -> str:
        gamma = f", i.e. gamma = {self.gamma:.4f} on p(ID)" if self.gamma is not None else ""
        return (
            f"OOD threshold on '{self.ood_score}' = {self.threshold:.6g}{gamma}: keeps "
            f"{100 * self.kept_fraction:.2f}% of {self.num_boxes} ID boxes"
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


def calibrate_on_dataset(
    cfg, model, dataset_name: str, *, records=None, build_test_loader=None, output_dir=None
) -> Calibration:
    """Calibrate the OOD threshold of ``model`` on an ID validation set.

    The detections are selected by the box selection of ``cfg.TEST.OOD.PROTOCOL`` applied to
    that set itself (its optimal-F1 threshold uses its ground truth), and the threshold keeps
    ``cfg.TEST.OOD.CALIBRATION_ID_KEEP`` of them. With ``output_dir``, the model and
    ``ood_threshold.json`` are saved there (main process only).

    Args:
        cfg (CfgNode): the config.
        model (nn.Module): the detector; its threshold buffer is set.
        dataset_name: a registered ID set with ground truth.
        records (DetectionRecords, optional): its detections, if already collected.
        build_test_loader (callable, optional): ``(cfg, name) -> loader``; detectron2's by default.
        output_dir (str, optional): where to save the calibrated model.

    Returns:
        Calibration
    """
    role = MetadataCatalog.get(dataset_name).get("ood_role", "id")
    if role != "id":
        raise ValueError(f"calibration set {dataset_name!r} has ood_role {role!r}; it must be an ID set")
    if records is None:
        loader = (build_test_loader or build_detection_test_loader)(cfg, dataset_name)
        _, records = collect_detections(model, loader)
    selection = select_boxes_for_config(cfg, records, dataset_name)
    head = find_ood_head(model)
    selected = selection.apply(records)
    scores = selected.ood_scores.get(head.ood_score)
    if scores is None or not len(scores):
        raise ValueError(
            f"no detection of {dataset_name} is kept by the box selection ({selection.describe()}): "
            "cannot calibrate the OOD threshold"
        )
    calibration = calibrate_threshold(
        model,
        scores[~np.isnan(scores)],
        cfg.TEST.OOD.CALIBRATION_ID_KEEP,
        dataset=dataset_name,
        box_selection=selection.describe(),
        protocol=selection.protocol,
    )
    logger.info("Calibration on %s: %s", dataset_name, calibration.describe())
    if output_dir and comm.is_main_process():
        paths = save_calibrated_model(model, output_dir, calibration, cfg.MODEL.WEIGHTS)
        logger.info("Calibrated model written to %s (threshold also in %s)", paths["model"], paths["json"])
    return calibration
