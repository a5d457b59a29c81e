"""Evaluate a trained checkpoint with the OOD protocol (what ``tools/ood_eval.py`` runs).

    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.WEIGHTS", "model_final.pth"], freeze=False)
    cfg = ood_eval_config(cfg, ood_datasets=["coco_ood_val"], calibrate="", output_dir="out")
    results, report = evaluate_checkpoint(cfg)
    print(format_ood_report(report))
"""
import os

from detectron2.data import MetadataCatalog

from ..data import check_class_names, register_from_cli
from ..data.availability import check_dataset_files, load_datasets_now
from ..errors import ConfigError
from ..utils.file_io import check_writable_dir
from .trained_model import check_weights_file
from .trained_model import load_trained_model
from .trainer import Trainer

__all__ = ["DEFAULT_OUTPUT_SUBDIR", "evaluate_checkpoint", "ood_eval_config"]

# The output folder under OUTPUT_DIR when none is given.
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


def evaluate_checkpoint(cfg):
    """Build the model, load MODEL.WEIGHTS and run the OOD protocol into ``cfg.OUTPUT_DIR``.

    Args:
        cfg (CfgNode): from :func:`ood_eval_config`.

    Returns:
        tuple[dict, dict]: (results, report) of :func:`vos_det.evaluation.evaluate_ood`
        (the report not logged: format it with :func:`vos_det.evaluation.format_ood_report`).
    """
    return Trainer.evaluate_ood_of(cfg, load_trained_model(cfg), log_report=False)
