"""tools/predict.py's library call (predict_images), the OODPredictor API and image reading of odd
or broken files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vos_det.config import load_config
from vos_det.data.image_io import read_image_file
from vos_det.engine import OODPredictor
from vos_det.engine.post_hoc_fitting import fit_mahalanobis
from vos_det.engine.predictor import find_images, predict_images


def _rgb(seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda: Image.fromarray(_rgb()[:, :, 0], mode="L")),
        ("RGBA", lambda: Image.fromarray(np.dstack([_rgb(), np.full((64, 64), 128, np.uint8)]), mode="RGBA")),
        ("P", lambda: Image.fromarray(_rgb()).convert("P")),
        ("I;16", lambda: Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))),
    ],
)
def test_odd_image_modes_become_three_channel_uint8(tmp_path, mode, make):
    path = tmp_path / f"image_{mode.replace(';', '')}.png"
    make().save(path)
    image = read_image_file(str(path))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    if mode == "I;16":  # rescaled to the full 8-bit range, not clipped to white
        assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) > 200


def test_bgr_and_rgb_orders(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_file(str(tmp_path / "a.png"), format="RGB"), rgb)
    np.testing.assert_array_equal(read_image_file(str(tmp_path / "a.png")), rgb[:, :, ::-1])


@pytest.mark.parametrize("kind", ["truncated", "not_an_image", "missing"])
def test_broken_files_raise_an_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        Image.fromarray(_rgb(size=256)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "not_an_image":
        path.write_text("this is not an image")
    with pytest.raises(ValueError, match=str(path)):
        read_image_file(str(path))


def test_predictor_needs_a_vos_box_predictor(tmp_path, random_weights, tiny_cfg):
    cfg = tiny_cfg(tmp_path, "MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.WEIGHTS", random_weights)
    with pytest.raises(TypeError, match="StandardROIHeads"):
        OODPredictor(cfg)


def test_predict_tool_writes_json_and_drawings_and_skips_unreadable_files(tmp_path, random_weights):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(seed=i, size=128)).save(images / f"img{i}.jpg")
    (images / "broken.png").write_text("not an image")
    output = tmp_path / "out"
    report = predict_images(
        "digits_vos_tiny.yaml", random_weights, [str(images)], str(output), draw=True, min_score=0.0, ood_threshold=0.5
    )
    with open(output / "predictions.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert len(report["images"]) == 3
    assert [e["file_name"] for e in report["errors"]] == [str(images / "broken.png")]
    assert report["ood_threshold"] == 0.5 and report["detections"]
    for detection in report["detections"]:
        assert detection["is_ood"] == (detection["ood_score"] > 0.5)
        assert 0.0 <= detection["id_score"] <= 1.0
        assert detection["category_name"] in report["class_names"]
        assert len(detection["bbox"]) == 4 and detection["bbox"][2] >= 0
    assert len(list(output.glob("*.png"))) == 3


def test_predict_tool_rejects_inputs_that_match_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        find_images([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        find_images([str(tmp_path / "*.jpg")])


def test_checkpoint_with_another_class_count_is_refused(tmp_path, random_weights, tiny_cfg):
    cfg = tiny_cfg(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "7", "MODEL.WEIGHTS", random_weights)
    with pytest.raises(ValueError, match=r"model_random.pth(.|\n)*cls_score.weight: checkpoint \(6, 128\) vs model \(8, 128\)"):
        OODPredictor(cfg)


def test_fit_mahalanobis_tool_adds_the_mahalanobis_field(tiny_digits_root, tmp_path, random_weights, tiny_cfg):
    stats = str(tmp_path / "stats.pth")
    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.WEIGHTS", random_weights])
    fit_mahalanobis(cfg, random_weights, output=stats, add_classes=[("five", "digits_det_ood")])
    cfg = tiny_cfg(tmp_path, "MODEL.WEIGHTS", random_weights, "MODEL.OOD.MAHALANOBIS_STATS", stats,
                    "MODEL.OOD.SCORE", "mahalanobis", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    predictor = OODPredictor(cfg)
    discriminant = predictor.box_predictor.mahalanobis
    assert discriminant.num_classes == 6  # five digits classes + the added one
    image = (np.random.default_rng(0).integers(0, 256, (128, 128, 3))).astype(np.uint8)
    instances = predictor(image)["instances"]
    assert len(instances) > 0
    assert torch.all(instances.ood_scores_mahalanobis >= 0)
    assert torch.equal(instances.ood_scores, instances.ood_scores_mahalanobis)
