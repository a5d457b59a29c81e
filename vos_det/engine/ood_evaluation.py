"""The OOD evaluation of a model, records in and report out: the engine's side of
:func:`vos_det.evaluation.evaluate_ood`, and the model side of the OOD threshold.

:func:`ood_eval_config` makes the config of an evaluation (its OOD and calibration sets, its
output folder), every input checked before any inference. :func:`evaluate_model` is the one
entry point: it runs the model once over every set (:func:`collect_records`, each pass a
:func:`vos_det.evaluation.collect_detections`), evaluates the records and keeps what the
evaluation calibrated: the threshold comes from
:func:`vos_det.evaluation.calibration.calibrate`, which sees only scores; here it is written
into the model's ``calibrated_ood_threshold`` buffer (:func:`set_ood_threshold`), which is
saved with the model's state dict and used by ``is_ood`` from then on (unless
``MODEL.OOD.USE_CALIBRATED_THRESHOLD`` is False), and the model is saved
(:func:`save_calibrated_model`). ``Trainer.test`` and ``tools/ood_eval.py`` (through
``Trainer.evaluate_ood_of``) and the LazyConfig evaluation call it; the OOD leaderboard runs
:func:`collect_records` alone and keeps the records.

    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.WEIGHTS", "model_final.pth"], freeze=False)
    cfg = ood_eval_config(cfg, ood_datasets=["digits_det_ood"], calibrate="", output_dir="out")
    results, report = Trainer.evaluate_ood_of(cfg, load_trained_model(cfg), log_report=False)
    print(format_ood_report(report))
"""
import json
import logging
import os

import torch

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..data import check_class_names, register_from_cli
from ..data.availability import check_dataset_files, load_datasets_now
from ..errors import ConfigError
from ..evaluation.calibration import Calibration, OODRule
from ..evaluation.protocol import check_calibration_set, evaluate_ood
from ..evaluation.records import collect_detections
from ..evaluation.report import OOD_RESULTS_FILE, write_json
from ..utils.file_io import atomic_open, check_writable_dir
from .trained_model import check_weights_file

__all__ = [
    "CALIBRATED_MODEL_FILE",
    "DEFAULT_OUTPUT_SUBDIR",
    "THRESHOLD_FILE",
    "collect_records",
    "evaluate_model",
    "find_ood_head",
    "keep_calibration",
    "ood_eval_config",
    "ood_rule_of",
    "save_calibrated_model",
    "set_ood_threshold",
]

logger = logging.getLogger(__name__)

# Files written next to each other in the output folder by save_calibrated_model.
CALIBRATED_MODEL_FILE = "model_calibrated.pth"
THRESHOLD_FILE = "ood_threshold.json"
# The output folder under OUTPUT_DIR when ood_eval_config is given none.
DEFAULT_OUTPUT_SUBDIR = "ood_eval"


def ood_eval_config(cfg, *, ood_datasets=(), calibrate=None, output_dir=None):
    """The frozen config of an evaluation, every input checked before any inference.

    Args:
        cfg (CfgNode): the model's config, not frozen, with MODEL.WEIGHTS.
        ood_datasets (list[str]): OOD test sets, registered names or ``NAME=JSON:IMAGES``
            specs (registered here); replace DATASETS.OOD_TEST when given.
        calibrate (str, optional): None: no calibration; "": calibrate on
            TEST.OOD.CALIBRATION_DATASET; else the ID validation set to calibrate on.
        output_dir (str, optional): default ``OUTPUT_DIR/ood_eval``.

    Returns:
        CfgNode: the frozen config (DATASETS.OOD_TEST, TEST.OOD.CALIBRATION_DATASET and
        OUTPUT_DIR set).

    Raises:
        ConfigError: no weights, or calibration without a dataset.
        FileNotFoundError, ValueError: a dataset's files or json, the weights, or class names
            differing from the training set's.
        UserError: the output folder is not writable.
    """
    id_dataset = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    ood_datasets = [
        spec if "=" not in spec else register_from_cli(spec, id_dataset=id_dataset) for spec in ood_datasets
    ]
    if ood_datasets:
        cfg.DATASETS.OOD_TEST = tuple(ood_datasets)
    calibration_dataset = ""
    if calibrate is not None:
        calibration_dataset = calibrate or cfg.TEST.OOD.CALIBRATION_DATASET
        if not calibration_dataset:
            raise ConfigError(
                "--calibrate needs an ID validation set: --calibrate DATASET or "
                "TEST.OOD.CALIBRATION_DATASET DATASET"
            )
    cfg.TEST.OOD.CALIBRATION_DATASET = calibration_dataset
    cfg.OUTPUT_DIR = output_dir or os.path.join(cfg.OUTPUT_DIR, DEFAULT_OUTPUT_SUBDIR)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("no weights to evaluate: pass MODEL.WEIGHTS path/to/model_final.pth")
    check_weights_file(cfg.MODEL.WEIGHTS)
    check_dataset_files(cfg.DATASETS.TEST)
    # The OOD and calibration sets are loaded now: a broken json fails before the ID sets run.
    load_datasets_now(list(cfg.DATASETS.OOD_TEST) + [calibration_dataset])
    if id_dataset is not None:
        class_names = MetadataCatalog.get(id_dataset).get("thing_classes", None)
        if class_names is not None:
            for name in list(cfg.DATASETS.TEST) + ([calibration_dataset] if calibration_dataset else []):
                check_class_names(name, class_names)
    check_writable_dir(cfg.OUTPUT_DIR, "output folder")
    return cfg


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


def evaluate_model(cfg, model, build_test_loader, build_evaluator, evaluators=None, log_report=True):
    """The OOD evaluation of a model: its records, their report, the calibration kept.

    Runs the model once over every set (:func:`collect_records`), evaluates the records
    (:func:`vos_det.evaluation.evaluate_ood`, with the model's ``is_ood`` rule) and, with
    ``TEST.OOD.CALIBRATION_DATASET``, stores the calibrated threshold in the model and saves
    it as ``OUTPUT_DIR/model_calibrated.pth`` (:func:`keep_calibration`).

    Args:
        cfg (CfgNode): the config (its sets, the ``TEST.OOD`` keys, ``OUTPUT_DIR`` and
            ``MODEL.WEIGHTS``, recorded with the calibrated model).
        model (nn.Module): the detector.
        build_test_loader (callable): ``name -> loader`` of one set.
        build_evaluator (callable): ``name -> DatasetEvaluator`` of an ID set.
        evaluators (list[DatasetEvaluator], optional): one per ID set, used instead of
            ``build_evaluator``'s (see :func:`collect_records`).
        log_report (bool): log the text report (main process).

    Returns:
        tuple[OrderedDict, dict]: (results, report) of :func:`vos_det.evaluation.evaluate_ood`.
    """
    records = collect_records(cfg, model, build_test_loader, build_evaluator, evaluators)
    results, report = evaluate_ood(records, cfg, ood_rule=ood_rule_of(model), log_report=log_report)
    keep_calibration(model, report, cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)
    return results, report
