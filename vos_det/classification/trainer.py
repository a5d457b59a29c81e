"""ClassificationTrainer: the vos_det Trainer for VOSImageClassifier (images, not boxes)."""
import logging
import os
from collections import OrderedDict

import numpy as np
from tabulate import tabulate

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

from ..data.resumable_sampler import ResumableTrainingSampler
from ..engine.trainer import Trainer
from ..evaluation.calibration import calibrate_threshold, save_calibrated_model
from ..evaluation.ood_metrics import ood_metrics
from ..evaluation.plots import plot_roc_curves, plot_score_histograms, safe_file_name
from ..evaluation.protocol import FPR95_CONVENTION, OOD_RESULTS_FILE, PLOTS_DIR
from ..evaluation.report import format_ood_table, write_json
from .evaluation import ClassificationOODEvaluator
from .image_folder import register_image_folders_from_config
from .mapper import ClassificationDatasetMapper

__all__ = ["ClassificationTrainer", "IMAGE_FPR95_CONVENTION"]

logger = logging.getLogger(__name__)

IMAGE_FPR95_CONVENTION = FPR95_CONVENTION.replace("boxes", "images")
_OOD_POSITIVE_TEXT = (
    "FPR95 (OOD pos.): OOD is the positive class (OpenOOD convention), the percentage of ID "
    "images flagged OOD at the threshold that catches 95% of OOD images"
)
_SAMPLE_SELECTION = "every image of each set is scored (the whole image is the one box)"
# Defaults of the TEST.OOD keys read here, for configs made before those keys existed.
_DEFAULT_FPR95_METHOD = "first_at_least"
_DEFAULT_ID_KEEP = 0.95


def _numeric(metrics):
    """The float entries of a metrics dict (detectron2's EvalHook accepts only numbers)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))}


def _check_datasets(cfg):
    """Refuse training / ID test sets whose classes differ from the model's, naming them."""
    num_classes = cfg.MODEL.VOS_CLASSIFIER.NUM_CLASSES
    train_classes = None
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        metadata = MetadataCatalog.get(name)
        if metadata.get("ood_role", "id") != "id":
            raise ValueError(
                f"dataset {name!r} in DATASETS.TRAIN / DATASETS.TEST has ood_role "
                f"{metadata.get('ood_role')!r}; OOD sets go to DATASETS.OOD_TEST"
            )
        class_names = metadata.get("thing_classes", None)
        if class_names is None:
            continue
        if len(class_names) != num_classes:
            raise ValueError(
                f"MODEL.VOS_CLASSIFIER.NUM_CLASSES={num_classes} but dataset {name!r} has "
                f"{len(class_names)} classes: {list(class_names)}"
            )
        if train_classes is None:
            train_classes = list(class_names)
        elif list(class_names) != train_classes:
            raise ValueError(
                f"dataset {name!r} has classes {list(class_names)}, not those of the training "
                f"set, {train_classes}"
            )


class ClassificationTrainer(Trainer):
    """The vos_det :class:`Trainer` for :class:`VOSImageClassifier`.

    Same checkpointing, resuming and hooks; the data are classification dataset dicts
    mapped by :class:`ClassificationDatasetMapper`, and :meth:`test` reports accuracy on each
    ID set of ``DATASETS.TEST`` and FPR95 / AUROC / AUPR of every OOD score of the images
    of each ``DATASETS.OOD_TEST`` set against those of each ID set (every image is scored).
    """

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """The classification train loader, resuming at ``start_iter`` (see Trainer)."""
        register_image_folders_from_config(cfg)
        _check_datasets(cfg)
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        seed = cfg.SEED if cfg.SEED >= 0 else None
        sampler = ResumableTrainingSampler(
            len(dataset), seed=seed, start_position=start_iter * cfg.SOLVER.IMS_PER_BATCH
        )
        return build_detection_train_loader(
            cfg,
            dataset=dataset,
            mapper=ClassificationDatasetMapper(cfg, is_train=True),
            sampler=sampler,
            seed=seed,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        register_image_folders_from_config(cfg)
        return build_detection_test_loader(
            cfg,
            dataset_name,
            mapper=ClassificationDatasetMapper(cfg, is_train=False),
            batch_size=cfg.TEST.CLASSIFICATION.IMS_PER_BATCH,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Accuracy and OOD-score collection on an ID set."""
        class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        return ClassificationOODEvaluator(class_names, compute_accuracy=True)

    @classmethod
    def _run(cls, cfg, model, dataset_name, evaluator):
        """One inference pass: (the evaluator's results, OOD scores by name)."""
        results = inference_on_dataset(model, cls.build_test_loader(cfg, dataset_name), evaluator)
        return results["classification"], evaluator.scores

    @classmethod
    def calibrate(cls, cfg, model, dataset_name):
        """Calibrate the model's OOD threshold on the images of an ID validation set.

        The threshold on the model's ``ood_score`` keeps ``TEST.OOD.CALIBRATION_ID_KEEP``
        (95%) of the images as ID; it is stored in the model and, from the main process,
        saved with it to ``OUTPUT_DIR/model_calibrated.pth`` (see
        :mod:`vos_det.evaluation.calibration`).

        Returns:
            Calibration
        """
        if MetadataCatalog.get(dataset_name).get("ood_role", "id") != "id":
            raise ValueError(f"calibration set {dataset_name!r} must be an ID set (ood_role 'id')")
        _, scores = cls._run(
            cfg, model, dataset_name, ClassificationOODEvaluator(compute_accuracy=False)
        )
        head = getattr(model, "module", model).predictor
        calibration = calibrate_threshold(
            model,
            scores[head.ood_score],
            cfg.TEST.OOD.get("CALIBRATION_ID_KEEP", _DEFAULT_ID_KEEP),
            dataset=dataset_name,
            box_selection=_SAMPLE_SELECTION,
        )
        description = calibration.describe().replace("boxes", "images")
        logger.info("Calibration on %s: %s", dataset_name, description)
        if comm.is_main_process():
            save_calibrated_model(model, cfg.OUTPUT_DIR, calibration, cfg.MODEL.WEIGHTS)
        return calibration

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate accuracy on the ID sets and per-image OOD detection.

        With ``TEST.OOD.CALIBRATION_DATASET`` set, the OOD threshold is first calibrated on
        that ID set (so ``is_ood`` and the ``is_ood_rate`` figures use it). The text report is
        logged, the JSON written to ``OUTPUT_DIR/ood_results.json`` and, with
        ``TEST.OOD.PLOTS``, ROC curves and score histograms to ``OUTPUT_DIR/ood_plots``.

        Args:
            cfg (CfgNode): the config.
            model (nn.Module): the classifier.
            evaluators (list[ClassificationOODEvaluator], optional): one per set of
                DATASETS.TEST; built with :meth:`build_evaluator` when None.

        Returns:
            OrderedDict: nested dicts of floats: ``{id_set: {"classification": {"accuracy",
            "accuracy_<class>", "is_ood_rate", "num_images"}}, "ood_sets": {ood_set: {...}},
            "ood": {id_set: {ood_set: {score: metrics}}}, "calibration": {...}}``.
        """
        register_image_folders_from_config(cfg)
        _check_datasets(cfg)
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                f"got {len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} datasets in "
                "DATASETS.TEST"
            )
        fpr_method = cfg.TEST.OOD.get("FPR95_METHOD", _DEFAULT_FPR95_METHOD)
        calibration_dataset = cfg.TEST.OOD.get("CALIBRATION_DATASET", "")
        calibration = cls.calibrate(cfg, model, calibration_dataset) if calibration_dataset else None

        results = OrderedDict()
        id_scores = OrderedDict()
        for index, name in enumerate(cfg.DATASETS.TEST):
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, name)
            metrics, id_scores[name] = cls._run(cfg, model, name, evaluator)
            results[name] = {"classification": metrics}
        ood_scores = OrderedDict()
        for name in cfg.DATASETS.OOD_TEST:
            metrics, ood_scores[name] = cls._run(
                cfg, model, name, ClassificationOODEvaluator(compute_accuracy=False)
            )
            results.setdefault("ood_sets", OrderedDict())[name] = metrics
        if ood_scores:
            results["ood"] = {
                id_name: {
                    ood_name: {
                        score: _numeric(
                            ood_metrics(id_scores[id_name][score], ood[score], fpr_method=fpr_method)
                        )
                        for score in id_scores[id_name]
                        if len(id_scores[id_name][score]) and len(ood.get(score, ()))
                    }
                    for ood_name, ood in ood_scores.items()
                }
                for id_name in id_scores
            }
        report = {
            "results": results,
            "convention": f"{IMAGE_FPR95_CONVENTION} (FPR95 method {fpr_method}). {_OOD_POSITIVE_TEXT}.",
            "sample_selection": _SAMPLE_SELECTION,
        }
        if calibration is not None:
            results["calibration"] = {
                "threshold": float(calibration.threshold),
                "kept_percent": 100.0 * calibration.kept_fraction,
            }
            report["calibration"] = {
                **calibration.to_dict(),
                "description": calibration.describe().replace("boxes", "images"),
            }
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            if cfg.TEST.OOD.get("PLOTS", False) and ood_scores:
                report["plots"] = cls._draw(cfg, id_scores, ood_scores, calibration, model)
            write_json(report, os.path.join(cfg.OUTPUT_DIR, OOD_RESULTS_FILE))
            logger.info("Classification OOD evaluation:\n%s", format_classification_report(report))
        return results

    @staticmethod
    def _draw(cfg, id_scores, ood_scores, calibration, model):
        """ROC and histogram PNGs of every (ID set, OOD set) pair; returns their paths."""
        plots_dir = os.path.join(cfg.OUTPUT_DIR, PLOTS_DIR)
        head = getattr(model, "module", model).predictor
        calibrated = None
        if calibration is not None:
            calibrated = (head.ood_score, calibration.threshold)
        elif np.isfinite(float(head.calibrated_ood_threshold)):
            calibrated = (head.ood_score, float(head.calibrated_ood_threshold))
        paths = []
        for id_name, id_values in id_scores.items():
            for ood_name, ood_values in ood_scores.items():
                stem = safe_file_name(id_name, ood_name)
                common = {"id_name": id_name, "ood_name": ood_name, "subtitle": _SAMPLE_SELECTION}
                paths.append(
                    plot_roc_curves(
                        id_values, ood_values, os.path.join(plots_dir, f"roc__{stem}.png"), **common
                    )
                )
                paths.append(
                    plot_score_histograms(
                        id_values,
                        ood_values,
                        os.path.join(plots_dir, f"histograms__{stem}.png"),
                        calibrated=calibrated,
                        **common,
                    )
                )
        return paths


def format_classification_report(report):
    """The text of a classification OOD report: accuracy, OOD table, calibration, plots."""
    results = report["results"]
    id_sets = [
        name for name, value in results.items() if isinstance(value, dict) and "classification" in value
    ]
    rows = [
        [name, results[name]["classification"].get("accuracy", float("nan")),
         results[name]["classification"].get("is_ood_rate", float("nan")),
         int(results[name]["classification"]["num_images"])]
        for name in id_sets
    ]
    rows += [
        [name, float("nan"), metrics.get("is_ood_rate", float("nan")), int(metrics["num_images"])]
        for name, metrics in results.get("ood_sets", {}).items()
    ]
    lines = [
        "Classification (percent; is_ood: images flagged OOD at the model's threshold):",
        tabulate(
            rows, headers=["set", "accuracy", "is_ood", "#images"], floatfmt=".2f", tablefmt="pipe"
        ),
    ]
    if results.get("ood"):
        lines += ["", f"OOD detection, {report['sample_selection']} (percent):"]
        lines.append(format_ood_table(results["ood"], "Convention: " + report["convention"]))
    if report.get("calibration"):
        lines += ["", "Calibration: " + report["calibration"]["description"]]
    if report.get("plots"):
        lines += ["", "Plots:"] + [f"  {path}" for path in report["plots"]]
    return "\n".join(lines)
