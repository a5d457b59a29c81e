"""Record every detection of a model over a dataset, with its class score and OOD scores.

One inference pass per dataset: the records keep every detection the model outputs (no
score threshold), so that the box-selection rule (see :mod:`.box_selection`) can be chosen
and applied afterwards, and the same records serve the detection metrics, the OOD metrics
and the calibration.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.utils import comm

from ..utils.ood_score_request import computing_all_ood_scores

__all__ = ["BoxOODScoreCollector", "DetectionRecords", "collect_detections"]

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
        ood_scores (dict[str, np.ndarray]): score name -> (N,) float64 OOD scores
            (larger = more OOD), from the ``ood_scores_<name>`` fields.
        num_images (int): images seen, those without any detection included.
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    ood_scores: Dict[str, np.ndarray] = field(default_factory=dict)
    num_images: int = 0
    proposal_scores: Optional[np.ndarray] = None

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
            ood_scores={name: np.zeros(0) for name in score_names},
        )

    def subset(self, mask):
        """The records where the boolean ``mask`` (N,) is True (``num_images`` unchanged)."""
        return DetectionRecords(
            image_ids=self.image_ids[mask],
            boxes=self.boxes[mask],
            classes=self.classes[mask],
            scores=self.scores[mask],
            ood_scores={name: values[mask] for name, values in self.ood_scores.items()},
            num_images=self.num_images,
            proposal_scores=self.proposal_scores[mask],
        )

    def select(self, score_threshold: float, score_field: str = "scores"):
        """The detections whose ``score_field`` ("scores": their class probability, or
        "proposal_scores": their proposal's maximum foreground probability) is >=
        ``score_threshold``."""
        return self.subset(getattr(self, score_field) >= score_threshold)


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
        "ood_scores": {
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
        score_names = sorted({name for part in parts for name in part["ood_scores"]})
        if not parts:
            self.records = DetectionRecords.empty(score_names)
            return {}
        missing = [sorted(set(score_names) - set(p["ood_scores"])) for p in parts if len(p["scores"])]
        missing = [m for m in missing if m]
        if missing:
            raise ValueError(f"some detections lack the OOD score fields {missing[0]}")
        self.records = DetectionRecords(
            image_ids=np.concatenate([p["image_ids"] for p in parts]),
            boxes=np.concatenate([p["boxes"] for p in parts]),
            classes=np.concatenate([p["classes"] for p in parts]),
            scores=np.concatenate([p["scores"] for p in parts]),
            proposal_scores=np.concatenate([p["proposal_scores"] for p in parts]),
            ood_scores={
                name: np.concatenate([p["ood_scores"].get(name, np.zeros(0)) for p in parts])
                for name in score_names
            },
            num_images=len(parts),
        )
        return {}


def collect_detections(model, data_loader, detection_evaluator=None):
    """One inference pass: the detection metrics (if an evaluator is given) and the records.

    Args:
        model (nn.Module): the detector (put in eval mode for the pass).
        data_loader: a detectron2 test loader of one dataset.
        detection_evaluator (DatasetEvaluator, optional): e.g. a COCO / VOC evaluator.

    Returns:
        tuple[dict, DetectionRecords]: the evaluator's results (``{}`` without one, or on
        the ranks where it returns nothing) and every detection of the dataset.
    """
    collector = BoxOODScoreCollector()
    evaluators = [collector] if detection_evaluator is None else [detection_evaluator, collector]
    with computing_all_ood_scores(model):
        results = inference_on_dataset(model, data_loader, DatasetEvaluators(evaluators))
    return dict(results or {}), collector.records
