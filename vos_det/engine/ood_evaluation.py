"""The OOD evaluation of a model, records in and report out: the engine's two calls around
:func:`vos_det.evaluation.evaluate_ood`.

:func:`collect_records` runs the model once over every set of the evaluation
(:func:`vos_det.evaluation.collect_detections`); :func:`evaluate_model` evaluates those records
and keeps what the evaluation calibrated in the model (saving it). ``Trainer.test``,
``tools/ood_eval.py`` and the LazyConfig evaluation go through both.
"""
from ..evaluation.protocol import check_calibration_set, evaluate_ood
from ..evaluation.records import collect_detections
from .calibrated_model import keep_calibration, ood_rule_of

__all__ = ["collect_records", "evaluate_model"]


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
