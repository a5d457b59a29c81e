"""What the task-specific front of an OOD evaluation hands to its shared back half.

Detection keeps, for each ID test set, the boxes its box selection keeps on that set and on
every OOD set; classification keeps every image (the whole image is the one box). Either way
the back half (:func:`vos_det.evaluation.ood_summary.summarize_ood_evaluation`) sees, per ID
set, one :class:`Comparison` of :class:`ScoredSet` records.
"""
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

__all__ = ["Comparison", "ScoredSet"]


@dataclass
class ScoredSet:
    """The samples of one dataset that enter the OOD metrics, with their OOD scores.

    Attributes:
        ood_score_table (dict[str, np.ndarray]): all OOD scores of the kept samples: score
            name -> (N,) float64 OOD scores of the
            kept samples (larger = more OOD); a NaN is left out of the metrics with a warning.
        num_kept (int): N, the kept samples.
        num_candidates (int): samples before the selection (every detection; for images,
            the images).
        num_images (int): images of the dataset.
    """

    ood_score_table: Dict[str, np.ndarray]
    num_kept: int
    num_candidates: int
    num_images: int


@dataclass
class Comparison:
    """One ID set against every OOD set, their samples kept by the same rule.

    Attributes:
        id_name (str): the ID set.
        sets (dict[str, ScoredSet]): the ID set first, then the OOD sets (a set listed
            both as ID and OOD appears once).
        ood_names (list[str]): the OOD sets, in order; each is paired with the ID set.
        selection (str): one sentence saying how the samples were kept (plots' subtitle).
    """

    id_name: str
    sets: Dict[str, ScoredSet]
    ood_names: List[str]
    selection: str

    @property
    def others(self) -> List[str]:
        """The sets other than the ID set itself (those whose samples may be flagged OOD)."""
        return [name for name in self.sets if name != self.id_name]
