"""VOS Faster R-CNN, R-50-FPN, PASCAL VOC 07+12 trainval: the recipe of vos_rcnn.yaml as a LazyConfig.

    python tools/lazyconfig_train_net.py --config vos_rcnn.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config vos_rcnn.py --eval-only train.init_checkpoint=model_final.pth

Detectron2's Mask R-CNN LazyConfig without the mask branch, with the VOS box predictor
(vos_det.lazyconfig.add_vos), the ImageNet R-50 weights of the yaml (MSRA: BGR input, std 1)
and the same solver, data and OOD evaluation.
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from vos_det.data.mapper import ImageNamingDatasetMapper
from vos_det.lazyconfig import add_vos

# --- model: R-50-FPN Faster R-CNN (detectron2's Mask R-CNN config without masks) + VOS ---
model = get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(num_classes=20, mask_in_features=None, mask_pooler=None, mask_head=None)
# MSRA ImageNet weights: BGR in [0, 255], the std folded into conv1 (so std 1), and the
# yaml's defaults: stem and res2 frozen.
model.pixel_std = [1.0, 1.0, 1.0]
model.backbone.bottom_up.freeze_at = 2
# The paper's VOS settings (MODEL.VOS of vos_rcnn.yaml).
# Branch main-MLP of the release (the paper's final numbers; see vos_rcnn.yaml): the MLP head
# and its score; and, as protocol "vos_official" does, NMS before the boxes are clipped.
add_vos(
    model, starting_iter=12000, sample_number=1000, sample_from=10000, select=1, vos_loss_weight=0.1,
    uncertainty_head="mlp", ood_score="vos_release",
)
model.roi_heads.box_predictor.nms_before_clip = True

# --- data: VOC 2007+2012 trainval; images named in mapping errors ---
dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = ("voc_2007_trainval", "voc_2012_trainval")
dataloader.train.mapper._target_ = ImageNamingDatasetMapper
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations[0].short_edge_length = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
dataloader.train.num_workers = 8
dataloader.test.dataset.names = "voc_2007_test"
dataloader.test.mapper._target_ = ImageNamingDatasetMapper
# The OOD protocol picks each ID set's evaluator from its metadata (VOC AP and COCO-style AP).
del dataloader.evaluator

# --- OOD evaluation: the VOS protocol on COCO and OpenImages (TEST.OOD keys, lower case) ---
ood_evaluation = dict(
    id_datasets=["voc_2007_test"],
    ood_datasets=["coco_ood_val", "openimages_ood_val"],
    protocol="vos_official",
)

# --- solver: 16 images per batch, 18k iterations, steps at 12k and 16k ---
optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[12000, 16000], num_updates=18000),
    warmup_length=100 / 18000,
    warmup_factor=0.001,
)
dataloader.train.total_batch_size = 16

train = get_config("common/train.py").train
train.update(
    output_dir="output/voc_vos_rcnn_lazy",
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    max_iter=18000,
    checkpointer=dict(period=2000, max_to_keep=100),
    eval_period=0,  # at the end of training only
)
