"""ROI heads whose box predictor is chosen by name (the VOS predictor by default)."""
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from .config_options import registered
from .output_layers import BOX_PREDICTOR_REGISTRY

__all__ = ["VOSROIHeads"]


@ROI_HEADS_REGISTRY.register()
class VOSROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` with the box predictor ``cfg.MODEL.VOS.BOX_PREDICTOR``.

    Detectron2 builds :class:`FastRCNNOutputLayers` directly in ``_init_box_head``; this
    class keeps everything else of that method (pooler, box head) and swaps the predictor
    for one from :data:`BOX_PREDICTOR_REGISTRY` (by default :class:`VOSOutputLayers`).

    At inference, a predictor with post-hoc OOD scores that pool the detections' boxes from
    the backbone's feature maps (``post_hoc``, see :mod:`vos_det.modeling.ood_scores`) is
    given those maps while it runs, when a score it is asked for (its ``ood_field_names()``)
    pools them.
    """

    @configurable
    def __init__(self, *, feature_strides=None, **kwargs):
        """
        Args:
            feature_strides (dict[str, int]): stride of every backbone output, by name.
            kwargs: those of :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.feature_strides = dict(feature_strides or {})

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["feature_strides"] = {name: shape.stride for name, shape in input_shape.items()}
        return ret

    def _forward_box(self, features, proposals):
        post_hoc = getattr(self.box_predictor, "post_hoc", None)
        if self.training or post_hoc is None or not post_hoc.layer_names(self.box_predictor.ood_field_names()):
            return super()._forward_box(features, proposals)
        with post_hoc.feature_maps(features, self.feature_strides):
            return super()._forward_box(features, proposals)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        predictor_class = registered(BOX_PREDICTOR_REGISTRY, "MODEL.VOS.BOX_PREDICTOR", cfg.MODEL.VOS.BOX_PREDICTOR)
        ret["box_predictor"] = predictor_class(cfg, ret["box_head"].output_shape)
        return ret
