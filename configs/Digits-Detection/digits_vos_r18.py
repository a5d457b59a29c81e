"""VOS on digits-det with detectron2's ResNet-18-FPN: digits_vos_r18.yaml as a LazyConfig.

    python tools/lazyconfig_train_net.py --config digits_vos_r18.py

digits_vos_tiny.py (data, RPN, box head, VOS options, solver, OOD evaluation) with the
tiny conv FPN replaced by detectron2's ResNet at depth 18 (BasicBlocks, BN trained from
scratch, nothing frozen) and res2-res5 into the FPN.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .digits_vos_tiny import dataloader, lr_multiplier, model, ood_evaluation, optimizer, train  # noqa: F401

model.backbone = L(FPN)(
    bottom_up=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
        stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=0,
    ),
    in_features=["res2", "res3", "res4", "res5"],
    out_channels=64,
    top_block=L(LastLevelMaxPool)(),
)
train.output_dir = "output/digits_vos_r18_lazy"
