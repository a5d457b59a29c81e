"""The inference pass: every detection of a model over a dataset, with its scores.

:func:`collect_detections` runs the model once over a dataset (detectron2's
``inference_on_dataset``) and returns its :class:`DetectionRecords`: every detection the
model outputs (no score threshold), with its class score and all its OOD scores, and the
detection metrics (AP) of the same pass when a detection evaluator is given
(:func:`build_detection_evaluator`: COCO-style AP / AP50 / AP75 and, for VOC-format sets, the
VOC AP). Everything after it (box selection, calibration, OOD metrics, reports:
:func:`vos_det.evaluation.evaluate_ood`) takes records, not a model, so records can be cached
and evaluated again.

Which OOD scores inference computes: a box predictor with OOD scores (``VOSOutputLayers``)
has a boolean attribute ``compute_all_ood_scores``: False (its default), inference computes
the score behind ``is_ood`` only; True, every OOD score the model has, each in an
``ood_scores_<name>`` field. The pass runs the model inside :func:`computing_all_ood_scores`,
which sets the attribute by name, so the evaluation asks for the scores without importing the
model code.
"""
import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import numpy as np
from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    PascalVOCDetectionEvaluator,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.utils import comm

__all__ = [
    "BoxOODScoreCollector",
    "DetectionRecords",
    "VOCDetectionEvaluator",
    "build_detection_evaluator",
    "collect_detections",
    "computing_all_ood_scores",
    "log_detection_results",
    "numbers_only",
]

logger = logging.getLogger(__name__)

# The boolean attribute of a box predictor that asks it for every OOD score.
_ALL_SCORES_ATTRIBUTE = "compute_all_ood_scores"

# Instances fields named ood_scores_<name> hold one OOD score per box (larger = more OOD).
OOD_FIELD_PREFIX = "ood_scores_"


@dataclass
class DetectionRecords:
    """Every detection of one dataset, as flat arrays of N boxes.

    Attributes:
        image_ids (np.ndarray): (N,) object array, the ``image_id`` of each box's image.
        boxes (np.ndarray): (N, 4) float64, XYXY in the image's original pixel coordinates.
        classes (np.ndarray): (N,) int64, the predicted (contiguous) class.
        scores (np.ndarray): (N,) float64, the detection's class probability
            (``Instances.scores``).
        proposal_scores (np.ndarray): (N,) float64, the maximum foreground probability of the
            detection's proposal (``Instances.proposal_scores``; NaN for a model without it).
            A proposal yields one detection per class above the test score threshold, so a
            secondary-class detection has a proposal score above its own class score.
        ood_score_table (dict[str, np.ndarray]): all OOD scores of the boxes: score name ->
            (N,) float64 OOD scores (larger = more OOD), from the ``ood_scores_<name>``
            fields (``Instances.ood_scores`` is only the one behind ``is_ood``).
        num_images (int): images seen, those without any detection included.
        detection_metrics (dict): ``{task: {metric: float}}`` of the detection evaluator run
            in the same pass (e.g. ``{"bbox": {"AP50": ...}, "voc": {...}}``; empty without
            one, and in a :meth:`subset`).
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    ood_score_table: Dict[str, np.ndarray] = field(default_factory=dict)
    num_images: int = 0
    proposal_scores: Optional[np.ndarray] = None
    detection_metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.proposal_scores is None:
            self.proposal_scores = np.full(self.scores.shape, np.nan)

    def __len__(self):
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, score_names=()):
        """Records of no detection, with the given OOD score names."""
        return cls(
            image_ids=np.zeros(0, dtype=object),
            boxes=np.zeros((0, 4)),
            classes=np.zeros(0, dtype=np.int64),
            scores=np.zeros(0),
            ood_score_table={name: np.zeros(0) for name in score_names},
        )

    def subset(self, mask):
        """The records where the boolean ``mask`` (N,) is True (``num_images`` unchanged)."""
        return DetectionRecords(
            image_ids=self.image_ids[mask],
            boxes=self.boxes[mask],
            classes=self.classes[mask],
            scores=self.scores[mask],
            ood_score_table={name: values[mask] for name, values in self.ood_score_table.items()},
            num_images=self.num_images,
            proposal_scores=self.proposal_scores[mask],
        )

    def select(self, score_threshold: float, score_field: str = "scores"):
        """The detections whose ``score_field`` ("scores": their class probability, or
        "proposal_scores": their proposal's maximum foreground probability) is >=
        ``score_threshold``."""
        return self.subset(getattr(self, score_field) >= score_threshold)

    def to_dict(self) -> dict:
        """Every field as plain arrays, numbers and dicts (for ``torch.save``; see :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DetectionRecords":
        """The records of :meth:`to_dict`'s dict."""
        return cls(**values)


def _image_records(image_id, instances):
    """The arrays of one image's detections (moved to the CPU)."""
    num = len(instances)
    fields = instances.get_fields()
    return {
        "image_ids": np.full(num, image_id, dtype=object),
        "boxes": instances.pred_boxes.tensor.detach().cpu().double().numpy().reshape(num, 4),
        "classes": instances.pred_classes.detach().cpu().numpy().astype(np.int64),
        "scores": instances.scores.detach().cpu().double().numpy(),
        "proposal_scores": (
            instances.proposal_scores.detach().cpu().double().numpy()
            if instances.has("proposal_scores")
            else np.full(num, np.nan)
        ),
        "ood_score_table": {
            name[len(OOD_FIELD_PREFIX) :]: values.detach().cpu().double().numpy()
            for name, values in fields.items()
            if name.startswith(OOD_FIELD_PREFIX)
        },
    }


class BoxOODScoreCollector(DatasetEvaluator):
    """Records every detection of the model (no threshold) as :class:`DetectionRecords`.

    After :meth:`evaluate`, :attr:`records` holds the detections of all ranks (identical on
    every rank). Box selection is done afterwards on the records.
    """

    def __init__(self):
        self.records = DetectionRecords.empty()
        self._parts = []

    def reset(self):
        self.records = DetectionRecords.empty()
        self._parts = []

    def process(self, inputs, outputs):
        for index, (inputs_one, output) in enumerate(zip(inputs, outputs)):
            image_id = inputs_one.get("image_id", inputs_one.get("file_name", index))
            self._parts.append(_image_records(image_id, output["instances"]))

    def evaluate(self):
        """Gather the detections of all ranks into :attr:`records`; returns ``{}``."""
        parts = [part for rank_parts in comm.all_gather(self._parts) for part in rank_parts]
        score_names = sorted({name for part in parts for name in part["ood_score_table"]})
        if not parts:
            self.records = DetectionRecords.empty(score_names)
            return {}
        missing = [sorted(set(score_names) - set(p["ood_score_table"])) for p in parts if len(p["scores"])]
        missing = [m for m in missing if m]
        if missing:
            raise ValueError(f"some detections lack the OOD score fields {missing[0]}")
        self.records = DetectionRecords(
            image_ids=np.concatenate([p["image_ids"] for p in parts]),
            boxes=np.concatenate([p["boxes"] for p in parts]),
            classes=np.concatenate([p["classes"] for p in parts]),
            scores=np.concatenate([p["scores"] for p in parts]),
            proposal_scores=np.concatenate([p["proposal_scores"] for p in parts]),
            ood_score_table={
                name: np.concatenate([p["ood_score_table"].get(name, np.zeros(0)) for p in parts])
                for name in score_names
            },
            num_images=len(parts),
        )
        return {}


@contextlib.contextmanager
def computing_all_ood_scores(model: nn.Module):
    """A context in which the box predictors of ``model`` compute every OOD score they have.

    Args:
        model: a detector, or a module wrapping one (e.g. DistributedDataParallel); its
            modules with a ``compute_all_ood_scores`` attribute get it set to True
            and, on exit, back to their value.
    """
    predictors = [module for module in model.modules() if hasattr(module, _ALL_SCORES_ATTRIBUTE)]
    previous = [getattr(predictor, _ALL_SCORES_ATTRIBUTE) for predictor in predictors]
    for predictor in predictors:
        setattr(predictor, _ALL_SCORES_ATTRIBUTE, True)
    try:
        yield
    finally:
        for predictor, value in zip(predictors, previous):
            setattr(predictor, _ALL_SCORES_ATTRIBUTE, value)


def numbers_only(metrics: dict) -> dict:
    """The numeric entries of a metrics dict, as floats (detectron2's EvalHook takes no other)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))}


def collect_detections(model, data_loader, detection_evaluator=None) -> DetectionRecords:
    """One inference pass: every detection of the dataset, and its detection metrics.

    Args:
        model (nn.Module): the detector (put in eval mode for the pass).
        data_loader: a detectron2 test loader of one dataset.
        detection_evaluator (DatasetEvaluator, optional): e.g. a COCO / VOC evaluator; its
            results become the records' ``detection_metrics`` (none on the ranks where it
            returns nothing).

    Returns:
        DetectionRecords
    """
    collector = BoxOODScoreCollector()
    evaluators = [collector] if detection_evaluator is None else [detection_evaluator, collector]
    with computing_all_ood_scores(model):
        results = inference_on_dataset(model, data_loader, DatasetEvaluators(evaluators))
    records = collector.records
    records.detection_metrics = {
        task: numbers_only(values) for task, values in (results or {}).items() if isinstance(values, dict)
    }
    return records


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """detectron2's PascalVOCDetectionEvaluator reporting under ``"voc"`` instead of ``"bbox"``.

    Its ``AP`` is the mean over IoU .50:.95 of the VOC AP (area under the interpolated
    precision-recall curve, or 11-point for VOC2007), ``AP50`` the VOC AP50; it can then
    sit next to COCOEvaluator's ``"bbox"`` (COCO-style AP) in one DatasetEvaluators.
    """

    def evaluate(self):
        results = super().evaluate()
        return None if results is None else {"voc": results["bbox"]}


def build_detection_evaluator(dataset_name: str, output_dir: str):
    """The detection evaluator of an ID set, chosen by its metadata's ``evaluator_type``.

    * ``"pascal_voc"``: COCOEvaluator (COCO-style AP, AP50, AP75, APs/m/l under ``"bbox"``;
      the dataset is converted to COCO json in ``output_dir`` once per process) and
      :class:`VOCDetectionEvaluator` (under ``"voc"``);
    * ``"coco"``: COCOEvaluator.

    COCOEvaluator falls back to pycocotools' COCOeval when detectron2's fast ``_C`` version
    is not built.

    Args:
        dataset_name: a registered dataset.
        output_dir: folder for the COCO json conversion and the COCO predictions.

    Returns:
        DatasetEvaluator
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in ("pascal_voc", "coco"):
        raise ValueError(
            f"no evaluator for dataset {dataset_name!r}: its metadata evaluator_type is "
            f"{evaluator_type!r}; expected 'pascal_voc' or 'coco'"
        )
    os.makedirs(output_dir, exist_ok=True)
    # allow_cached_coco=False: a regenerated dataset must not be scored against a stale json.
    coco = COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_dir, allow_cached_coco=False)
    if evaluator_type == "coco":
        return coco
    return DatasetEvaluators([coco, VOCDetectionEvaluator(dataset_name)])


def log_detection_results(results, dataset_names):
    """Log, from the main process, each ID set's detection metrics as detectron2's CSV lines.

    Args:
        results (dict): ``{id_set: {task: {metric: value}}}`` (an OOD protocol's results).
        dataset_names (list[str]): the ID sets, in order; those without results are left out.
    """
    if not comm.is_main_process():
        return
    for name in dataset_names:
        if results.get(name):
            logger.info("Detection results on %s:", name)
            print_csv_format(results[name])
