"""Evaluation of the classifier: accuracy on ID sets and per-image OOD scores for the metrics."""
from collections import defaultdict

import numpy as np
import torch

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["ClassificationOODEvaluator"]


class ClassificationOODEvaluator(DatasetEvaluator):
    """Gathers every image's predicted class and OOD scores; computes accuracy on ID sets.

    After :meth:`evaluate`, :attr:`ood_score_table` maps each OOD score name (larger = more
    OOD) to a (num_images,) float64 array, identical on every rank: the ``ood_score_table`` of the set's
    :class:`vos_det.evaluation.ScoredSet` (every image is kept).
    """

    def __init__(self, class_names=None, compute_accuracy: bool = True):
        """
        Args:
            class_names (list[str], optional): the ID classes, for per-class accuracy.
            compute_accuracy: report accuracy (ID sets, whose ``class_id`` is an ID class).
        """
        self.class_names = list(class_names) if class_names is not None else None
        self.compute_accuracy = compute_accuracy
        self.reset()

    def reset(self):
        self.ood_score_table = {}
        self._score_parts = defaultdict(list)
        self._labels = []
        self._predictions = []
        self._flagged = []

    def process(self, inputs, outputs):
        if not outputs:
            return
        results = [output["classification"] for output in outputs]
        # One device-to-host copy per field and batch, not one per image.
        for name in results[0]["ood_scores"]:
            values = torch.stack([r["ood_scores"][name] for r in results])
            self._score_parts[name].extend(values.detach().double().cpu().tolist())
        self._predictions.extend(torch.stack([r["pred_class"] for r in results]).cpu().tolist())
        self._flagged.extend(torch.stack([r["is_ood"] for r in results]).cpu().tolist())
        self._labels.extend(int(sample.get("class_id", -1)) for sample in inputs)

    def evaluate(self):
        """Gather all ranks' results.

        Returns:
            dict: ``{"classification": {"accuracy": %, "accuracy_<class>": %, "is_ood_rate": %,
            "num_images": n}}`` (accuracy only if ``compute_accuracy``), numbers only.
        """
        gathered = comm.all_gather(
            (dict(self._score_parts), self._labels, self._predictions, self._flagged)
        )
        names = sorted({name for parts, *_ in gathered for name in parts})
        self.ood_score_table = {
            name: np.asarray(
                [v for parts, *_ in gathered for v in parts.get(name, [])], dtype=np.float64
            )
            for name in names
        }
        labels = np.asarray([v for _, part, _, _ in gathered for v in part], dtype=np.int64)
        predictions = np.asarray([v for _, _, part, _ in gathered for v in part], dtype=np.int64)
        flagged = np.asarray([v for _, _, _, part in gathered for v in part], dtype=bool)
        metrics = {"num_images": float(labels.size)}
        if labels.size:
            metrics["is_ood_rate"] = 100.0 * float(flagged.mean())
        if self.compute_accuracy and labels.size:
            metrics["accuracy"] = 100.0 * float((predictions == labels).mean())
            for class_id, name in enumerate(self.class_names or ()):
                of_class = labels == class_id
                if of_class.any():
                    correct = predictions[of_class] == class_id
                    metrics[f"accuracy_{name}"] = 100.0 * float(correct.mean())
        return {"classification": metrics}
