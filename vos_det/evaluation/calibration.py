"""Calibration of the OOD threshold (gamma of eq. 9) on ID validation samples (boxes or images).

The threshold is the one on the score behind a model's ``is_ood`` (``MODEL.OOD.SCORE``,
larger = more OOD) that keeps a fraction ``keep`` (95%) of the ID samples as ID: a sample is
flagged OOD when its score is > the threshold, so the threshold is the smallest score value t
with ``#{ID samples with score <= t} >= keep * #ID samples`` (exactly ``keep`` of them when
``keep * n`` is an integer and the scores are distinct). For the "vos" score (1 - p(ID)) it is
1 - gamma: a box is OOD when p(ID) < gamma. The same rule gives every other score its own
threshold, from which the report reads each score's false-alarm rate.

:func:`calibrate` only computes; storing the threshold in a model and saving that model is the
engine's (:mod:`vos_det.engine.ood_evaluation`).
"""
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional

import numpy as np

__all__ = ["Calibration", "OODRule", "calibrate", "threshold_keeping"]

logger = logging.getLogger(__name__)


def threshold_keeping(id_ood_scores, keep: float = 0.95) -> float:
    """The smallest threshold t such that a fraction >= ``keep`` of the scores are <= t.

    Args:
        id_ood_scores: 1-D array of OOD scores of ID samples (larger = more OOD), no NaN.
        keep: fraction of ID samples to keep, in (0, 1].

    Returns:
        float: the ceil(keep * n)-th smallest score.
    """
    scores = np.sort(np.asarray(id_ood_scores, dtype=np.float64).reshape(-1))
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if scores.size == 0:
        raise ValueError("no ID score to calibrate the OOD threshold on")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} NaN ID score(s): cannot calibrate")
    # round() keeps e.g. 0.95 * 60 = 56.99999999999999 from becoming 57 - 1 boxes.
    count = min(max(math.ceil(round(keep * scores.size, 9)), 1), scores.size)
    return float(scores[count - 1])


@dataclass
class Calibration:
    """The result of a calibration.

    Attributes:
        ood_score: name of the score behind ``Instances.ood_scores`` / ``is_ood``.
        threshold: a box is OOD when its ood_score is > this.
        gamma: for the "vos" score, the threshold on p(ID) (1 - threshold); else None.
        keep: the requested fraction of ID boxes kept.
        kept_fraction: the fraction actually kept (>= keep; more only with tied scores).
        num_boxes: number of ID boxes calibrated on.
        dataset: the calibration set.
        box_selection: the box-selection rule applied to its detections.
        protocol: the OOD protocol whose box selection that is (``TEST.OOD.PROTOCOL``).
        score_thresholds (dict[str, float]): every score of the calibration samples -> its
            own threshold by the same rule (float64; ``threshold`` is ``ood_score``'s as the
            model's float32 buffer holds it).
    """

    ood_score: str
    threshold: float
    gamma: Optional[float]
    keep: float
    kept_fraction: float
    num_boxes: int
    dataset: str = ""
    box_selection: str = ""
    protocol: str = ""
    score_thresholds: Dict[str, float] = field(default_factory=dict)

    def describe(self, unit: str = "boxes") -> str:
        """One sentence: the threshold and the share of the ID samples (``unit``) it keeps."""
        gamma = f", i.e. gamma = {self.gamma:.4f} on p(ID)" if self.gamma is not None else ""
        return (
            f"OOD threshold on '{self.ood_score}' = {self.threshold:.6g}{gamma}: keeps "
            f"{100 * self.kept_fraction:.2f}% of {self.num_boxes} ID {unit}"
            + (f" of {self.dataset}" if self.dataset else "")
            + f" (target {100 * self.keep:.0f}%); is_ood = ood_score > threshold"
        )

    def to_dict(self) -> dict:
        return asdict(self)



    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        """The calibration of :meth:`to_dict`'s dict (other keys, e.g. a report's, ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass
class OODRule:
    """A model's ``is_ood`` rule: a sample is OOD when its ``ood_score`` is > ``threshold``.

    Attributes:
        ood_score: the score behind ``is_ood`` (``MODEL.OOD.SCORE``).
        threshold: the threshold ``is_ood`` uses now (calibrated, or MODEL.OOD.THRESHOLD).
        calibrated_threshold: the calibrated threshold stored with the model (NaN: none).
    """

    ood_score: str
    threshold: float
    calibrated_threshold: float = float("nan")


def calibrate(ood_score_table, ood_score: str, keep: float, *, unit: str = "boxes", **info) -> Calibration:
    """The thresholds keeping ``keep`` of the kept samples of an ID validation set.

    Args:
        ood_score_table (dict[str, np.ndarray]): all OOD scores of the kept ID samples:
            score name -> (N,) values (larger = more OOD); NaN values are left out.
        ood_score: the score behind the model's ``is_ood``: its threshold is the calibration's.
        keep: fraction of ID samples to keep as ID (``TEST.OOD.CALIBRATION_ID_KEEP``).
        unit: "boxes" or "images", for the messages.
        info: ``dataset``, ``box_selection`` and ``protocol`` strings, recorded in the result.

    Returns:
        Calibration

    Raises:
        ValueError: no sample has a value of ``ood_score``.
    """
    valid = {}
    for name, values in ood_score_table.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        valid[name] = values[~np.isnan(values)]
    scores = valid.get(ood_score, np.zeros(0))
    if not scores.size:
        raise ValueError(
            f"no {unit} of {info.get('dataset', 'the calibration set')} kept with a {ood_score!r} "
            f"score ({info.get('box_selection', '')}): cannot calibrate the OOD threshold"
        )
    # is_ood compares with the model's float32 buffer: the threshold is the value it stores.
    threshold = float(np.float32(threshold_keeping(scores, keep)))
    calibration = Calibration(
        ood_score=ood_score,
        threshold=threshold,
        gamma=(1.0 - threshold) if ood_score == "vos" else None,
        keep=keep,
        kept_fraction=float(np.mean(scores <= threshold)),
        num_boxes=int(scores.size),
        score_thresholds={name: threshold_keeping(values, keep) for name, values in valid.items() if values.size},
        **info,
    )
    logger.info("Calibration on %s: %s", calibration.dataset, calibration.describe(unit))
    return calibration
