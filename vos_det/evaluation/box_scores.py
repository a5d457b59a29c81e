"""Collect the per-box OOD scores of a detector's outputs over a dataset."""
from collections import defaultdict

import numpy as np

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["BoxOODScoreCollector"]

_FIELD_PREFIX = "ood_scores_"


class BoxOODScoreCollector(DatasetEvaluator):
    """Gathers, for every detection kept by the box-selection rule, each of its OOD scores.

    Box selection: a detection is kept when its top class probability (``scores``) is at
    least ``score_threshold``; no matching to ground truth, so the same rule applies to ID
    and OOD images. Every ``ood_scores_<name>`` field of the kept detections (larger = more
    OOD) is collected under ``<name>``.

    After :meth:`evaluate`, :attr:`scores` maps score names to (num_kept_boxes,) float64
    arrays, identical on every rank.
    """

    def __init__(self, score_threshold: float):
        """
        Args:
            score_threshold: minimum top class probability of a detection to be scored.
        """
        self.score_threshold = score_threshold
        self.scores = {}
        self._parts = defaultdict(list)

    def reset(self):
        self.scores = {}
        self._parts = defaultdict(list)

    def process(self, inputs, outputs):
        for output in outputs:
            instances = output["instances"]
            kept = instances.scores >= self.score_threshold
            for field, values in instances.get_fields().items():
                if field.startswith(_FIELD_PREFIX):
                    name = field[len(_FIELD_PREFIX) :]
                    self._parts[name].append(values[kept].detach().cpu().double().numpy())

    def evaluate(self):
        """Gather the scores of all ranks; returns ``{"ood_boxes": {"num_boxes": n}}``."""
        gathered = comm.all_gather(dict(self._parts))
        names = sorted({name for parts in gathered for name in parts})
        self.scores = {
            name: np.concatenate([a for parts in gathered for a in parts.get(name, [])] or [np.zeros(0)])
            for name in names
        }
        num_boxes = len(next(iter(self.scores.values()))) if self.scores else 0
        return {"ood_boxes": {"num_boxes": float(num_boxes)}}
