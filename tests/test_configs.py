"""Every config names an input convention that fits its weights; the paper's recipes (VOC and
BDD100k, R-50 and RegNetX-4.0GF) build and train a few iterations on the CPU; config lookup."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det.config import CONFIGS_DIR, load_config, resolve_config_file
from vos_det.modeling import VOSOutputLayers

IMAGE_SIZE = 96

# ImageNet statistics in 0-255 pixel units, RGB order.
IMAGENET_MEAN_RGB = (123.675, 116.280, 103.530)
IMAGENET_STD_RGB = (58.395, 57.120, 57.375)

# The input each kind of ImageNet weights was trained on: (what to look for in MODEL.WEIGHTS,
# name, INPUT.FORMAT, PIXEL_MEAN, PIXEL_STD), means and stds in the order of the format.
WEIGHT_CONVENTIONS = (
    # Detectron1 / MSRA caffe2 ResNets: BGR, the std folded into conv1 (detectron2's defaults).
    ("ImageNetPretrained/MSRA/", "MSRA (Detectron1)", "BGR", IMAGENET_MEAN_RGB[::-1], (1.0, 1.0, 1.0)),
    # FAIR's caffe2 ResNeXts (e.g. X-101-32x8d): BGR with the ImageNet std.
    ("ImageNetPretrained/FAIR/", "FAIR (caffe2)", "BGR", IMAGENET_MEAN_RGB[::-1], IMAGENET_STD_RGB[::-1]),
    # torchvision models (converted to .pkl by detectron2's tools, or .pth): RGB, ImageNet mean / std.
    ("ImageNetPretrained/torchvision/", "torchvision", "RGB", IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    ("download.pytorch.org/models/", "torchvision", "RGB", IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    # pycls (RegNets): images read with OpenCV (BGR), ImageNet mean / std in BGR order.
    ("/pycls/", "pycls", "BGR", IMAGENET_MEAN_RGB[::-1], IMAGENET_STD_RGB[::-1]),
)

# The paper's recipes: each builds and trains on the CPU below.
RECIPES = (
    "VOC-Detection/vos_rcnn.yaml",
    "VOC-Detection/vanilla_rcnn.yaml",
    "VOC-Detection/vos_regnetx.yaml",
    "VOC-Detection/vanilla_regnetx.yaml",
    "BDD-Detection/vos_rcnn.yaml",
    "BDD-Detection/vanilla_rcnn.yaml",
)


def _load(name, *overrides):
    return load_config(name, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *overrides])


def _input_convention(weights: str):
    """The convention of ``weights`` from WEIGHT_CONVENTIONS; None for random initialisation."""
    if not weights:
        return None
    matches = [convention for convention in WEIGHT_CONVENTIONS if convention[0] in weights]
    if len(matches) != 1:
        pytest.fail(
            f"no known input convention for weights {weights!r}: add one to WEIGHT_CONVENTIONS "
            "(what the weights were trained on: channel order, mean, std)"
        )
    return matches[0][1:]


def _config_input(path: Path):
    """(weights, input format, pixel mean, pixel std) of a yacs (.yaml) or LazyConfig (.py) file."""
    if path.suffix == ".py":
        lazy = LazyConfig.load(str(path))
        model, train = lazy.get("model"), lazy.get("train")
        if model is None or train is None or "pixel_std" not in model:
            pytest.skip(f"{path.name}: a LazyConfig without model.pixel_std and train (not a model config)")
        return train.get("init_checkpoint", ""), model.input_format, model.pixel_mean, model.pixel_std
    cfg = load_config(str(path))
    return cfg.MODEL.WEIGHTS, cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD


def _all_configs():
    return sorted(p for p in CONFIGS_DIR.rglob("*") if p.suffix in (".yaml", ".py") and p.is_file())


@pytest.mark.parametrize("path", _all_configs(), ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_input_convention_matches_the_weights(path):
    weights, input_format, pixel_mean, pixel_std = _config_input(path)
    convention = _input_convention(weights)
    if convention is None:
        return  # random initialisation: the model learns whatever scale it is given
    name, expected_format, expected_mean, expected_std = convention
    where = f"{path.relative_to(CONFIGS_DIR)} (weights {weights!r}, {name} convention)"
    assert input_format == expected_format, f"{where}: INPUT.FORMAT {input_format!r}, expected {expected_format!r}"
    assert list(pixel_mean) == pytest.approx(expected_mean, abs=1e-3), f"{where}: PIXEL_MEAN {list(pixel_mean)}"
    assert list(pixel_std) == pytest.approx(expected_std, abs=1e-3), f"{where}: PIXEL_STD {list(pixel_std)}"


def test_every_recipe_names_imagenet_weights():
    """The convention test is not vacuous for the paper's recipes: each names known weights."""
    assert {_input_convention(_config_input(CONFIGS_DIR / name)[0])[0] for name in RECIPES} == {
        "MSRA (Detectron1)",
        "pycls",
    }


def test_convention_table_catches_the_old_voc_bug():
    # The VOC recipe once divided MSRA-weight inputs by the ImageNet std.
    _, _, _, expected_std = _input_convention("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert list(IMAGENET_STD_RGB[::-1]) != pytest.approx(expected_std)


def test_bare_config_name_resolves_under_configs():
    assert resolve_config_file("VOC-Detection/vos_rcnn.yaml") == str(CONFIGS_DIR / "VOC-Detection" / "vos_rcnn.yaml")
    assert resolve_config_file("vos_regnetx.yaml") == str(CONFIGS_DIR / "VOC-Detection" / "vos_regnetx.yaml")
    # VOC and BDD100k both have a vos_rcnn.yaml: the bare name is the VOC recipe (the
    # documented `train_net.py --config vos_rcnn.yaml`); BDD needs its folder.
    assert resolve_config_file("vos_rcnn.yaml") == str(CONFIGS_DIR / "VOC-Detection" / "vos_rcnn.yaml")
    assert resolve_config_file("BDD-Detection/vos_rcnn.yaml") == str(CONFIGS_DIR / "BDD-Detection" / "vos_rcnn.yaml")
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml"):
        resolve_config_file("no_such_config.yaml")


def test_train_net_accepts_config_alias():
    # The tool parses --config and --num-gpus (argparse would exit 2 on an unknown option),
    # then fails on the missing file, named.
    result = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config", "no_such_config.yaml", "--num-gpus", "8"],
        cwd=CONFIGS_DIR.parent, capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stderr
    assert "error: config file 'no_such_config.yaml' not found" in result.stderr


def test_voc_recipe_matches_the_paper():
    cfg = _load("VOC-Detection/vos_rcnn.yaml")
    vos = cfg.MODEL.VOS
    assert (vos.ENABLED, vos.STARTING_ITER, vos.SAMPLE_NUMBER, vos.SAMPLE_FROM, vos.SELECT) == (
        True, 12000, 1000, 10000, 1,
    )
    assert vos.LOSS_WEIGHT == pytest.approx(0.1)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20 and cfg.SOLVER.MAX_ITER == 18000
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS) == (16, 0.02, (12000, 16000))
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.TEST.OOD.PROTOCOL == "vos_official"
    assert cfg.DATASETS.OOD_TEST == ("coco_ood_val", "openimages_ood_val")
    assert not _load("VOC-Detection/vanilla_rcnn.yaml").MODEL.VOS.ENABLED


def test_bdd_recipe_matches_the_released_schedule():
    cfg = _load("BDD-Detection/vos_rcnn.yaml")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 10
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == (
        16, 0.02, (60000, 80000), 90000,
    )
    assert (cfg.MODEL.VOS.STARTING_ITER, cfg.MODEL.VOS.SAMPLE_NUMBER) == (60000, 300)
    assert cfg.DATASETS.TRAIN == ("bdd100k_train",) and cfg.DATASETS.TEST == ("bdd100k_val",)
    assert not _load("BDD-Detection/vanilla_rcnn.yaml").MODEL.VOS.ENABLED


def test_regnetx_backbone_is_regnetx_4gf():
    cfg = _load("vos_regnetx.yaml")
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(5e-5)
    backbone = build_model(cfg).backbone
    stages = [getattr(backbone.bottom_up, f"s{i}") for i in range(1, 5)]
    # RegNetX-4.0GF (Radosavovic et al. 2020, pycls): depths 2, 5, 14, 2; widths 80, 240,
    # 560, 1360; group width 40; a 32-channel stem.
    assert [len(list(stage.children())) for stage in stages] == [2, 5, 14, 2]
    assert [backbone.bottom_up.output_shape()[f"s{i}"].channels for i in range(1, 5)] == [80, 240, 560, 1360]
    first_block = next(stages[0].children())
    assert first_block.f.b.groups == 80 // 40
    assert backbone.bottom_up.stem.conv.out_channels == 32
    assert {name: shape.stride for name, shape in backbone.output_shape().items()} == {
        "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64,
    }
    # FREEZE_AT 2: the stem and s1 are frozen, as the ResNet recipe's stem and res2.
    assert not any(p.requires_grad for p in backbone.bottom_up.s1.parameters())
    assert all(p.requires_grad for p in backbone.bottom_up.s2.parameters())


def _batch(num_images, num_classes, generator):
    """Tiny images whose boxes cover every class (so every class queue gets features)."""
    batch = []
    for image_classes in torch.arange(num_classes).chunk(num_images):
        instances = Instances((IMAGE_SIZE, IMAGE_SIZE))
        corners = torch.randint(0, IMAGE_SIZE // 2, (len(image_classes), 2), generator=generator).float()
        sizes = torch.randint(16, IMAGE_SIZE // 2, (len(image_classes), 2), generator=generator).float()
        instances.gt_boxes = Boxes(torch.cat([corners, corners + sizes], dim=1))
        instances.gt_classes = image_classes
        image = torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), generator=generator).float()
        batch.append({"image": image, "instances": instances, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return batch


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_and_infers_on_cpu(name):
    torch.manual_seed(0)
    cfg = _load(
        name,
        "MODEL.VOS.STARTING_ITER", "1",
        "MODEL.VOS.SAMPLE_NUMBER", "1",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "256",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    )
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    model = build_model(cfg)
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, VOSOutputLayers)
    assert predictor.vos_enabled == cfg.MODEL.VOS.ENABLED
    # Random weights on raw 0-255 pixels (std 1, as the ImageNet weights expect): a small
    # step keeps these few iterations finite.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    loss_history = []
    with EventStorage(0) as storage:
        # Two images per step holding every class between them: their ground-truth boxes
        # (appended to the proposals) fill each 1-feature queue at iteration 0 already, and
        # synthesis starts at iteration 1.
        for iteration in range(2):
            storage.iter = iteration
            losses = model(_batch(2, num_classes, generator))
            loss_history.append({k: float(v) for k, v in losses.items()})
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in loss_history)
    if cfg.MODEL.VOS.ENABLED:
        assert predictor.feature_queues.features.shape == (num_classes, 1, 1024)
        assert loss_history[0]["loss_vos"] == 0.0
        assert loss_history[-1]["loss_vos"] > 0.0
    else:
        assert all("loss_vos" not in losses for losses in loss_history)
    model.eval()
    with torch.no_grad():
        outputs = model(_batch(1, num_classes, generator))
    instances = outputs[0]["instances"]
    for field in ("id_scores", "ood_scores", "is_ood", f"ood_scores_{cfg.MODEL.OOD.SCORE}", "proposal_scores"):
        assert len(instances.get(field)) == len(instances.pred_boxes)


def test_bare_config_name_outside_the_preferred_folder_is_ambiguous(tmp_path, monkeypatch):
    import vos_det.config.loading as config_module

    for folder in ("A-Detection", "B-Detection"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.yaml").write_text("VERSION: 2\n")
    monkeypatch.setattr(config_module, "CONFIGS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="ambiguous.*A-Detection/same.yaml.*B-Detection/same.yaml"):
        config_module.resolve_config_file("same.yaml")
    (tmp_path / "VOC-Detection").mkdir()
    (tmp_path / "VOC-Detection" / "same.yaml").write_text("VERSION: 2\n")
    assert config_module.resolve_config_file("same.yaml") == str(tmp_path / "VOC-Detection" / "same.yaml")
