"""Tests of SAFE as released (vos_det/modeling/ood_scores/safe.py, vos_det/engine/safe_fitting.py):
the layer rule on detectron2's ResNets and RegNetX, the 1 x 1 pooling, the metaclassifier, the
FGSM step, and the whole fit on a few-image detector against a direct computation."""
import copy

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem
from detectron2.utils.events import EventStorage
from torch import nn
from torchvision.ops import roi_align

from vos_det.config import default_config, load_config
from vos_det.engine.post_hoc_fitting import fit_post_hoc_scores
from vos_det.engine.safe_fitting import fgsm_images, safe_loader
from vos_det.engine.trainer import Trainer
from vos_det.modeling.ood_scores.safe import (
    DEFAULT_LAYER_PATTERNS,
    LayerCapture,
    match_layers,
    pool_boxes_1x1,
    safe_mlp,
    train_safe_mlp,
)
from vos_det.evaluation.records import computing_all_ood_scores

R18_SHORTCUTS = [f"backbone.bottom_up.res{k}.0.shortcut" for k in (3, 4, 5)]
# A few training images are enough for the fit's plumbing; two FGSM steps to choose from.
FIT_OVERRIDES = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.OOD.POST_HOC.SAFE.EPSILON_CANDIDATES", "[4.0, 8.0]",
    "MODEL.OOD.POST_HOC.SAFE.MAX_IMAGES", "10",
    "DATALOADER.NUM_WORKERS", "0",
]


class _Detector(nn.Module):
    """Stands for a GeneralizedRCNN: the layer rule only reads ``model.backbone``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def _resnet_fpn(depth):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if depth < 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))


def _regnetx_4gf_fpn():
    # detectron2's RegNetX-4.0GF (configs/common/models/mask_rcnn_regnetx_4gf_dds_fpn.py).
    bottom_up = RegNet(
        stem_class=SimpleStem, stem_width=32, block_class=ResBottleneckBlock, depth=23, w_a=38.65,
        w_0=96, w_m=2.43, group_width=40, norm="BN", out_features=["s1", "s2", "s3", "s4"],
    )
    return FPN(bottom_up=bottom_up, in_features=["s1", "s2", "s3", "s4"], out_channels=32)


def _release_rule(model, variant):
    """The modules SAFE_Official's featureTracker hooks (SAFE/shared/tracker.py l. 20-31)."""
    if variant == "regnetx":
        return [f"backbone.bottom_up.s{k}.b1.bn" for k in (1, 2, 3, 4)]
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" in name]


@pytest.mark.parametrize(
    "variant,build,expected",
    [
        ("r18", lambda: _resnet_fpn(18), R18_SHORTCUTS),
        ("r50", lambda: _resnet_fpn(50), [f"backbone.bottom_up.res{k}.0.shortcut" for k in (2, 3, 4, 5)]),
        ("regnetx", _regnetx_4gf_fpn, [f"backbone.bottom_up.s{k}.b1.bn" for k in (1, 2, 3, 4)]),
    ],
)
def test_layer_rule_hooks_the_projection_shortcuts_the_release_hooks(variant, build, expected):
    torch.manual_seed(0)
    model = _Detector(build()).eval()
    names = match_layers(model, DEFAULT_LAYER_PATTERNS)
    assert names == expected == _release_rule(model, variant)
    for name in names:
        block = model.get_submodule(name.rsplit(".", 1)[0])
        # The projection of a block that changes width or stride (RegNet: its proj conv's BN).
        assert hasattr(block, "proj") if variant == "regnetx" else block.shortcut.norm is not None

    # Hooked on a small input, the maps are the shortcuts' outputs at strides 4 / 8 / 16 / 32,
    # pooled as the release pools them: roi_align to 1 x 1 at scale h / H.
    capture = LayerCapture(model, names)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        model.backbone(images)
    boxes = [torch.tensor([[4.0, 8.0, 40.0, 60.0]]), torch.tensor([[0.0, 0.0, 95.0, 63.0], [50.0, 10.0, 70.0, 30.0]])]
    expected_features = torch.cat(
        [roi_align(capture.maps[n], boxes, (1, 1), capture.maps[n].shape[-2] / 64).mean(dim=(2, 3)) for n in names],
        dim=1,
    )
    torch.testing.assert_close(capture.pool(boxes), expected_features)
    strides = [64 // capture.maps[n].shape[-2] for n in names]
    assert strides == sorted(strides) and strides[-1] == 32
    capture.remove()
    with torch.no_grad():
        model.backbone(2 * images)
    assert capture.pool(boxes).shape == expected_features.shape  # the last maps kept, not new ones


def test_config_defaults_are_the_modules_defaults():
    safe = default_config().MODEL.OOD.POST_HOC.SAFE
    assert tuple(safe.LAYER_PATTERNS) == DEFAULT_LAYER_PATTERNS
    assert safe.FGSM_EPSILON in safe.EPSILON_CANDIDATES == [2.0, 4.0, 8.0, 16.0]
    assert (safe.EPOCHS, safe.LEARNING_RATE, safe.IMAGES_PER_BATCH) == (5, 1e-3, 32)


def test_a_backbone_without_shortcuts_gets_one_line_naming_the_key(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg(tmp_path))
    with pytest.raises(ValueError, match="LAYER_PATTERNS") as error:
        match_layers(model, DEFAULT_LAYER_PATTERNS)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="not a regular expression"):
        match_layers(model, ["res(3"])


def test_pooling_a_linear_map_gives_its_value_at_the_box_centre():
    # aligned=False, as released: pixel x maps to x / stride, no half-pixel shift.
    height, width, stride = 64, 64, 8
    ys, xs = torch.meshgrid(torch.arange(height // stride).float(), torch.arange(width // stride).float(), indexing="ij")
    feature_map = torch.stack([xs, ys])[None]
    boxes = [torch.tensor([[8.0, 16.0, 40.0, 32.0], [20.0, 12.0, 36.0, 44.0]])]
    pooled = pool_boxes_1x1([feature_map], (height, width), boxes)
    centres = (boxes[0][:, :2] + boxes[0][:, 2:]) / 2 / stride
    torch.testing.assert_close(pooled, centres)


def test_mlp_is_the_release_metaclassifier():
    mlp = safe_mlp(64)
    shapes = [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)]
    assert shapes == [(64, 32), (32, 16), (16, 1)]
    assert [type(m) for m in mlp] == [nn.Linear, nn.Linear, nn.Dropout, nn.Linear] and mlp[2].p == 0.5
    assert all(torch.all(m.bias == 0.01) for m in mlp if isinstance(m, nn.Linear))
    bound = (6.0 / (64 + 32)) ** 0.5  # Xavier-uniform
    assert mlp[0].weight.abs().max() <= bound and mlp[0].weight.abs().max() > 0.9 * bound


def _separable_boxes(num_images=60, boxes_per_image=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(num_images * boxes_per_image, dim, generator=g) + 5.0
    perturbed = clean + 1.0 + 2.0 * torch.randn(clean.shape, generator=g).abs()
    image_index = torch.arange(num_images).repeat_interleave(boxes_per_image)
    return clean, perturbed, image_index


def test_mlp_training_centres_on_the_clean_mean_and_tells_perturbed_boxes_apart():
    clean, perturbed, image_index = _separable_boxes()
    options = dict(epochs=5, learning_rate=1e-2, images_per_batch=4, validation_fraction=0.2, seed=0)
    mlp, mean, record = train_safe_mlp(clean, perturbed, image_index, **options)
    torch.testing.assert_close(mean, clean.mean(dim=0))
    assert not mlp.training and 1 <= record["epoch"] <= 5
    assert record["validation_accuracy"] > 0.9
    # The logit of "clean" is higher for the clean boxes.
    assert (mlp(clean - mean) > mlp(perturbed - mean)).float().mean() > 0.9
    again, _, _ = train_safe_mlp(clean, perturbed, image_index, **options)
    for a, b in zip(mlp.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="too few"):
        train_safe_mlp(clean[:3], perturbed[:3], image_index[:3], **options)


# --- on a detector -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18_detector(tmp_path_factory, registered_tiny_digits):
    """A random-init digits R-18 detector (detectron2 ResNet-18-FPN, VOS head), its weights
    and its SAFE state fitted by the tool on a tiny registered digits-det."""
    with registered_tiny_digits(str(tmp_path_factory.mktemp("datasets")), num_val=3):
        output_dir = tmp_path_factory.mktemp("model")
        overrides = [*FIT_OVERRIDES, "OUTPUT_DIR", str(output_dir)]
        torch.manual_seed(0)
        model = build_model(load_config("digits_vos_r18.yaml", overrides))
        DetectionCheckpointer(model, save_dir=str(output_dir)).save("model")
        weights = str(output_dir / "model.pth")
        state = fit_post_hoc_scores(
            load_config("digits_vos_r18.yaml", overrides),
            weights,
            scores=["safe"],
            val_id="digits_det_val",
            val_ood="digits_det_ood_val",
        )
        yield overrides, weights, state


def _loaded(overrides, weights, *more, build=Trainer.build_model):
    model = build(load_config("digits_vos_r18.yaml", [*overrides, *more]))
    DetectionCheckpointer(model).load(weights)
    return model.eval()


def _buffers(model):
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


def test_fgsm_raises_the_training_loss_and_changes_nothing_in_the_model(r18_detector):
    overrides, weights, _ = r18_detector
    model = _loaded(overrides, weights)
    cfg = load_config("digits_vos_r18.yaml", overrides)
    inputs = next(iter(safe_loader(cfg, "digits_det_train", max_images=2)))
    before = _buffers(model)
    eps = 2.0
    perturbed = fgsm_images(model, inputs, [eps], seed=3)[eps]
    assert not model.training
    after = _buffers(model)
    changed = [name for name in before if not torch.allclose(before[name], after[name], rtol=0, atol=0, equal_nan=True)]
    assert not changed
    for x, image in zip(inputs, perturbed):
        step = (image - x["image"].float()).abs()
        clamped = (image == 0) | (image == 255)
        assert torch.all((step == eps) | clamped) and image.min() >= 0 and image.max() <= 255

    def loss(images):
        # The summed training losses, BN in eval mode, on a copy (its buffers may change).
        copied = copy.deepcopy(model).train()
        for module in copied.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        with torch.no_grad(), EventStorage(0), torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            return float(sum(copied([{**x, "image": i} for x, i in zip(inputs, images)]).values()))

    assert loss(perturbed) > loss([x["image"].float() for x in inputs])


def test_fit_records_the_layers_and_the_chosen_step(r18_detector):
    _, _, state = r18_detector
    raw = torch.load(state, weights_only=True)
    assert set(raw["scores"]) == {"safe"}
    config = raw["scores"]["safe"]["config"]
    assert config["layers"] == R18_SHORTCUTS
    assert config["input_dim"] == 128 + 256 + 512
    assert config["num_images"] <= 10
    tried = config["epsilon_validation"]
    assert set(tried) == {"4", "8"}
    best = min(tried.values(), key=lambda r: (r["fpr95"], -r["auroc"]))
    assert tried[f"{config['epsilon']:g}"] == best
    assert config["epsilon_source"] == "lowest FPR95 on digits_det_val vs digits_det_ood_val"
    assert raw["info"]["safe_epsilon_validation"] == tried


def _direct_shortcut_features(model, batch, boxes):
    """The R-18's shortcut outputs, computed stage by stage, pooled as the release pools them."""
    bottom_up = model.backbone.bottom_up
    images = model.preprocess_image(batch).tensor
    x = bottom_up.res2(bottom_up.stem(images))
    pooled = []
    for stage in (bottom_up.res3, bottom_up.res4, bottom_up.res5):
        shortcut = stage[0].shortcut(x)
        scale = shortcut.shape[-2] / images.shape[-2]
        pooled.append(roi_align(shortcut, boxes, (1, 1), scale).mean(dim=(2, 3)))
        x = stage(x)
    return torch.cat(pooled, dim=1)


def test_every_detection_gets_the_safe_score_of_its_hooked_features(r18_detector, capture_box_inputs):
    overrides, weights, state = r18_detector
    model = _loaded(overrides, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "safe")
    cfg = load_config("digits_vos_r18.yaml", overrides)
    batch = next(iter(build_detection_test_loader(cfg, "digits_det_test")))
    predictor = model.roi_heads.box_predictor
    captured = capture_box_inputs(predictor)
    with torch.no_grad():
        outputs = model(batch)
        safe = predictor.post_hoc.scores["safe"]
        direct = _direct_shortcut_features(model, batch, captured["boxes"])
        expected = -safe.mlp(direct - safe.mean).squeeze(1)
    scores = torch.cat([o["instances"].ood_scores_safe for o in outputs])
    assert len(scores) > 0 and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.cat([o["instances"].ood_scores for o in outputs]), scores)
    # Fitted state and hooks live on the model's device.
    assert safe.mean.device == next(model.parameters()).device == safe.mlp[0].weight.device


def test_hooks_keep_the_module_outputs_only_for_a_pass_that_computes_safe(r18_detector):
    overrides, weights, state = r18_detector
    cfg = load_config("digits_vos_r18.yaml", overrides)
    batch = next(iter(build_detection_test_loader(cfg, "digits_det_test")))
    model = _loaded(overrides, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "vos")
    capture = model.roi_heads.box_predictor.post_hoc.scores["safe"]._capture
    with torch.no_grad(), computing_all_ood_scores(model):
        every = model(batch)
    assert set(capture.maps) == set(capture.names)
    assert all(o["instances"].has("ood_scores_safe") for o in every)
    # SAFE not asked for: the outputs of the pass are not held (nor those of the pass before).
    with torch.no_grad():
        asked = model(batch)
    assert capture.maps == {}
    assert not any(o["instances"].has("ood_scores_safe") for o in asked)
    for one, all_scores in zip(asked, every):
        assert torch.equal(one["instances"].ood_scores, all_scores["instances"].ood_scores_vos)
    # SAFE behind is_ood: kept for inference, not in training.
    model = _loaded(overrides, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "safe")
    capture = model.roi_heads.box_predictor.post_hoc.scores["safe"]._capture
    with torch.no_grad():
        model(batch)
    assert set(capture.maps) == set(capture.names)
    model.train()
    with EventStorage(0):
        model(next(iter(safe_loader(cfg, "digits_det_train", max_images=2))))
    assert capture.maps == {}


def test_without_the_hooks_safe_is_left_out_or_named(r18_detector):
    overrides, weights, state = r18_detector
    cfg = load_config("digits_vos_r18.yaml", overrides)
    batch = next(iter(build_detection_test_loader(cfg, "digits_det_test")))
    plain = _loaded(overrides, weights, "MODEL.OOD.POST_HOC.STATE", state, build=build_model)
    with torch.no_grad():
        outputs = plain(batch)
    assert not any(o["instances"].has("ood_scores_safe") for o in outputs)
    named = _loaded(overrides, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "safe", build=build_model)
    with pytest.raises(RuntimeError, match="attach_post_hoc_hooks"):
        with torch.no_grad():
            named(batch)
