"""RegNet + FPN backbone for yacs configs (the paper's RegNetX-4.0GF detector)."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem

from .config_options import options_from_config

__all__ = ["build_regnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_regnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN on detectron2's :class:`RegNet`, shaped by ``cfg.MODEL.REGNET``.

    Detectron2 builds RegNets only from LazyConfigs; this is the same network for yacs
    configs. The defaults of ``MODEL.REGNET`` are RegNetX-4.0GF (Radosavovic et al., CVPR
    2020), the second backbone of the VOS paper. Stages are named ``s1`` .. ``s4`` (strides 4
    to 32), stages before ``MODEL.BACKBONE.FREEZE_AT`` are frozen as for ResNets.
    """
    bottom_up = RegNet(
        stem_class=SimpleStem,
        block_class=ResBottleneckBlock,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        **options_from_config(
            cfg.MODEL.REGNET,
            "stem_width", "depth", "w_a", "w_0", "w_m", "group_width", "se_ratio", "norm", "out_features",
        ),
    )
    fpn_options = options_from_config(cfg.MODEL.FPN, "in_features", "out_channels", "norm", "fuse_type")
    return FPN(bottom_up=bottom_up, top_block=LastLevelMaxPool(), **fpn_options)
