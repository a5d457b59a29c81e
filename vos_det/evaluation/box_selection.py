"""Which detections are scored for OOD: the box selection of the two OOD protocols.

Both protocols keep, on the ID and the OOD test sets alike, every detection whose score
reaches a threshold, without any matching to ground truth; the threshold is the "optimal F1"
threshold of the ID test set. They differ in how that threshold is found and which score of
a detection is compared with it (``TEST.OOD.PROTOCOL``):

* ``"vos_official"``, the released VOS evaluation: the threshold of
  :mod:`.coco_optimal_f1` (COCOeval's precision averaged over IoU .50:.95; VOC ground truth
  in the raw XML coordinates of the release's COCO-json conversion), rounded to 4 decimals
  (``compute_ood_probabilistic_metrics.py:176`` of the release), and a detection is kept when
  its PROPOSAL's maximum foreground probability (``proposal_scores``) is >= the threshold, so
  a confident proposal's detections of other, less likely classes are kept too; with no class
  threshold at all every detection is kept (the release's threshold is then NaN, and
  ``score < NaN`` drops nothing);
* ``"vos_det"`` keeps a detection by its own class score, and its ``"optimal_f1"`` threshold
  is that of :mod:`.voc_optimal_f1` (VOC matching at IoU 0.5).

``"fixed"`` (``TEST.OOD.BOX_SELECTION``, protocol "vos_det") uses a given threshold instead
(``TEST.OOD.SCORE_THRESHOLD``), which is also protocol "vos_det"'s fallback when no class has
a threshold. The ground truth comes from the dataset dicts (:mod:`.ground_truth`).
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from detectron2.data import MetadataCatalog

from .coco_optimal_f1 import coco_optimal_f1_threshold
from .ground_truth import load_ground_truth, voc_xml_coordinates
from .voc_optimal_f1 import MATCH_IOU, optimal_f1_threshold

__all__ = [
    "BOX_SELECTION_RULES",
    "PROTOCOLS",
    "PROTOCOL_DESCRIPTIONS",
    "BoxSelection",
    "select_boxes",
    "select_boxes_for_config",
]

logger = logging.getLogger(__name__)

# Values of cfg.TEST.OOD.PROTOCOL, each with the sentence that names it in reports.
PROTOCOLS = ("vos_official", "vos_det")
PROTOCOL_DESCRIPTIONS = {
    "vos_official": (
        "vos_official (the released VOS evaluation): boxes kept by their proposal's maximum "
        "foreground probability >= the optimal-F1 threshold of COCOeval's precision averaged "
        "over IoU .50:.95; FPR95 at the ROC point whose ID recall is closest to 95%"
    ),
    "vos_det": (
        "vos_det: boxes kept by their own class score (TEST.OOD.BOX_SELECTION); FPR95 read as "
        "TEST.OOD.FPR95_METHOD says"
    ),
}
# Values of cfg.TEST.OOD.BOX_SELECTION (protocol "vos_det").
BOX_SELECTION_RULES = ("optimal_f1", "fixed")
# The rule of protocol "vos_official".
OFFICIAL_RULE = "coco_optimal_f1"
# Decimals the release rounds its threshold to (compute_ood_probabilistic_metrics.py:176).
OFFICIAL_THRESHOLD_DECIMALS = 4


@dataclass
class BoxSelection:
    """A box-selection rule resolved to a score threshold.

    Attributes:
        rule: "coco_optimal_f1" (protocol "vos_official"), "optimal_f1" or "fixed".
        score_threshold: detections whose ``score_field`` is >= this are kept.
        dataset: the set the threshold was determined on ("" for "fixed").
        per_class: for the optimal-F1 rules, per class name, the class's threshold and F1
            (or why it was skipped).
        fallback: True when no class threshold exists: the fixed threshold is used
            ("vos_det"), or every detection is kept ("vos_official", threshold 0).
        protocol: "vos_official" or "vos_det".
        score_field: the score compared with the threshold: "proposal_scores" (the
            proposal's maximum foreground probability, "vos_official") or "scores" (the
            detection's class probability, "vos_det").
    """

    rule: str
    score_threshold: float
    dataset: str = ""
    per_class: Dict[str, dict] = field(default_factory=dict)
    fallback: bool = False
    protocol: str = "vos_det"
    score_field: str = "scores"
    unrounded_threshold: Optional[float] = None

    def apply(self, records):
        """The detections of ``records`` (DetectionRecords) this selection keeps."""
        values = getattr(records, self.score_field)
        if np.isnan(values).any():
            raise ValueError(
                f"protocol {self.protocol!r} selects boxes by Instances.{self.score_field}, which "
                "the model's detections do not carry (a box predictor other than "
                "VOSOutputLayers?): use TEST.OOD.PROTOCOL vos_det"
            )
        return records.select(self.score_threshold, self.score_field)

    def describe(self) -> str:
        """One sentence stating the protocol, the rule and the threshold."""
        compared = (
            "their proposal's maximum foreground probability"
            if self.score_field == "proposal_scores"
            else "their class probability"
        )
        keep = f"detections with {compared} >= {self.score_threshold:.4f} are kept (protocol {self.protocol})"
        if self.fallback and self.protocol == "vos_official":
            return f"no class has an optimal-F1 threshold on {self.dataset}: every detection is kept, as the release"
        if self.rule == "fixed" or self.fallback:
            why = " (optimal F1 undefined: no class has a threshold)" if self.fallback else ""
            return f"fixed score threshold{why}: {keep}"
        used = [name for name, info in self.per_class.items() if "threshold" in info]
        if self.rule == OFFICIAL_RULE:
            how = (
                "per class, the score of highest F1 of COCOeval's precision averaged over IoU .50:.95 "
                f"(mean {self.unrounded_threshold!r} rounded to {OFFICIAL_THRESHOLD_DECIMALS} decimals)"
            )
        else:
            how = f"per class, the score maximising F1 (VOC matching, IoU > {MATCH_IOU}, difficult ignored)"
        return (
            f"optimal F1 on {self.dataset}: {how}, averaged over {len(used)} of "
            f"{len(self.per_class)} classes; {keep}"
        )

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "rule": self.rule,
            "score_field": self.score_field,
            "score_threshold": self.score_threshold,
            "dataset": self.dataset,
            "description": self.describe(),
            "fallback": self.fallback,
            "unrounded_threshold": self.unrounded_threshold,
            "per_class": self.per_class,
        }


def select_boxes(
    rule: str,
    *,
    fixed_threshold: float,
    records=None,
    ground_truth: Optional[dict] = None,
    dataset_name: str = "",
    class_names=None,
    protocol: str = "vos_det",
) -> BoxSelection:
    """Resolve a protocol's box selection to a :class:`BoxSelection`.

    Args:
        rule: one of :data:`BOX_SELECTION_RULES` (protocol "vos_det"; unused by
            "vos_official", whose rule is fixed).
        fixed_threshold: the threshold of "fixed", and the fallback of the optimal-F1 rules
            when no class has a threshold.
        records (DetectionRecords): the ID set's detections (for the optimal-F1 rules).
        ground_truth (dict): its ground truth; loaded from ``dataset_name`` when None.
        dataset_name: the ID set.
        class_names (list[str], optional): names of the class ids (default: the dataset's
            ``thing_classes``).
        protocol: one of :data:`PROTOCOLS`.

    Returns:
        BoxSelection
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"TEST.OOD.PROTOCOL must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "vos_official":
        rule, score_field = OFFICIAL_RULE, "proposal_scores"
    elif rule not in BOX_SELECTION_RULES:
        raise ValueError(f"TEST.OOD.BOX_SELECTION must be one of {BOX_SELECTION_RULES}, got {rule!r}")
    else:
        score_field = "scores"
    if rule == "fixed":
        return BoxSelection("fixed", float(fixed_threshold), protocol=protocol, score_field=score_field)
    if records is None:
        raise ValueError("the optimal-F1 box selection needs the detections of the ID set")
    if ground_truth is None:
        ground_truth = load_ground_truth(dataset_name)
    is_voc = bool(dataset_name) and MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc"
    if rule == OFFICIAL_RULE and is_voc:
        # The release's COCO json of VOC keeps the XML corners (convert_voc_to_coco.py:51-66);
        # detectron2's VOC loader subtracts 1 from xmin and ymin.
        ground_truth = voc_xml_coordinates(ground_truth)
    if class_names is None and dataset_name:
        class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    num_classes = len(class_names) if class_names else None
    compute = coco_optimal_f1_threshold if rule == OFFICIAL_RULE else optimal_f1_threshold
    threshold, per_class = compute(records, ground_truth, num_classes)
    named = {
        (class_names[c] if class_names and c < len(class_names) else str(c)): info
        for c, info in per_class.items()
    }
    unrounded = threshold
    if threshold is None and rule == OFFICIAL_RULE:
        logger.warning("optimal-F1 box selection on %s: no class has a threshold; every detection is kept, "
                       "as the released VOS evaluation does", dataset_name)
        threshold, fallback = 0.0, True
    elif threshold is None:
        logger.warning(
            "optimal-F1 box selection on %s: no class has a threshold; using the fixed "
            "threshold %s (TEST.OOD.SCORE_THRESHOLD)", dataset_name, fixed_threshold
        )
        threshold, fallback = float(fixed_threshold), True
    else:
        fallback = False
        if rule == OFFICIAL_RULE:
            threshold = round(float(threshold), OFFICIAL_THRESHOLD_DECIMALS)
    return BoxSelection(rule, threshold, dataset_name, named, fallback, protocol, score_field, unrounded)


def select_boxes_for_config(cfg, records, dataset_name: str) -> BoxSelection:
    """:func:`select_boxes` with the config's ``TEST.OOD`` protocol, rule and fixed threshold."""
    return select_boxes(
        cfg.TEST.OOD.BOX_SELECTION,
        fixed_threshold=cfg.TEST.OOD.SCORE_THRESHOLD,
        records=records,
        dataset_name=dataset_name,
        protocol=cfg.TEST.OOD.PROTOCOL,
    )
