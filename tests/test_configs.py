"""The VOC recipes build and train a few iterations on the CPU; config lookup by name."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from vos_det import add_vos_config
from vos_det.config import CONFIGS_DIR, resolve_config_file
from vos_det.modeling import VOSOutputLayers

NUM_VOC_CLASSES = 20
IMAGE_SIZE = 96


def _load(name, *overrides):
    cfg = get_cfg()
    add_vos_config(cfg)
    cfg.merge_from_file(resolve_config_file(name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *overrides])
    return cfg


def _voc_like_batch(num_images, generator):
    """Tiny images whose boxes cover all 20 classes (so every class queue gets features)."""
    batch = []
    classes = torch.arange(NUM_VOC_CLASSES).chunk(num_images)
    for image_classes in classes:
        instances = Instances((IMAGE_SIZE, IMAGE_SIZE))
        corners = torch.randint(0, IMAGE_SIZE // 2, (len(image_classes), 2), generator=generator).float()
        sizes = torch.randint(16, IMAGE_SIZE // 2, (len(image_classes), 2), generator=generator).float()
        instances.gt_boxes = Boxes(torch.cat([corners, corners + sizes], dim=1))
        instances.gt_classes = image_classes
        image = torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), generator=generator).float()
        batch.append({"image": image, "instances": instances, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return batch


def test_bare_config_name_resolves_under_configs():
    assert resolve_config_file("vos_rcnn.yaml") == str(CONFIGS_DIR / "VOC-Detection" / "vos_rcnn.yaml")
    assert resolve_config_file("VOC-Detection/vanilla_rcnn.yaml").endswith("vanilla_rcnn.yaml")
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml"):
        resolve_config_file("no_such_config.yaml")


def test_train_net_accepts_config_alias():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net", CONFIGS_DIR.parent / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(["--config", "vos_rcnn.yaml", "--num-gpus", "8"])
    assert args.config_file == "vos_rcnn.yaml" and args.num_gpus == 8


def test_vos_recipe_matches_the_paper():
    vos = _load("vos_rcnn.yaml").MODEL.VOS
    assert (vos.ENABLED, vos.STARTING_ITER, vos.SAMPLE_NUMBER, vos.SAMPLE_FROM, vos.SELECT) == (
        True, 12000, 1000, 10000, 1,
    )
    assert vos.LOSS_WEIGHT == pytest.approx(0.1)
    cfg = _load("vos_rcnn.yaml")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == NUM_VOC_CLASSES and cfg.SOLVER.MAX_ITER == 18000
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert not _load("vanilla_rcnn.yaml").MODEL.VOS.ENABLED


@pytest.mark.parametrize("name", ["vos_rcnn.yaml", "vanilla_rcnn.yaml"])
def test_voc_recipe_trains_and_infers_on_cpu(name):
    torch.manual_seed(0)
    cfg = _load(
        name,
        "MODEL.VOS.STARTING_ITER", "1",
        "MODEL.VOS.SAMPLE_NUMBER", "2",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
    )
    model = build_model(cfg)
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, VOSOutputLayers)
    assert predictor.vos_enabled == cfg.MODEL.VOS.ENABLED
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    loss_history = []
    with EventStorage(0) as storage:
        for iteration in range(3):
            storage.iter = iteration
            losses = model(_voc_like_batch(2, generator))
            loss_history.append({k: float(v) for k, v in losses.items()})
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    if cfg.MODEL.VOS.ENABLED:
        assert predictor.feature_queues.features.shape == (NUM_VOC_CLASSES, 2, 1024)
        assert loss_history[0]["loss_vos"] == 0.0
        assert loss_history[-1]["loss_vos"] > 0.0
    else:
        assert all("loss_vos" not in losses for losses in loss_history)
    model.eval()
    with torch.no_grad():
        outputs = model(_voc_like_batch(1, generator))
    instances = outputs[0]["instances"]
    for field in ("id_scores", "ood_scores", "is_ood", "ood_scores_energy"):
        assert len(instances.get(field)) == len(instances.pred_boxes)
