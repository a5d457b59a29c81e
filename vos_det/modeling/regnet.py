"""RegNet + FPN backbone for yacs configs (the paper's RegNetX-4.0GF detector)."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem

__all__ = ["build_regnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_regnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN on detectron2's :class:`RegNet`, shaped by ``cfg.MODEL.REGNET``.

    Detectron2 builds RegNets only from LazyConfigs; this is the same network for yacs
    configs. The defaults of ``MODEL.REGNET`` are RegNetX-4.0GF (Radosavovic et al., CVPR
    2020), the second backbone of the VOS paper. Stages are named ``s1`` .. ``s4`` (strides 4
    to 32), stages before ``MODEL.BACKBONE.FREEZE_AT`` are frozen as for ResNets.
    """
    regnet = cfg.MODEL.REGNET
    bottom_up = RegNet(
        stem_class=SimpleStem,
        stem_width=regnet.STEM_WIDTH,
        block_class=ResBottleneckBlock,
        depth=regnet.DEPTH,
        w_a=regnet.W_A,
        w_0=regnet.W_0,
        w_m=regnet.W_M,
        group_width=regnet.GROUP_WIDTH,
        se_ratio=regnet.SE_RATIO,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=regnet.NORM,
        out_features=regnet.OUT_FEATURES,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
