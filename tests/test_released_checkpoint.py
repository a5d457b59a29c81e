"""Released VOS checkpoints load into vos_det and score as the release's own code.

The real files (Google Drive) cannot be downloaded here, so a synthetic checkpoint is built
with the release's exact key names and shapes: a detectron2 GeneralizedRCNN with
StandardROIHeads (the release's backbone, RPN, box head and FastRCNNOutputLayers are
detectron2's) plus, on its ROI heads, the modules of deeplearning-wisc/vos main-MLP
``detection/modeling/roihead_gmm.py``: ``logistic_regression`` = Sequential(Linear(1, 512),
ReLU(), Linear(512, 1)) (lines 533-537; ``Linear(1, 2)`` on branch main) and ``weight_energy``
= Linear(num_classes, 1) (line 543), and the persistent ``pixel_mean`` / ``pixel_std`` of
``plain_generalized_rcnn_logistic_gmm.py:67-68``. The backbone is a small FrozenBN ResNet-18
FPN (the key structure of the release's R-50 per block type). Its release forward is
re-implemented from ``inference/rcnn_predictor.py:96-169`` (class softmax, ``score >
threshold``, deltas on the kept pairs, the MLP's sigmoid on the unweighted logsumexp),
``inference_utils.py:43-96`` (``batched_nms`` on the unclipped boxes, top 100) and
``:433-463`` (rescale, clip, drop empty boxes).
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from detectron2.layers import batched_nms
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import vos_det.modeling  # noqa: F401  (registers VOSROIHeads)
from vos_det.config import load_config
from vos_det.engine.released_checkpoint import (
    RELEASED_CLASS_ORDERS,
    convert_released_checkpoint,
    convert_released_state_dict,
    load_released_state_dict,
)
from vos_det.errors import UserError
from vos_det.evaluation.records import computing_all_ood_scores

RELEASE_VOC = RELEASED_CLASS_ORDERS["voc"]
NUM_CLASSES = 20
SMALL = [
    "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.RPN.POST_NMS_TOPK_TEST", "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.02", "TEST.OOD.PROTOCOL", "vos_official",
]


def _cfg(head):
    """A small vos_det config: ``head`` "mlp" / "logistic" (VOS) or "" (vanilla)."""
    if not head:
        return load_config("digits_vanilla_r18.yaml", SMALL)
    return load_config(
        "digits_vos_r18.yaml", SMALL + ["MODEL.VOS.UNCERTAINTY_HEAD", head, "MODEL.OOD.SCORE", "vos_release"]
    )


def _release_model(cfg, head, seed=0):
    """A model with the release's modules and key names, every tensor drawn at random."""
    release_cfg = cfg.clone()
    release_cfg.defrost()
    release_cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    torch.manual_seed(seed)
    model = build_model(release_cfg)
    if head:
        model.roi_heads.logistic_regression = (
            nn.Sequential(nn.Linear(1, 512), nn.ReLU(), nn.Linear(512, 1)) if head == "mlp" else nn.Linear(1, 2)
        )
        model.roi_heads.weight_energy = nn.Linear(NUM_CLASSES, 1)
        for name in ("pixel_mean", "pixel_std"):  # persistent in GeneralizedRCNNLogisticGMM
            value = model._buffers.pop(name)
            model.register_buffer(name, value)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith("pixel_"):
                continue
            if "norm." in name and name.endswith(("weight", "running_var")):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif "norm." in name:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif "cls_score" in name:
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
            elif "bbox_pred" in name:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif "logistic_regression" in name or "weight_energy" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model.eval()


def _input(seed=3):
    generator = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, 96, 128, generator=generator) * 255).round()
    return {"image": image, "height": 192, "width": 256}


def _proposals_and_box_features(model, inputs):
    """A detectron2 R-CNN's steps up to its box head on one image: (images, proposals, box features)."""
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    roi_heads = model.roi_heads
    box_features = roi_heads.box_head(
        roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], [p.proposal_boxes for p in proposals])
    )
    return images, proposals, box_features


@torch.no_grad()
def _release_forward(model, inputs, head):
    """The release's inference, written from its code (see the module doc)."""
    images, proposals, box_features = _proposals_and_box_features(model, inputs)
    roi_heads = model.roi_heads
    box_cls, box_delta = roi_heads.box_predictor(box_features)
    logits = box_cls
    if head:
        negative_energy = torch.logsumexp(box_cls[:, :-1], 1).reshape(-1, 1)
        if head == "mlp":
            logistic_score = roi_heads.logistic_regression(negative_energy).sigmoid().reshape(-1)
        else:
            logistic_score = torch.softmax(roi_heads.logistic_regression(negative_energy), 1)[:, 1]
    box_cls = torch.softmax(box_cls, dim=-1)
    scores = box_cls[:, :-1]
    box_delta = box_delta.reshape(-1, 4).view(-1, box_delta.shape[1] // 4, 4)
    filter_mask = scores > roi_heads.box_predictor.test_score_thresh
    filter_inds = filter_mask.nonzero(as_tuple=False)
    box_delta = box_delta[filter_mask]
    scores = scores[filter_mask]
    proposal_boxes = proposals[0].proposal_boxes.tensor[filter_inds[:, 0]]
    boxes = roi_heads.box_predictor.box2box_transform.apply_deltas(box_delta, proposal_boxes)
    keep = batched_nms(boxes, scores, filter_inds[:, 1], roi_heads.box_predictor.test_nms_thresh)[:100]
    rows = filter_inds[keep, 0]
    out = {
        "boxes": boxes[keep],
        "scores": scores[keep],
        "classes": filter_inds[keep, 1],
        "logits": logits[rows],
        "cls_prob": box_cls[rows],
        "logistic_score": logistic_score[rows] if head else None,
    }
    scale_x, scale_y = inputs["width"] / images.image_sizes[0][1], inputs["height"] / images.image_sizes[0][0]
    output_boxes = Boxes(out["boxes"].clone())
    output_boxes.scale(scale_x, scale_y)
    output_boxes.clip((inputs["height"], inputs["width"]))
    nonempty = output_boxes.nonempty()
    out = {k: (v[nonempty] if v is not None else None) for k, v in out.items()}
    out["boxes"] = output_boxes.tensor[nonempty]
    height, width = images.image_sizes[0]
    kept = boxes[keep]
    out["unclipped_outside"] = bool(((kept[:, :2] < 0).any(1) | (kept[:, 2] > width) | (kept[:, 3] > height)).any())
    out["proposals"] = proposals[0].proposal_boxes.tensor
    out["all_logits"] = logits
    return out


def _converted(cfg, release, head):
    model = build_model(cfg)
    conversion = convert_released_state_dict(
        release.state_dict(), model, source_classes=RELEASE_VOC, target_classes=VOC_CLASSES
    )
    model.load_state_dict(conversion.state_dict, strict=True)
    return model.eval(), conversion


def test_synthetic_checkpoint_has_the_release_names_and_shapes():
    state = _release_model(_cfg("mlp"), "mlp").state_dict()
    vos_keys = {k: tuple(v.shape) for k, v in state.items() if k.startswith(("roi_heads.logistic", "roi_heads.weight_"))}
    assert vos_keys == {
        "roi_heads.logistic_regression.0.weight": (512, 1), "roi_heads.logistic_regression.0.bias": (512,),
        "roi_heads.logistic_regression.2.weight": (1, 512), "roi_heads.logistic_regression.2.bias": (1,),
        "roi_heads.weight_energy.weight": (1, NUM_CLASSES), "roi_heads.weight_energy.bias": (1,),
    }
    assert tuple(state["roi_heads.box_predictor.cls_score.weight"].shape) == (NUM_CLASSES + 1, 32)
    assert tuple(state["roi_heads.box_predictor.bbox_pred.weight"].shape) == (4 * NUM_CLASSES, 32)
    assert "pixel_mean" in state and "backbone.bottom_up.stem.conv1.norm.running_var" in state


@pytest.mark.parametrize("head", ["mlp", "logistic", ""])
def test_converted_model_matches_the_release_forward(head):
    cfg = _cfg(head)
    release = _release_model(cfg, head)
    model, conversion = _converted(cfg, release, head)
    inputs = _input()
    expected = _release_forward(release, inputs, head)
    perm = torch.tensor([RELEASE_VOC.index(name) for name in VOC_CLASSES])

    with torch.no_grad(), computing_all_ood_scores(model):
        _, proposals, box_features = _proposals_and_box_features(model, inputs)
        logits = model.roi_heads.box_predictor(box_features)[0]
        detections = model([inputs])[0]["instances"]
    # Exact: the backbone and RPN are the same weights run by the same ops in this process.
    torch.testing.assert_close(proposals[0].proposal_boxes.tensor, expected["proposals"], rtol=0, atol=0)
    # Class logits: vos_det class t is the release's class perm[t]; background stays last.
    torch.testing.assert_close(logits[:, :NUM_CLASSES], expected["all_logits"][:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:, -1], expected["all_logits"][:, -1], rtol=1e-5, atol=1e-5)

    assert len(detections) == len(expected["boxes"]) >= 10
    assert expected["unclipped_outside"]  # some boxes leave the image before clipping
    torch.testing.assert_close(detections.pred_boxes.tensor, expected["boxes"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(detections.scores, expected["scores"], rtol=1e-5, atol=1e-6)
    assert [VOC_CLASSES[c] for c in detections.pred_classes] == [RELEASE_VOC[c] for c in expected["classes"]]
    torch.testing.assert_close(detections.proposal_scores, expected["cls_prob"][:, :-1].max(dim=1).values)
    release_energy = -torch.logsumexp(expected["logits"][:, :-1], dim=1)
    torch.testing.assert_close(detections.ood_scores_energy, release_energy, rtol=1e-5, atol=1e-5)
    if head:
        torch.testing.assert_close(detections.ood_scores_vos_release, -expected["logistic_score"], rtol=1e-5, atol=1e-6)
        assert torch.equal(detections.ood_scores, detections.ood_scores_vos_release)
    # detectron2's clip-then-NMS (protocol vos_det) keeps other boxes on this image.
    model.roi_heads.box_predictor.nms_before_clip = False
    with torch.no_grad():
        clip_first = model([inputs])[0]["instances"]
    assert len(clip_first) != len(detections)


def test_key_accounting_names_every_key():
    cfg = _cfg("mlp")
    release = _release_model(cfg, "mlp")
    model, conversion = _converted(cfg, release, "mlp")
    source = release.state_dict()
    used = {s for s, _, _ in conversion.mapped} | {s for s, _ in conversion.dropped}
    assert used == set(source) and len(conversion.mapped) + len(conversion.dropped) == len(source)
    assert {s for s, _ in conversion.dropped} == {"pixel_mean", "pixel_std", "roi_heads.weight_energy.bias"}
    filled = {t for _, t, _ in conversion.mapped} | {t for t, _ in conversion.unfilled}
    assert filled == set(model.state_dict())
    assert all(t.startswith("roi_heads.box_predictor.") for t, _ in conversion.unfilled)
    mapped = {s: t for s, t, _ in conversion.mapped}
    assert mapped["roi_heads.logistic_regression.2.weight"] == "roi_heads.box_predictor.uncertainty_classifier.2.weight"
    assert mapped["roi_heads.weight_energy.weight"] == "roi_heads.box_predictor.energy_weights"
    text = conversion.format_key_map()
    assert "roi_heads.weight_energy.bias: unused by the release's forward" in text
    assert "feature_queues" in text


def test_mismatches_are_one_clear_error():
    cfg = _cfg("mlp")
    release = _release_model(cfg, "mlp")
    model = build_model(cfg)
    kwargs = dict(source_classes=RELEASE_VOC, target_classes=VOC_CLASSES)
    with pytest.raises(UserError, match="MLP head of branch main-MLP .* set MODEL.VOS.ENABLED True and "
                       "MODEL.VOS.UNCERTAINTY_HEAD mlp"):
        convert_released_state_dict(release.state_dict(), build_model(_cfg("logistic")), **kwargs)
    with pytest.raises(UserError, match="no VOS head .* set MODEL.VOS.ENABLED False"):
        convert_released_state_dict(_release_model(_cfg(""), "").state_dict(), model, **kwargs)
    state = release.state_dict()
    state["roi_heads.extra.weight"] = torch.zeros(2)
    del state["backbone.fpn_output3.weight"]
    state["roi_heads.box_head.fc1.weight"] = torch.zeros(3, 3)
    state["pixel_std"] = torch.full((3, 1, 1), 57.0)
    with pytest.raises(UserError) as error:
        convert_released_state_dict(state, model, **kwargs)
    message = str(error.value)
    assert "4 problems" in message
    for part in ("roi_heads.extra.weight", "backbone.fpn_output3.weight", "roi_heads.box_head.fc1.weight (3, 3)",
                 "pixel_std"):
        assert part in message
    with pytest.raises(UserError, match="classes"):
        convert_released_state_dict(release.state_dict(), model, source_classes=RELEASE_VOC,
                                    target_classes=RELEASED_CLASS_ORDERS["bdd"])


def test_file_round_trip(tmp_path):
    cfg = _cfg("mlp")
    release = _release_model(cfg, "mlp")
    source = tmp_path / "model_final.pth"
    torch.save({"model": release.state_dict(), "iteration": 17999}, source)
    assert set(load_released_state_dict(str(source))) == set(release.state_dict())
    model = build_model(cfg)
    output = tmp_path / "converted.pth"
    convert_released_checkpoint(str(source), model, source_classes=RELEASE_VOC, target_classes=VOC_CLASSES,
                                output=str(output))
    fresh = build_model(cfg)
    fresh.load_state_dict(torch.load(output, weights_only=True)["model"], strict=True)
    # Exact: the converted weights are copies (permuted rows) of the release's, saved and loaded.
    assert torch.equal(fresh.roi_heads.box_predictor.energy_weights,
                       release.roi_heads.weight_energy.weight[0][[RELEASE_VOC.index(n) for n in VOC_CLASSES]])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        load_released_state_dict(str(tmp_path / "junk.pth"))


def test_tool_converts_for_a_config(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "convert_released_checkpoint", Path(__file__).resolve().parent.parent / "tools" / "convert_released_checkpoint.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = _cfg("mlp")
    source = tmp_path / "model_final.pth"
    torch.save({"model": _release_model(cfg, "mlp").state_dict()}, source)
    output = tmp_path / "converted.pth"
    argv = ["--config", "digits_vos_r18.yaml", *SMALL, "MODEL.VOS.UNCERTAINTY_HEAD", "mlp",
            "DATASETS.TEST", '("voc_2007_test",)', "--source", str(source), "--output", str(output)]
    tool.run_tool(tool.main, tool.argument_parser(), argv)
    printed = capsys.readouterr().out
    assert "roi_heads.weight_energy.weight -> roi_heads.box_predictor.energy_weights" in printed
    assert f"saved {output}" in printed and output.is_file()
    with pytest.raises(SystemExit, match="error: .*UNCERTAINTY_HEAD mlp"):
        tool.run_tool(tool.main, tool.argument_parser(), argv[:-4] + ["--source", str(source), "--output",
                                                                      str(tmp_path / "x.pth"),
                                                                      "MODEL.VOS.UNCERTAINTY_HEAD", "logistic"])
