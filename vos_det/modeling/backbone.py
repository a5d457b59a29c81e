"""A few-layer convolutional backbone with FPN, for the CPU digits-det benchmark."""
import math

import fvcore.nn.weight_init as weight_init
from torch.nn import functional as F

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

__all__ = ["TinyConvNet", "build_tiny_fpn_backbone", "tiny_fpn"]


class TinyConvNet(Backbone):
    """A stride-2 stem and one stride-2 stage per entry of ``stage_channels``.

    Each stage is two 3x3 convolutions (the first with stride 2) with normalisation and
    ReLU. Stage i is named ``res{i + 2}`` and has stride 2 ** (i + 2), like ResNet's, so the
    FPN configs of detectron2 apply unchanged.
    """

    def __init__(self, in_channels: int, stage_channels, norm: str = "BN"):
        """
        Args:
            in_channels: channels of the input image (3 for RGB).
            stage_channels (list[int]): output channels of each stage.
            norm: normalisation of every conv, see :func:`detectron2.layers.get_norm`.
        """
        super().__init__()
        if not stage_channels:
            raise ValueError("MODEL.TINY_NET.STAGE_CHANNELS must list at least one stage")
        stem_channels = stage_channels[0] // 2 or 1
        self.stem = self._conv(in_channels, stem_channels, stride=2, norm=norm)
        self.stage_names = []
        self._out_feature_channels, self._out_feature_strides = {}, {}
        previous = stem_channels
        for index, channels in enumerate(stage_channels):
            name = f"res{index + 2}"
            stage = [
                self._conv(previous, channels, stride=2, norm=norm),
                self._conv(channels, channels, stride=1, norm=norm),
            ]
            for layer_index, layer in enumerate(stage):
                self.add_module(f"{name}_conv{layer_index + 1}", layer)
            self.stage_names.append(name)
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = 2 ** (index + 2)
            previous = channels
        self._out_features = list(self.stage_names)

    @staticmethod
    def _conv(in_channels, out_channels, stride, norm):
        conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, out_channels),
            activation=F.relu,
        )
        weight_init.c2_msra_fill(conv)
        return conv

    def forward(self, x):
        """
        Args:
            x (Tensor): (N, C, H, W) images.

        Returns:
            dict[str, Tensor]: ``res{i}`` -> (N, C_i, H / 2**i, W / 2**i) feature maps.
        """
        x = self.stem(x)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, f"{name}_conv1")(x)
            x = getattr(self, f"{name}_conv2")(x)
            outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def tiny_fpn(in_channels: int, stage_channels, *, norm="BN", in_features, out_channels, fpn_norm="", fuse_type="sum"):
    """FPN (detectron2's) on top of :class:`TinyConvNet`, with a max-pooled extra level.

    Args:
        in_channels: channels of the input image.
        stage_channels, norm: of the :class:`TinyConvNet`.
        in_features (list[str]): its outputs the FPN uses (e.g. ["res2", "res3", "res4"]).
        out_channels, fpn_norm, fuse_type: of the FPN (``out_channels``, ``norm``, ``fuse_type``).

    Returns:
        FPN: outputs p<i> for each input feature plus one pooled level.
    """
    bottom_up = TinyConvNet(in_channels, stage_channels, norm)
    # The extra level pools the coarsest FPN output, named p<log2 stride> by FPN.
    top_block = LastLevelMaxPool()
    top_block.in_feature = f"p{int(math.log2(bottom_up.output_shape()[in_features[-1]].stride))}"
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=fpn_norm,
        top_block=top_block,
        fuse_type=fuse_type,
    )


@BACKBONE_REGISTRY.register()
def build_tiny_fpn_backbone(cfg, input_shape: ShapeSpec):
    """:func:`tiny_fpn` with the ``MODEL.TINY_NET`` and ``MODEL.FPN`` keys."""
    return tiny_fpn(
        input_shape.channels,
        cfg.MODEL.TINY_NET.STAGE_CHANNELS,
        norm=cfg.MODEL.TINY_NET.NORM,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        fpn_norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
