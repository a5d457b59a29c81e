"""TorchScript export of the digits detector: same detections and OOD verdicts as the eager model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from vos_det.cli import load_config
from vos_det.data.digits_det import DIGITS_DET_ID_CLASSES
from vos_det.export import OUTPUT_NAMES, compare_detections, export_torchscript, load_metadata, ood_detections

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"
# Sizes of the check images: the traced size and two others (the graph is not size-specific).
IMAGE_SIZES = ((128, 128), (128, 160), (96, 128))
# Detection threshold of the box predictor: fewer than the 100 boxes per image of the
# random model, and a different number on each image.
SCORE_THRESHOLD = 0.5
TOLERANCE = 1e-4


def _cfg(*overrides):
    return load_config("digits_vos_tiny.yaml", ["MODEL.DEVICE", "cpu", *overrides])


@pytest.fixture(scope="module")
def model():
    """The digits detector, randomly initialised, with a calibrated threshold in the middle
    of its OOD scores (so that is_ood has both values)."""
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(SCORE_THRESHOLD))).eval()
    with torch.no_grad():
        ood_scores = ood_detections(model, _images()[0])[OUTPUT_NAMES.index("ood_scores")]
    model.roi_heads.box_predictor.calibrated_ood_threshold.fill_(float(ood_scores.median()))
    return model


def _images():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), generator=generator).float() for h, w in IMAGE_SIZES]


def test_exported_model_returns_the_eager_detections_and_verdicts(model, tmp_path):
    path = str(tmp_path / "model.ts")
    metadata = export_torchscript(model, _images()[0], path, {"note": "test"})
    threshold = model.roi_heads.box_predictor.current_ood_threshold()
    assert metadata["ood_threshold"] == threshold and metadata["outputs"] == list(OUTPUT_NAMES)
    assert load_metadata(path) == metadata
    exported = torch.jit.load(path)

    counts = []
    for image in _images():
        with torch.no_grad():
            expected, actual = ood_detections(model, image), exported(image)
        assert [a.dtype for a in actual] == [e.dtype for e in expected]
        assert compare_detections(expected, actual) <= TOLERANCE
        boxes, classes, scores, id_scores, ood_scores, is_ood = actual
        assert torch.allclose(boxes, expected[0], atol=TOLERANCE, rtol=0)
        assert torch.equal(is_ood, ood_scores > threshold)
        assert torch.allclose(ood_scores, 1.0 - id_scores)  # the "vos" score of the config
        counts.append(len(boxes))
        # uint8 images (as read from files) give the same detections.
        assert compare_detections(expected, exported(image.to(torch.uint8))) <= TOLERANCE
    assert len(set(counts)) > 1 and 0 < min(counts) and max(counts) < 100, counts
    assert 0 < int(is_ood.sum()) < len(is_ood)


def test_compare_detections_rejects_other_boxes_or_verdicts(model):
    with torch.no_grad():
        expected = ood_detections(model, _images()[0])
    shifted = (expected[0] + 0.5,) + expected[1:]
    assert compare_detections(expected, shifted) == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(RuntimeError, match="detections instead of"):
        compare_detections(expected, tuple(t[1:] for t in expected))
    with pytest.raises(RuntimeError, match="is_ood differ"):
        compare_detections(expected, expected[:-1] + (~expected[-1],))


def test_export_tool_writes_a_file_that_runs_with_torch_alone(model, tmp_path):
    weights = tmp_path / "model.pth"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    files = []
    for i, image in enumerate(_images()[:2]):
        files.append(str(tmp_path / f"image{i}.png"))
        # The tool reads BGR (INPUT.FORMAT); PIL writes RGB.
        Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8)[:, :, ::-1]).save(files[-1])
    sys.path.insert(0, str(TOOLS_DIR))
    try:
        import export_model
    finally:
        sys.path.remove(str(TOOLS_DIR))
    output = tmp_path / "export"
    args = export_model.argument_parser().parse_args(
        [
            "--config", "digits_vos_tiny.yaml", "--output", str(output), "--images", *files,
            "MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(SCORE_THRESHOLD),
        ]
    )
    checks = export_model.main(args)
    assert len(checks) == 2 and all(c["max_abs_diff"] <= TOLERANCE and c["num_detections"] > 0 for c in checks)
    info = json.loads((output / "export_info.json").read_text())
    assert info["ood_threshold"] == model.roi_heads.box_predictor.current_ood_threshold()
    assert info["class_names"] == list(DIGITS_DET_ID_CLASSES) and info["input_format"] == "BGR"

    # A fresh interpreter with torch and torchvision (for its nms / roi_align ops) only.
    script = (
        "import sys, torch, torchvision\n"
        f"model = torch.jit.load({str(output / 'model.ts')!r})\n"
        "boxes, classes, scores, id_scores, ood_scores, is_ood = model(torch.zeros(3, 128, 128))\n"
        "assert not any(m.split('.')[0] in ('detectron2', 'vos_det') for m in sys.modules)\n"
        "print(is_ood.dtype, boxes.shape[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["torch.bool", "4"]
