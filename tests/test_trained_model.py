"""engine.load_trained_model: build, check the checkpoint against the model, load, eval mode."""
import sys
from pathlib import Path

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vos_det.engine import load_trained_model


def test_loaded_weights_are_the_saved_ones(random_weights, tiny_cfg, tmp_path):
    saved = torch.load(random_weights, map_location="cpu", weights_only=True)["model"]
    torch.manual_seed(1)  # another initialisation than the saved one
    fresh = build_model(tiny_cfg(tmp_path)).state_dict()
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(fresh[name], saved[name])
    torch.manual_seed(1)
    model = load_trained_model(tiny_cfg(tmp_path, "MODEL.WEIGHTS", random_weights))
    loaded = model.state_dict()
    assert not model.training
    assert saved.keys() <= loaded.keys()
    for name, value in saved.items():  # the uncalibrated OOD threshold is a NaN buffer
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, equal_nan=True, msg=name)
    # An explicit file wins over MODEL.WEIGHTS.
    assert not load_trained_model(tiny_cfg(tmp_path), random_weights).training


def test_a_checkpoint_of_another_model_is_refused_by_name(random_weights, tiny_cfg, tmp_path):
    cfg = tiny_cfg(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "7")
    with pytest.raises(ValueError, match=r"does not fit the model built from the config") as error:
        load_trained_model(cfg, random_weights)
    message = str(error.value)
    assert random_weights in message
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint (6, 128) vs model (8, 128)" in message


def test_a_missing_checkpoint_is_named(tiny_cfg, tmp_path):
    missing = str(tmp_path / "model_final.pth")
    with pytest.raises(FileNotFoundError, match="model_final.pth"):
        load_trained_model(tiny_cfg(tmp_path, "MODEL.WEIGHTS", missing))


def test_detectron2s_checkpointer_alone_would_load_the_mismatched_file(random_weights, tiny_cfg, tmp_path):
    # Why the check exists: the same file loads "successfully" with random class layers.
    torch.manual_seed(2)
    model = build_model(tiny_cfg(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "7"))
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    DetectionCheckpointer(model).load(random_weights)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)


def test_eval_only_with_resume_evaluates_the_last_checkpoint(tiny_cfg, tmp_path):
    tools = str(Path(__file__).resolve().parent.parent / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import train_net

    cfg = tiny_cfg(tmp_path, "MODEL.WEIGHTS", "given.pth")
    assert train_net.weights_to_evaluate(cfg, resume=True) == "given.pth"  # nothing to resume
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    assert train_net.weights_to_evaluate(cfg, resume=True) == str(tmp_path / "model_0000099.pth")
    assert train_net.weights_to_evaluate(cfg, resume=False) == "given.pth"
