"""VOS on the built-in digits-det benchmark, CPU, minutes: digits_vos_tiny.yaml as a LazyConfig.

    python tools/lazyconfig_train_net.py --config digits_vos_tiny.py

A tiny conv FPN (vos_det.modeling.backbone.tiny_fpn) and a slim box head under detectron2's
R-CNN LazyConfig, with the VOS box predictor (vos_det.lazyconfig.add_vos); data, solver and
OOD evaluation as in the yaml.
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from vos_det.data.mapper import ImageNamingDatasetMapper
from vos_det.lazyconfig import add_vos
from vos_det.modeling.backbone import tiny_fpn

# --- model: detectron2's R-CNN config with a tiny backbone, small RPN and box head ---
model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone = L(tiny_fpn)(
    in_channels=3, stage_channels=[32, 64, 128], norm="BN", in_features=["res2", "res3", "res4"], out_channels=64
)
model.pixel_std = [1.0, 1.0, 1.0]
model.proposal_generator.update(
    in_features=["p2", "p3", "p4", "p5"],
    pre_nms_topk=(512, 512),
    post_nms_topk=(256, 256),
    batch_size_per_image=128,
)
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.update(sizes=[[16], [32], [64], [128]], strides=[4, 8, 16, 32])
model.roi_heads.update(
    num_classes=5, batch_size_per_image=64, mask_in_features=None, mask_pooler=None, mask_head=None
)
model.roi_heads.box_head.update(input_shape=ShapeSpec(channels=64, height=7, width=7), fc_dims=[128, 128])
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=128)
add_vos(model, starting_iter=800, sample_number=300, sample_from=10000, select=1, vos_loss_weight=0.1)

# --- data: 128x128 digits-det images, no flip ---
dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "digits_det_train"
dataloader.train.mapper.update(
    _target_=ImageNamingDatasetMapper,
    use_instance_mask=False,
    augmentations=[L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=128, sample_style="choice")],
)
dataloader.train.update(total_batch_size=8, num_workers=1)
dataloader.test.dataset.names = "digits_det_test"
dataloader.test.mapper.update(
    _target_=ImageNamingDatasetMapper,
    augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)],
)
dataloader.test.num_workers = 1
# The OOD protocol picks each ID set's evaluator from its metadata.
del dataloader.evaluator

# --- OOD evaluation (TEST.OOD keys, lower case; the others keep their defaults) ---
ood_evaluation = dict(
    id_datasets=["digits_det_test"],
    ood_datasets=["digits_det_ood"],
    score_threshold=0.5,
    calibration_dataset="digits_det_val",
)

# --- solver: 1200 iterations of 8 images, steps at 1000 and 1150 ---
optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[1000, 1150], num_updates=1200),
    warmup_length=100 / 1200,
    warmup_factor=0.001,
)

train = get_config("common/train.py").train
train.update(
    output_dir="output/digits_vos_tiny_lazy",
    init_checkpoint="",
    max_iter=1200,
    checkpointer=dict(period=400, max_to_keep=100),
    eval_period=0,  # at the end of training only
    device="cpu",
    seed=0,
)
