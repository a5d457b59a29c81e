"""Trainer: detectron2's DefaultTrainer with ID detection metrics plus per-box OOD metrics."""
import json
import logging
import os
from collections import OrderedDict

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    PascalVOCDetectionEvaluator,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.utils import comm

from ..data.resumable_sampler import ResumableTrainingSampler
from ..evaluation.box_scores import BoxOODScoreCollector
from ..evaluation.ood_metrics import ood_metrics
from ..evaluation.report import format_ood_table
from .checkpoint import AtomicWritePathManager, RandomState

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)

OOD_RESULTS_FILE = "ood_results.json"
FPR95_CONVENTION = (
    "FPR95: ID is the positive class, the percentage of OOD boxes accepted as ID at the "
    "threshold that keeps 95% of ID boxes; larger OOD score = more OOD"
)


def _numeric(metrics):
    """The float entries of a metrics dict (detectron2's EvalHook accepts only numbers)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


class Trainer(DefaultTrainer):
    """DefaultTrainer whose evaluation also scores every selected box as ID or OOD.

    ``test`` runs the model once over each ID set of ``DATASETS.TEST`` (detection metrics
    from the dataset's own evaluator, plus the OOD scores of its boxes) and once over each
    set of ``DATASETS.OOD_TEST`` (OOD scores only), then reports FPR95 / AUROC / AUPR for
    every OOD score the model outputs, for each (ID set, OOD set) pair. The results are
    also written to ``OUTPUT_DIR/ood_results.json`` with the FPR95 convention.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        # Checkpoints appear whole or not at all, and carry the random state for --resume.
        self.checkpointer.path_manager = AtomicWritePathManager(self.checkpointer.path_manager)
        self.checkpointer.add_checkpointable("random_state", RandomState())

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """The detection train loader, with a sampler that resumes at ``start_iter``.

        With a fixed ``cfg.SEED`` (>= 0) the image order and the loader's worker seeds do
        not depend on the global random state, so a resumed run sees the same batches as
        an uninterrupted one.
        """
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        for name in cfg.DATASETS.TRAIN:
            class_names = MetadataCatalog.get(name).get("thing_classes", None)
            if class_names is not None and len(class_names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
                raise ValueError(
                    f"MODEL.ROI_HEADS.NUM_CLASSES={cfg.MODEL.ROI_HEADS.NUM_CLASSES} but the "
                    f"training set {name!r} has {len(class_names)} classes: {list(class_names)}"
                )
        seed = cfg.SEED if cfg.SEED >= 0 else None
        sampler = ResumableTrainingSampler(
            len(dataset), seed=seed, start_position=start_iter * cfg.SOLVER.IMS_PER_BATCH
        )
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, seed=seed)

    def resume_or_load(self, resume=True):
        """As DefaultTrainer's; a resumed run also continues the image stream where it stopped."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            self._trainer.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The detection evaluator of an ID set, chosen by its metadata's evaluator_type."""
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        raise ValueError(
            f"no evaluator for dataset {dataset_name!r}: its metadata evaluator_type is "
            f"{evaluator_type!r}; expected 'pascal_voc' or 'coco'"
        )

    @classmethod
    def _collect(cls, cfg, model, dataset_name, detection_evaluator=None):
        collector = BoxOODScoreCollector(cfg.TEST.OOD.SCORE_THRESHOLD)
        evaluators = [collector] if detection_evaluator is None else [detection_evaluator, collector]
        loader = cls.build_test_loader(cfg, dataset_name)
        results = inference_on_dataset(model, loader, DatasetEvaluators(evaluators))
        return results, collector.scores

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate ID detection quality and per-box OOD detection.

        Args:
            cfg (CfgNode): the config.
            model (nn.Module): the detector.
            evaluators (list[DatasetEvaluator], optional): detection evaluators, one per
                set of DATASETS.TEST; built with :meth:`build_evaluator` when None.

        Returns:
            OrderedDict: ``{id_set: {"bbox": {...}}, "ood": {id_set: {ood_set: {score:
            metrics}}}}``.
        """
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(
                f"got {len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} datasets in DATASETS.TEST"
            )
        results = OrderedDict()
        id_scores = OrderedDict()
        for index, name in enumerate(cfg.DATASETS.TEST):
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, name)
            detection_results, id_scores[name] = cls._collect(cfg, model, name, evaluator)
            detection_results.pop("ood_boxes", None)
            results[name] = detection_results
            if comm.is_main_process():
                logger.info("Detection results on %s:", name)
                print_csv_format(detection_results)
        ood_scores = OrderedDict(
            (name, cls._collect(cfg, model, name)[1]) for name in cfg.DATASETS.OOD_TEST
        )
        if ood_scores:
            results["ood"] = {
                id_name: {
                    ood_name: {
                        score: _numeric(ood_metrics(id_scores[id_name][score], ood[score]))
                        for score in id_scores[id_name]
                        if len(id_scores[id_name][score]) and len(ood.get(score, ()))
                    }
                    for ood_name, ood in ood_scores.items()
                }
                for id_name in id_scores
            }
            if comm.is_main_process():
                logger.info(
                    "OOD detection over the boxes with class score >= %s (%s):\n%s",
                    cfg.TEST.OOD.SCORE_THRESHOLD,
                    FPR95_CONVENTION,
                    format_ood_table(results["ood"]),
                )
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            report = {
                "results": results,
                "convention": FPR95_CONVENTION,
                "box_selection": f"detections with class score >= {cfg.TEST.OOD.SCORE_THRESHOLD}",
            }
            with open(os.path.join(cfg.OUTPUT_DIR, OOD_RESULTS_FILE), "w") as f:
                json.dump(report, f, indent=2)
        return results
