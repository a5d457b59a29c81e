"""Load the checkpoints released with the VOS paper into vos_det models.

The authors (github.com/deeplearning-wisc/vos, the pretrained models its main-MLP README links)
publish detectron2 ``model_final.pth`` files: PASCAL VOC vanilla and VOS (R-50-FPN), BDD100k
vanilla and VOS. They are detectron2 models, so the backbone, the RPN, the box head and the
box predictor have vos_det's names already; what differs is

* the VOS parameters, attributes of the release's ROI heads (``roihead_gmm.py`` of main-MLP):
  ``roi_heads.logistic_regression`` (``Sequential(Linear(1, 512), ReLU(), Linear(512, 1))``,
  lines 533-537; ``Linear(1, 2)`` on branch main) and ``roi_heads.weight_energy``
  (``Linear(num_classes, 1)``, line 543, of which only ``relu(weight)`` is used, lines
  735-745), where vos_det has ``roi_heads.box_predictor.uncertainty_classifier`` and
  ``roi_heads.box_predictor.energy_weights`` (K,);
* the class order of VOC: the release trains on its own COCO-json conversion with the classes
  of ``core/datasets/metadata.py:105-128`` (person, bird, cat, ...), detectron2's VOC sets use
  the devkit's alphabetical order (aeroplane, bicycle, ...): the class rows of ``cls_score``
  and ``bbox_pred`` and the energy weights are permuted (the background row stays last);
* the meta-architecture's ``pixel_mean`` / ``pixel_std``, persistent buffers of the release's
  ``GeneralizedRCNNLogisticGMM`` (``plain_generalized_rcnn_logistic_gmm.py:67-68``), which
  vos_det's model sets from ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``: they are checked against the
  config and dropped.

:func:`convert_released_state_dict` accounts for every key: each source key is mapped
(shape checked) or dropped with a reason, each target key is filled or left at its initial
value with a reason (state the release never had: the class queues, calibration, post-hoc
statistics); anything else is one error listing the keys.
"""
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from ..errors import UserError

__all__ = [
    "RELEASED_CLASS_ORDERS",
    "ReleasedConversion",
    "convert_released_checkpoint",
    "convert_released_for_config",
    "convert_released_state_dict",
    "load_released_state_dict",
]

# The release's class order of each benchmark, written with the names of vos_det's datasets:
# VOC as core/datasets/metadata.py:105-128 (COCO names there, from the renaming of
# core/datasets/convert_voc_to_coco.py:38-49: airplane = aeroplane, motorcycle = motorbike,
# dining table = diningtable, potted plant = pottedplant, couch = sofa, tv = tvmonitor);
# BDD100k as metadata.py:165, the order of vos_det's BDD100K_CLASSES.
RELEASED_CLASS_ORDERS = {
    "voc": (
        "person", "bird", "cat", "cow", "dog", "horse", "sheep", "aeroplane", "bicycle", "boat",
        "bus", "car", "motorbike", "train", "bottle", "chair", "diningtable", "pottedplant", "sofa",
        "tvmonitor",
    ),
    "bdd": (
        "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
        "traffic light", "traffic sign",
    ),
}

_PREDICTOR = "roi_heads.box_predictor."
_HEAD_KEYS = {
    "logistic": ("logistic_regression.weight", "logistic_regression.bias"),
    "mlp": tuple(f"logistic_regression.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")),
}
# Source keys dropped, with why.
_WEIGHT_ENERGY_BIAS_REASON = (
    "unused by the release's forward: its log_sum_exp reads only relu(weight_energy.weight) "
    "(roihead_gmm.py:735-745); the bias only enters a zero 'dummy' loss"
)
_PIXEL_STATS_REASON = "a config value in vos_det (MODEL.PIXEL_MEAN / PIXEL_STD), checked equal"
# Older detectron2 saved the anchors; they follow from MODEL.ANCHOR_GENERATOR.
_ANCHORS = "proposal_generator.anchor_generator.cell_anchors."
_ANCHORS_REASON = "computed from MODEL.ANCHOR_GENERATOR (not saved by vos_det's detectron2), checked equal"
# Target keys the release has no value for, by prefix, with why they stay at their initial value.
_UNFILLED_TARGETS = (
    (_PREDICTOR + "feature_queues.", "the release does not save its class queues (plain tensors): empty"),
    (_PREDICTOR + "calibrated_ood_threshold", "not calibrated (NaN): MODEL.OOD.THRESHOLD until ood_eval --calibrate"),
    (_PREDICTOR + "mahalanobis.", "post-hoc Gaussians, not in the release: tools/fit_mahalanobis.py fits them"),
    (_PREDICTOR + "post_hoc.", "post-hoc scores' state, not in the release: tools/fit_ood_scores.py fits it"),
)


@dataclass
class ReleasedConversion:
    """The result of :func:`convert_released_state_dict`.

    Attributes:
        state_dict: the target model's state dict with every mapped tensor in place.
        mapped: (source key, target key, note) of every source tensor used.
        dropped: (source key, reason) of every source tensor not used.
        unfilled: (target key, reason) of every target tensor left at its initial value.
        head: the release's uncertainty head: "mlp", "logistic" or "" (vanilla detector).
    """

    state_dict: Dict[str, torch.Tensor]
    mapped: List[Tuple[str, str, str]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    unfilled: List[Tuple[str, str]] = field(default_factory=list)
    head: str = ""

    def format_key_map(self) -> str:
        """The key accounting as text: renamed/permuted keys one a line, identical names
        counted by prefix, then the dropped and the unfilled keys with their reasons."""
        lines = ["Mapped (source -> target):"]
        same = {}
        for source, target, note in self.mapped:
            if source == target and not note:
                prefix = ".".join(source.split(".")[:2])
                same[prefix] = same.get(prefix, 0) + 1
            else:
                lines.append(f"  {source} -> {target}" + (f"  [{note}]" if note else ""))
        lines += [f"  {prefix}.* -> same names ({count} tensors)" for prefix, count in sorted(same.items())]
        lines.append("Dropped (source):")
        lines += [f"  {source}: {reason}" for source, reason in self.dropped] or ["  none"]
        lines.append("Left at their initial value (target):")
        by_reason = {}
        for target, reason in self.unfilled:
            by_reason.setdefault(reason, []).append(target)
        lines += [f"  {', '.join(keys)}: {reason}" for reason, keys in by_reason.items()] or ["  none"]
        return "\n".join(lines)


def _class_permutation(source_classes: Sequence[str], target_classes: Sequence[str]) -> torch.Tensor:
    """``perm[t]`` = the source index of target class t; every class on both sides."""
    source_classes, target_classes = list(source_classes), list(target_classes)
    if sorted(source_classes) != sorted(target_classes) or len(set(source_classes)) != len(source_classes):
        raise UserError(
            f"the checkpoint's classes {source_classes} are not those of the config's dataset "
            f"{target_classes} (set DATASETS.TEST to the benchmark the checkpoint was trained for)"
        )
    return torch.tensor([source_classes.index(name) for name in target_classes])


def _permute_rows(tensor: torch.Tensor, perm: torch.Tensor, num_classes: int, block: int) -> torch.Tensor:
    """Reorder the first ``num_classes`` blocks of ``block`` rows by ``perm``; rows after
    them (the background logit) stay. A class-agnostic box regressor (4 rows) is unchanged."""
    if tensor.shape[0] == block and block == 4:
        return tensor
    rows = (perm[:, None] * block + torch.arange(block)).reshape(-1)
    rest = torch.arange(num_classes * block, tensor.shape[0])
    return tensor[torch.cat([rows, rest])]


def load_released_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The ``model`` tensors of a released ``model_final.pth`` (read with ``weights_only``).

    Raises:
        FileNotFoundError: no such file.
        UserError: the file is no torch checkpoint, or holds no state dict of tensors.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"released checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise UserError(f"released checkpoint {path} cannot be read by torch.load ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from error
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"released checkpoint {path} holds no state dict of tensors (expected detectron2's "
                        "{'model': {name: tensor}})")
    return dict(state)


def convert_released_state_dict(
    source: Dict[str, torch.Tensor],
    model: torch.nn.Module,
    *,
    source_classes: Sequence[str],
    target_classes: Sequence[str],
) -> ReleasedConversion:
    """Map a released VOS or vanilla state dict onto a vos_det model, accounting for every key.

    Args:
        source: the released ``model`` state dict (:func:`load_released_state_dict`).
        model: the vos_det detector built from the matching config (its state dict gives the
            target names and shapes; its ``pixel_mean`` / ``pixel_std`` are compared).
        source_classes: the K class names of the checkpoint, in its order
            (:data:`RELEASED_CLASS_ORDERS`).
        target_classes: the K class names of the config's dataset, in its order.

    Returns:
        ReleasedConversion: ``state_dict`` loads into ``model`` with ``strict=True``.

    Raises:
        UserError: one message naming every problem: a source key with no target, a target
            key with no source (and no reason to stay initial), a shape that differs, a head
            that differs from ``MODEL.VOS.UNCERTAINTY_HEAD`` / ``MODEL.VOS.ENABLED``, pixel
            statistics that differ from the config, classes that differ.
    """
    target = model.state_dict()
    predictor = model.roi_heads.box_predictor
    num_classes = predictor.num_classes
    perm = _class_permutation(source_classes, target_classes)
    if len(perm) != num_classes:
        raise UserError(f"{len(perm)} checkpoint classes but MODEL.ROI_HEADS.NUM_CLASSES={num_classes}")
    heads = [kind for kind, keys in _HEAD_KEYS.items() if all("roi_heads." + k in source for k in keys)]
    head = heads[0] if heads else ""
    target_head = ""
    if getattr(predictor, "vos_enabled", False):
        target_head = "mlp" if (_PREDICTOR + "uncertainty_classifier.0.weight") in target else "logistic"
    if head != target_head:
        have = {"": "no VOS head (a vanilla detector)", "logistic": "the Linear(1, 2) head of branch main",
                "mlp": "the MLP head of branch main-MLP"}
        want = {"": "MODEL.VOS.ENABLED False (vanilla_rcnn.yaml)",
                "logistic": "MODEL.VOS.ENABLED True and MODEL.VOS.UNCERTAINTY_HEAD logistic",
                "mlp": "MODEL.VOS.ENABLED True and MODEL.VOS.UNCERTAINTY_HEAD mlp (vos_rcnn.yaml)"}
        raise UserError(f"the checkpoint has {have[head]} but the config builds {have[target_head]}: set {want[head]}")

    result = ReleasedConversion(state_dict=dict(target), head=head)
    problems = []
    claimed = set()  # target keys a source key was mapped to (reported once if that failed)

    def put(source_key, target_key, value, note=""):
        claimed.add(target_key)
        if target_key not in target:
            problems.append(f"{source_key}: no target key {target_key}")
            return
        if tuple(value.shape) != tuple(target[target_key].shape):
            problems.append(f"{source_key} {tuple(value.shape)} -> {target_key} {tuple(target[target_key].shape)}: shapes differ")
            return
        result.state_dict[target_key] = value.to(target[target_key].dtype).clone()
        result.mapped.append((source_key, target_key, note))

    permuted = "class rows permuted from the release's order" if perm.tolist() != list(range(num_classes)) else ""
    for key, value in source.items():
        if key in ("pixel_mean", "pixel_std"):
            expected = getattr(model, key).detach().cpu().reshape(-1)
            if value.numel() != expected.numel() or not torch.allclose(value.reshape(-1).float(), expected.float()):
                problems.append(f"{key} {value.reshape(-1).tolist()} differs from the config's "
                                f"MODEL.{key.upper()} {expected.tolist()}")
            else:
                result.dropped.append((key, _PIXEL_STATS_REASON))
        elif key.startswith(_ANCHORS):
            anchors = model.proposal_generator.anchor_generator.cell_anchors
            level = key[len(_ANCHORS):]
            if not level.isdigit() or int(level) >= len(anchors) or not torch.allclose(value.float(), anchors[int(level)].float()):
                problems.append(f"{key}: differs from the anchors of the config's MODEL.ANCHOR_GENERATOR")
            else:
                result.dropped.append((key, _ANCHORS_REASON))
        elif key == "roi_heads.weight_energy.bias":
            result.dropped.append((key, _WEIGHT_ENERGY_BIAS_REASON))
        elif key == "roi_heads.weight_energy.weight":
            if value.dim() != 2 or value.shape[0] != 1:
                problems.append(f"{key} {tuple(value.shape)}: expected (1, {num_classes}) of Linear({num_classes}, 1)")
                continue
            put(key, _PREDICTOR + "energy_weights", value[0][perm], "row of Linear(K, 1); relu applied in both; "
                + (permuted or "same class order"))
        elif key.startswith("roi_heads.logistic_regression."):
            put(key, _PREDICTOR + "uncertainty_classifier." + key[len("roi_heads.logistic_regression."):], value)
        elif key.startswith(_PREDICTOR + "cls_score."):
            put(key, key, _permute_rows(value, perm, num_classes, 1), permuted)
        elif key.startswith(_PREDICTOR + "bbox_pred."):
            put(key, key, _permute_rows(value, perm, num_classes, 4), permuted)
        elif key in target:
            put(key, key, value)
        else:
            problems.append(f"{key} {tuple(value.shape)}: no such key in the model built from the config")

    for key in target:
        if key in claimed:
            continue
        reason = next((why for prefix, why in _UNFILLED_TARGETS if key.startswith(prefix)), None)
        if reason is None:
            problems.append(f"{key} {tuple(target[key].shape)}: in the model but not in the checkpoint")
        else:
            result.unfilled.append((key, reason))
    if problems:
        raise UserError(f"the released checkpoint does not fit the config ({len(problems)} problems):\n  "
                        + "\n  ".join(problems))
    return result


def convert_released_checkpoint(path: str, model: torch.nn.Module, *, source_classes: Sequence[str],
                                target_classes: Sequence[str], output: str) -> ReleasedConversion:
    """Convert the released ``path`` for ``model`` and save it as a detectron2 checkpoint.

    Args:
        path: the released ``model_final.pth``.
        model: the vos_det model built from the matching config.
        source_classes, target_classes: see :func:`convert_released_state_dict`.
        output: the ``.pth`` file written (``{"model": state_dict}``; load it with
            ``MODEL.WEIGHTS``). The model is loaded with ``strict=True`` first.

    Returns:
        ReleasedConversion
    """
    conversion = convert_released_state_dict(
        load_released_state_dict(path), model, source_classes=source_classes, target_classes=target_classes
    )
    model.load_state_dict(conversion.state_dict, strict=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.save({"model": conversion.state_dict, "converted_from": os.path.abspath(path)}, output)
    return conversion


def convert_released_for_config(cfg, path: str, output: str, *, classes: str = "") -> ReleasedConversion:
    """Convert a released checkpoint for the model of ``cfg`` (built on the CPU) and save it.

    Args:
        cfg (CfgNode): the matching vos_det config (``VOC-Detection/vos_rcnn.yaml`` for the VOS
            models, ``vanilla_rcnn.yaml`` for the vanilla ones; BDD-Detection likewise); the
            target class order is that of its first ``DATASETS.TEST`` set.
        path: the released ``model_final.pth``.
        output: the converted checkpoint written.
        classes: the checkpoint's benchmark, a key of :data:`RELEASED_CLASS_ORDERS`; "" = the
            one with ``MODEL.ROI_HEADS.NUM_CLASSES`` classes.

    Returns:
        ReleasedConversion
    """
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if not classes:
        matching = [name for name, order in RELEASED_CLASS_ORDERS.items() if len(order) == num_classes]
        if len(matching) != 1:
            raise UserError(f"no released model has MODEL.ROI_HEADS.NUM_CLASSES={num_classes} classes; pass "
                            f"--classes one of {sorted(RELEASED_CLASS_ORDERS)}")
        classes = matching[0]
    if classes not in RELEASED_CLASS_ORDERS:
        raise UserError(f"--classes {classes!r}: must be one of {sorted(RELEASED_CLASS_ORDERS)}")
    if not cfg.DATASETS.TEST:
        raise UserError("DATASETS.TEST is empty: the target class order is read from its first set")
    target_classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None)
    if not target_classes:
        raise UserError(f"dataset {cfg.DATASETS.TEST[0]!r} (DATASETS.TEST) has no thing_classes")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    return convert_released_checkpoint(
        path, model, source_classes=RELEASED_CLASS_ORDERS[classes], target_classes=target_classes, output=output
    )
