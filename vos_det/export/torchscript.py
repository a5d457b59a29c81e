"""TorchScript export of a VOS detector whose outputs carry the per-box OOD verdicts.

The detector is traced (detectron2's :class:`TracingAdapter`) through
:func:`ood_detections`, which turns one image into a tuple of tensors. The traced graph
contains everything from the normalisation of the image to ``is_ood``, with the OOD
threshold of the model (calibrated, else ``MODEL.OOD.THRESHOLD``) as a constant, so
the exported file runs with ``torch.jit.load`` alone: no detectron2, no vos_det.

A trace records the device it ran on (tensors it creates are made there), so the file runs
on that device only: the metadata records it (``"device"``, also in the tool's
``export_info.json``), and :func:`load_exported` refuses another device with an error that
says so. Export on each device the model is to run on.
"""
import json
import warnings

import torch
from detectron2.export import TracingAdapter
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import GeneralizedRCNN

from ..modeling import VOSOutputLayers
from ..modeling import output_layers as _output_layers

__all__ = [
    "METADATA_FILE",
    "OUTPUT_NAMES",
    "compare_detections",
    "export_torchscript",
    "load_exported",
    "load_metadata",
    "ood_detections",
    "trace_ood_detector",
]

# What the exported model returns for one image, in this order.
OUTPUT_NAMES = ("boxes", "classes", "scores", "id_scores", "ood_scores", "is_ood")
# Name of the JSON metadata stored inside the TorchScript file (torch.jit extra file).
METADATA_FILE = "vos_det.json"


def _box_predictor(model) -> VOSOutputLayers:
    """The VOS box predictor of a detector, or a TypeError saying why there is none."""
    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(
            f"only detectors (GeneralizedRCNN) can be exported, got {type(model).__name__}"
        )
    box_predictor = getattr(model.roi_heads, "box_predictor", None)
    if not isinstance(box_predictor, VOSOutputLayers):
        raise TypeError(
            f"the ROI heads {type(model.roi_heads).__name__} build no VOS box predictor, so the "
            "detections would carry no OOD scores; use VOSROIHeads"
        )
    return box_predictor


def ood_detections(model, image):
    """The detections of one image as a tuple of tensors: what the exported model returns.

    Args:
        model (GeneralizedRCNN): a detector with :class:`VOSROIHeads`, in eval mode.
        image (Tensor): (3, H, W) image in the model's input format (``INPUT.FORMAT``,
            values 0-255), already resized as at test time (``INPUT.MIN_SIZE_TEST``).

    Returns:
        tuple[Tensor]: in the order of :data:`OUTPUT_NAMES`: boxes (N, 4) float XYXY in the
        pixels of ``image``, classes (N,) int64, scores (N,), id_scores (N,) p(ID | box),
        ood_scores (N,) (larger = more OOD), is_ood (N,) bool.
    """
    instances = model.inference([{"image": image}], do_postprocess=False)[0]
    return (
        instances.pred_boxes.tensor,
        instances.pred_classes,
        instances.scores,
        instances.id_scores,
        instances.ood_scores,
        instances.is_ood,
    )


def trace_ood_detector(model, image):
    """Trace :func:`ood_detections` of ``model`` on a sample image.

    The trace follows the sample's path through the model, so the sample should be a
    typical image (with detections). The graph works for other image sizes and numbers of
    detections: detectron2's tracing patches make them dynamic, and ``len()`` in the VOS
    box predictor is traced the same way.

    Args:
        model (GeneralizedRCNN): a detector with :class:`VOSROIHeads`; set to eval mode.
        image (Tensor): (3, H, W) sample image, as for :func:`ood_detections`.

    Returns:
        torch.jit.ScriptModule: called as ``traced(image)``, returns the tuple of
        :func:`ood_detections` with the model's current OOD threshold baked in.
    """
    _box_predictor(model)
    model.eval()
    adapter = TracingAdapter(model, image, ood_detections)
    with patch_builtin_len([_output_layers.__name__]), warnings.catch_warnings():
        # Tracing warns about every Python value it records; the comparison with the eager
        # model (compare_detections) is the check that matters.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Recent torch deprecates torch.jit (a FutureWarning per call); tracing still works
        # and is what detectron2's own export uses.
        warnings.filterwarnings("ignore", message="`torch.jit", category=FutureWarning)
        return torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)


def export_torchscript(model, image, path, metadata=None):
    """Trace ``model`` on ``image`` and save it to ``path`` with its metadata inside.

    Args:
        model (GeneralizedRCNN): a detector with :class:`VOSROIHeads`.
        image (Tensor): (3, H, W) sample image, as for :func:`ood_detections`.
        path (str): the ``.ts`` file to write.
        metadata (dict, optional): JSON-serialisable facts stored in the file as
            :data:`METADATA_FILE` (read back with :func:`load_metadata`); the device traced
            on, the output names, the OOD score and threshold are added.

    Returns:
        dict: the metadata written.
    """
    box_predictor = _box_predictor(model)
    traced = trace_ood_detector(model, image)
    metadata = dict(metadata or {})
    metadata.update(
        {
            "device": str(_canonical_device(next(model.parameters()).device)),
            "outputs": list(OUTPUT_NAMES),
            "ood_score": box_predictor.ood_score,
            "ood_threshold": box_predictor.current_ood_threshold(),
        }
    )
    traced.save(path, _extra_files={METADATA_FILE: json.dumps(metadata, indent=2)})
    return metadata


def _canonical_device(device) -> torch.device:
    """``device`` with its index made explicit where the kind has one ("cuda" -> "cuda:0")."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", 0)
    return device


def load_exported(path, device=None):
    """``torch.jit.load`` of an exported file, on the device it was traced on.

    Args:
        path (str): the ``.ts`` file written by :func:`export_torchscript`.
        device (str or torch.device, optional): where it is to run; None = the recorded
            device.

    Returns:
        torch.jit.ScriptModule: the exported detector.

    Raises:
        ValueError: ``device`` is not the device the file was traced on (named, with the
            way out).
    """
    recorded = load_metadata(path).get("device")
    if recorded is None:
        raise ValueError(f"{path} records no device: export it again with this version of vos_det")
    wanted = _canonical_device(device if device is not None else recorded)
    if wanted != torch.device(recorded):
        raise ValueError(
            f"{path} was traced on {recorded} and runs only there (a trace bakes in the device it "
            f"ran on), not on {wanted}: export it again on {wanted} (tools/export_model.py --device {wanted})"
        )
    return torch.jit.load(path, map_location=wanted)


def load_metadata(path) -> dict:
    """The metadata stored by :func:`export_torchscript` in a TorchScript file."""
    extra_files = {METADATA_FILE: ""}
    torch.jit.load(path, map_location="cpu", _extra_files=extra_files)
    return json.loads(extra_files[METADATA_FILE])


def compare_detections(expected, actual) -> float:
    """The largest absolute difference between two :func:`ood_detections` tuples.

    Args:
        expected, actual (tuple[Tensor]): outputs of the eager and the exported model.

    Returns:
        float: max |expected - actual| over the float outputs (boxes and scores); 0.0 when
        there are no detections.

    Raises:
        RuntimeError: the two differ in the number of detections, their classes or their
            is_ood verdicts.
    """
    named = dict(zip(OUTPUT_NAMES, zip(expected, actual)))
    num_expected, num_actual = len(named["boxes"][0]), len(named["boxes"][1])
    if num_expected != num_actual:
        raise RuntimeError(f"{num_actual} detections instead of {num_expected}")
    for name in ("classes", "is_ood"):
        if not torch.equal(*named[name]):
            raise RuntimeError(f"the detections' {name} differ")
    differences = [
        float((a.float() - b.float()).abs().max())
        for name, (a, b) in named.items()
        if a.is_floating_point() and a.numel()
    ]
    return max(differences, default=0.0)
