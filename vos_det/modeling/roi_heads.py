"""ROI heads whose box predictor is chosen by name (the VOS predictor by default)."""
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from .output_layers import BOX_PREDICTOR_REGISTRY

__all__ = ["VOSROIHeads"]


@ROI_HEADS_REGISTRY.register()
class VOSROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` with the box predictor ``cfg.MODEL.VOS.BOX_PREDICTOR``.

    Detectron2 builds :class:`FastRCNNOutputLayers` directly in ``_init_box_head``; this
    class keeps everything else of that method (pooler, box head) and swaps the predictor
    for one from :data:`BOX_PREDICTOR_REGISTRY` (by default :class:`VOSOutputLayers`).
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        predictor_class = BOX_PREDICTOR_REGISTRY.get(cfg.MODEL.VOS.BOX_PREDICTOR)
        ret["box_predictor"] = predictor_class(cfg, ret["box_head"].output_shape)
        return ret
