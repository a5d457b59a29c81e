"""The OOD evaluation of a model, records in and report out: the engine's calls around
:func:`vos_det.evaluation.evaluate_ood`, and the model side of the OOD threshold.

:func:`collect_records` runs the model once over every set of the evaluation
(:func:`vos_det.evaluation.collect_detections`); :func:`evaluate_model` evaluates those records
and keeps what the evaluation calibrated: the threshold comes from
:func:`vos_det.evaluation.calibration.calibrate`, which sees only scores; here it is written
into the model's ``calibrated_ood_threshold`` buffer (:func:`set_ood_threshold`), which is
saved with the model's state dict and used by ``is_ood`` from then on (unless
``MODEL.OOD.USE_CALIBRATED_THRESHOLD`` is False), and the model is saved
(:func:`save_calibrated_model`). ``Trainer.test``, ``tools/ood_eval.py`` and the LazyConfig
evaluation go through both calls.
"""
import json
import logging
import os

import torch

from detectron2.utils import comm

from ..evaluation.calibration import Calibration, OODRule
from ..evaluation.ood_summary import OOD_RESULTS_FILE
from ..evaluation.protocol import check_calibration_set, evaluate_ood
from ..evaluation.records import collect_detections
from ..evaluation.report import write_json
from ..utils.file_io import atomic_open

__all__ = [
    "CALIBRATED_MODEL_FILE",
    "THRESHOLD_FILE",
    "collect_records",
    "evaluate_model",
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
            "the calibrated threshold is stored, but MODEL.OOD.USE_CALIBRATED_THRESHOLD is "
            "False: is_ood keeps using MODEL.OOD.THRESHOLD"
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


def collect_records(cfg, model, build_test_loader, build_evaluator, evaluators=None):
    """One inference pass per set of the OOD evaluation: the records of each.

    The ID sets (``DATASETS.TEST``) are run with their detection evaluator, so their records
    carry the detection metrics of the same pass; the OOD sets (``DATASETS.OOD_TEST``) and
    the calibration set (``TEST.OOD.CALIBRATION_DATASET``, unless also an ID set) without.

    Args:
        cfg (CfgNode): the config.
        model (nn.Module): the detector.
        build_test_loader (callable): ``name -> loader`` of one set.
        build_evaluator (callable): ``name -> DatasetEvaluator`` of an ID set.
        evaluators (list[DatasetEvaluator], optional): one per ID set (None entries allowed),
            used instead of ``build_evaluator``'s.

    Returns:
        dict[str, DetectionRecords]: set name -> its records.
    """
    id_sets = list(cfg.DATASETS.TEST)
    if evaluators is not None and len(evaluators) != len(id_sets):
        raise ValueError(f"got {len(evaluators)} evaluators for {len(id_sets)} ID test sets")
    calibration_set = cfg.TEST.OOD.CALIBRATION_DATASET
    if calibration_set:
        check_calibration_set(calibration_set)  # before any inference pass
    records = {}
    for index, name in enumerate(id_sets):
        evaluator = evaluators[index] if evaluators is not None else None
        evaluator = evaluator if evaluator is not None else build_evaluator(name)
        records[name] = collect_detections(model, build_test_loader(name), evaluator)
    for name in list(cfg.DATASETS.OOD_TEST) + ([calibration_set] if calibration_set else []):
        if name not in records:
            records[name] = collect_detections(model, build_test_loader(name))
    return records


def evaluate_model(cfg, model, records, log_report=True):
    """Evaluate a model's records; store the calibrated threshold in it and save it.

    Args:
        cfg (CfgNode): the config (as :func:`vos_det.evaluation.evaluate_ood` reads it).
        model (nn.Module): the detector the records are of (its ``is_ood`` rule is read, and
            with ``TEST.OOD.CALIBRATION_DATASET`` the calibrated threshold stored in it and
            the model saved as ``OUTPUT_DIR/model_calibrated.pth``).
        records (dict[str, DetectionRecords]): from :func:`collect_records`.
        log_report (bool): log the text report (main process).

    Returns:
        tuple[OrderedDict, dict]: (results, report) of :func:`vos_det.evaluation.evaluate_ood`.
    """
    results, report = evaluate_ood(records, cfg, ood_rule=ood_rule_of(model), log_report=log_report)
    keep_calibration(model, report, cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)
    return results, report
