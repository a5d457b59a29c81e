"""LazyConfig versions of the VOC and digits recipes, and what tools/lazyconfig_train_net.py runs
(vos_det.lazyconfig) on the CPU."""
import json

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.model_zoo import get_config
from detectron2.modeling import build_model

from vos_det.config import load_config, resolve_config_file
from vos_det.evaluation.protocol import OOD_RESULTS_FILE
from vos_det.lazyconfig import (
    add_vos,
    evaluate_lazy_checkpoint,
    load_lazy_config,
    ood_evaluation_config,
    train_lazy_config,
    vos_options,
)
from vos_det.modeling import VOSOutputLayers, VOSROIHeads
from vos_det.config.vos_keys import vos_kwargs_from_config

# (LazyConfig, the yaml it mirrors).
RECIPES = (
    ("VOC-Detection/vos_rcnn.py", "VOC-Detection/vos_rcnn.yaml"),
    ("Digits-Detection/digits_vos_tiny.py", "Digits-Detection/digits_vos_tiny.yaml"),
    ("Digits-Detection/digits_vos_r18.py", "Digits-Detection/digits_vos_r18.yaml"),
)


def _hyperparameters(model):
    """The settings of an R-CNN that are not visible in its parameter shapes."""
    rpn, roi_heads = model.proposal_generator, model.roi_heads
    return {
        "pixel": (model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist(), model.input_format),
        "rpn": (rpn.in_features, rpn.pre_nms_topk, rpn.post_nms_topk, rpn.batch_size_per_image, rpn.nms_thresh),
        "anchors": [a.tolist() for a in rpn.anchor_generator.cell_anchors],
        "roi_heads": (roi_heads.batch_size_per_image, roi_heads.positive_fraction, roi_heads.box_in_features),
        "frozen": sorted(name for name, p in model.named_parameters() if not p.requires_grad),
    }


@pytest.mark.parametrize("lazy_file, yaml_file", RECIPES)
def test_lazy_config_builds_the_model_of_its_yaml(lazy_file, yaml_file):
    cfg = LazyConfig.load(resolve_config_file(lazy_file))
    lazy = instantiate(cfg.model)
    yacs_cfg = load_config(yaml_file, ["MODEL.DEVICE", "cpu"])
    reference = build_model(yacs_cfg)

    assert type(lazy.roi_heads) is VOSROIHeads and type(lazy.roi_heads.box_predictor) is VOSOutputLayers
    assert {k: v.shape for k, v in lazy.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert _hyperparameters(lazy) == _hyperparameters(reference)
    predictor, reference_predictor = lazy.roi_heads.box_predictor, reference.roi_heads.box_predictor
    for name in vos_kwargs_from_config(yacs_cfg):
        assert getattr(predictor, name) == getattr(reference_predictor, name), name
    assert predictor.feature_queues.capacity == reference_predictor.feature_queues.capacity

    # Training and evaluation settings.
    assert cfg.train.max_iter == yacs_cfg.SOLVER.MAX_ITER
    assert cfg.dataloader.train.total_batch_size == yacs_cfg.SOLVER.IMS_PER_BATCH
    assert cfg.optimizer.lr == yacs_cfg.SOLVER.BASE_LR
    assert tuple(cfg.dataloader.train.dataset.names) == tuple(yacs_cfg.DATASETS.TRAIN) or (
        cfg.dataloader.train.dataset.names == yacs_cfg.DATASETS.TRAIN[0]
    )
    ood_cfg = ood_evaluation_config(cfg.ood_evaluation)
    assert ood_cfg.DATASETS.TEST == yacs_cfg.DATASETS.TEST and ood_cfg.DATASETS.OOD_TEST == yacs_cfg.DATASETS.OOD_TEST
    assert ood_cfg.TEST.OOD == yacs_cfg.TEST.OOD


def test_add_vos_puts_vos_on_a_model_zoo_config():
    model = add_vos(get_config("common/models/mask_rcnn_fpn.py").model, select=3)
    assert model.roi_heads._target_ is VOSROIHeads
    assert model.roi_heads.box_predictor._target_ is VOSOutputLayers
    assert model.roi_heads.box_predictor.select == 3
    assert model.roi_heads.box_predictor.starting_iter == vos_options()["starting_iter"]
    with pytest.raises(ValueError, match="unknown VOS option"):
        vos_options(selekt=3)
    cascade = get_config("common/models/cascade_rcnn.py").model
    with pytest.raises(ValueError, match="one box_predictor"):
        add_vos(cascade)
    with pytest.raises(ValueError, match="ood_evaluation.fpr is not a setting"):
        ood_evaluation_config({"fpr": 95})


def test_digits_lazy_config_trains_and_evaluates_on_the_cpu(tiny_digits_root, tmp_path):
    cfg = load_lazy_config(
        "digits_vos_tiny.py",
        [
            f"train.output_dir={tmp_path}",
            "train.max_iter=6",
            "dataloader.train.total_batch_size=4",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            "model.roi_heads.box_predictor.starting_iter=3",
            "model.roi_heads.box_predictor.sample_number=4",
            "model.roi_heads.box_predictor.sample_from=200",
            "model.roi_heads.box_predictor.test_score_thresh=0.0",
            "ood_evaluation.box_selection=fixed",
            "ood_evaluation.score_threshold=0.0",
            "ood_evaluation.plots=False",
        ],
    )
    torch.manual_seed(0)
    trainer = train_lazy_config(cfg)

    losses = {int(i): v for v, i in trainer.storage.history("loss_vos").values()}
    assert sorted(losses) == list(range(6))
    assert all(losses[i] == 0.0 for i in range(3)) and all(losses[i] > 0.0 for i in range(3, 6))
    assert (tmp_path / "model_final.pth").exists()

    results = json.loads((tmp_path / OOD_RESULTS_FILE).read_text())["results"]
    assert set(results["digits_det_test"]["bbox"]) >= {"AP", "AP50"}
    assert set(results["ood"]["digits_det_test"]["digits_det_ood"]) >= {"vos", "energy", "weighted_energy", "msp"}
    # Calibrated on digits_det_val, as the yaml.
    assert (tmp_path / "model_calibrated.pth").exists()

    # --eval-only of the trained weights gives the same OOD results.
    eval_cfg = load_lazy_config(
        "digits_vos_tiny.py",
        [
            f"train.output_dir={tmp_path / 'eval'}",
            f"train.init_checkpoint={tmp_path / 'model_final.pth'}",
            "model.roi_heads.box_predictor.test_score_thresh=0.0",
            "dataloader.test.num_workers=0",
            "ood_evaluation.box_selection=fixed",
            "ood_evaluation.score_threshold=0.0",
            "ood_evaluation.plots=False",
            "ood_evaluation.calibration_dataset=",
        ],
    )
    evaluated = evaluate_lazy_checkpoint(eval_cfg)["ood"]["digits_det_test"]["digits_det_ood"]
    for score, metrics in results["ood"]["digits_det_test"]["digits_det_ood"].items():
        assert evaluated[score] == pytest.approx(metrics), score
