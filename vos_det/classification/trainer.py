"""ClassificationTrainer: the vos_det Trainer for VOSImageClassifier (images, not boxes)."""
from collections import OrderedDict

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from ..data.catalog import get_ood_role
from ..engine.ood_evaluation import find_ood_head, keep_calibration, ood_rule_of, set_ood_threshold
from ..engine.trainer import Trainer
from ..engine.trainer_registry import register_trainer
from ..evaluation.calibration import calibrate
from ..evaluation.report import Comparison, ScoredSet, summarize_ood_evaluation
from .evaluation import ClassificationOODEvaluator
from .image_folder import register_image_folders_from_config
from .mapper import ClassificationDatasetMapper

__all__ = ["ClassificationTrainer"]

# How the samples of a classification OOD evaluation are chosen (the report says it).
_SAMPLE_SELECTION = "every image of each set is scored (the whole image is the one box)"
# Defaults of the TEST.OOD keys read here, for configs made before those keys existed.
_DEFAULT_FPR95_METHOD = "first_at_least"
_DEFAULT_ID_KEEP = 0.95


@register_trainer("VOSImageClassifier")
class ClassificationTrainer(Trainer):
    """The vos_det :class:`Trainer` for :class:`VOSImageClassifier`.

    Same checkpointing, resuming and hooks; the data are classification dataset dicts
    mapped by :class:`ClassificationDatasetMapper`, and :meth:`test` reports accuracy on each
    ID set of ``DATASETS.TEST`` and FPR95 / AUROC / AUPR of every OOD score of the images
    of each ``DATASETS.OOD_TEST`` set against those of each ID set (every image is scored),
    through the back half the detector's evaluation uses
    (:func:`vos_det.evaluation.report.summarize_ood_evaluation`).
    """

    NUM_CLASSES_KEY = "MODEL.VOS_CLASSIFIER.NUM_CLASSES"
    DATASET_NOUN = "dataset"
    FILTER_EMPTY_IMAGES = False  # classification dataset dicts hold no boxes

    @classmethod
    def check_datasets(cls, cfg):
        """Register the ImageFolders of ``DATASETS.IMAGE_FOLDERS``, then check the sets as
        :meth:`Trainer.check_datasets` does."""
        register_image_folders_from_config(cfg)
        super().check_datasets(cfg)

    @classmethod
    def build_mapper(cls, cfg, is_train: bool):
        return ClassificationDatasetMapper(cfg, is_train=is_train)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """The test loader, batched by ``TEST.CLASSIFICATION.IMS_PER_BATCH``."""
        return build_detection_test_loader(
            cfg,
            dataset_name,
            mapper=cls.build_mapper(cfg, is_train=False),
            batch_size=cfg.TEST.CLASSIFICATION.IMS_PER_BATCH,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Accuracy and OOD-score collection on an ID set."""
        class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        return ClassificationOODEvaluator(class_names, compute_accuracy=True)

    @classmethod
    def _collect(cls, cfg, model, dataset_name, evaluator):
        """One inference pass: (the evaluator's figures, every image as a ScoredSet)."""
        metrics = inference_on_dataset(model, cls.build_test_loader(cfg, dataset_name), evaluator)["classification"]
        num_images = int(metrics["num_images"])
        return metrics, ScoredSet(evaluator.ood_score_table, num_images, num_images, num_images)

    @classmethod
    def calibrate(cls, cfg, model, dataset_name):
        """Calibrate the model's OOD threshold on the images of an ID validation set.

        The threshold on the model's ``ood_score`` keeps ``TEST.OOD.CALIBRATION_ID_KEEP``
        (95%) of the images as ID (:func:`vos_det.evaluation.calibration.calibrate`); it is
        stored in the model (:meth:`test` then saves the model).

        Returns:
            Calibration
        """
        if get_ood_role(dataset_name) != "id":
            raise ValueError(f"calibration set {dataset_name!r} must be an ID set (ood_role 'id')")
        _, images = cls._collect(cfg, model, dataset_name, ClassificationOODEvaluator(compute_accuracy=False))
        calibration = calibrate(
            images.ood_score_table,
            find_ood_head(model).ood_score,
            cfg.TEST.OOD.get("CALIBRATION_ID_KEEP", _DEFAULT_ID_KEEP),
            unit="images",
            dataset=dataset_name,
            box_selection=_SAMPLE_SELECTION,
        )
        set_ood_threshold(model, calibration)
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
        cls.check_datasets(cfg)
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                f"got {len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} datasets in "
                "DATASETS.TEST"
            )
        calibration_dataset = cfg.TEST.OOD.get("CALIBRATION_DATASET", "")
        calibration = cls.calibrate(cfg, model, calibration_dataset) if calibration_dataset else None

        results, id_sets, ood_sets = OrderedDict(), OrderedDict(), OrderedDict()
        for index, name in enumerate(cfg.DATASETS.TEST):
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, name)
            metrics, id_sets[name] = cls._collect(cfg, model, name, evaluator)
            results[name] = {"classification": metrics}
        for name in cfg.DATASETS.OOD_TEST:
            metrics, ood_sets[name] = cls._collect(cfg, model, name, ClassificationOODEvaluator(compute_accuracy=False))
            results.setdefault("ood_sets", OrderedDict())[name] = metrics
        comparisons = [
            Comparison(name, OrderedDict([(name, images), *ood_sets.items()]), list(ood_sets), _SAMPLE_SELECTION)
            for name, images in id_sets.items()
        ]
        results, report = summarize_ood_evaluation(
            comparisons,
            unit="images",
            fpr_method=cfg.TEST.OOD.get("FPR95_METHOD", _DEFAULT_FPR95_METHOD),
            ood_rule=ood_rule_of(model),
            output_dir=cfg.OUTPUT_DIR,
            results=results,
            selection_report={"sample_selection": _SAMPLE_SELECTION},
            calibration=calibration,
            draw_plots=cfg.TEST.OOD.get("PLOTS", False),
        )
        keep_calibration(model, report, cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)
        return results
