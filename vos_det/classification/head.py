"""The classifier's predictor: K-way logits, trained with Virtual Outlier Synthesis.

The counterpart of :class:`vos_det.modeling.VOSOutputLayers` for one box per image (the
whole image): no background class and no box regression. The queues, synthesis,
uncertainty loss and OOD scores are those of :class:`VirtualOutlierMixin`, with the same
semantics and signs.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..config.vos_keys import vos_kwargs_from_config
from ..modeling.regularizers.margin_classifiers import LinearClassifier
from ..modeling.vos.virtual_outliers import VirtualOutlierMixin

__all__ = ["VOSClassificationHead"]


class VOSClassificationHead(VirtualOutlierMixin, nn.Module):
    """Linear K-way classifier with VOS queues, outlier synthesis and uncertainty loss.

    Training (:meth:`losses`): ``loss_cls`` = cross-entropy over the K classes and, with VOS
    enabled, ``loss_vos`` = beta x the logistic loss separating the ID features (label 1)
    from virtual outliers (label 0) by their weighted energy (paper eq. 5-6). The features of
    every training image are queued under its class; once every queue is full and the
    iteration is >= ``starting_iter``, ``select`` outliers per class are drawn from the class
    Gaussians (eq. 1-3). Before that ``loss_vos`` is exactly 0 and still in the graph.

    Inference (:meth:`inference`): per image, the softmax over the K classes, the predicted
    class, p(ID) and every OOD score of :data:`OOD_SCORES` (larger = more OOD).

    With ``bottleneck_dim`` > 0 (a variant, off by default; as the box predictor's), a
    Linear + ReLU of that width precedes the class layer, and VOS models its outputs.
    """

    @configurable
    def __init__(self, input_dim: int, *, num_classes: int, bottleneck_dim: int = 0, **vos_options):
        """
        Args:
            input_dim: D, the dimension of the image features (the projection's output).
            num_classes: K, the number of ID classes.
            bottleneck_dim: width of the Linear + ReLU before the class layer; 0 = none.
            vos_options: arguments of :meth:`VirtualOutlierMixin.init_virtual_outliers`
                (vos_enabled, sample_number, starting_iter, ..., the MODEL.VOS keys).
        """
        super().__init__()
        if num_classes <= 0 or input_dim <= 0:
            raise ValueError(f"need positive num_classes and input_dim, got {num_classes}, {input_dim}")
        if bottleneck_dim < 0:
            raise ValueError(f"MODEL.VOS.BOTTLENECK_DIM must be >= 0, got {bottleneck_dim}")
        self.num_classes = num_classes
        self.bottleneck = nn.Identity()
        if bottleneck_dim:
            self.bottleneck = nn.Sequential(nn.Linear(input_dim, bottleneck_dim), nn.ReLU(inplace=True))
            input_dim = bottleneck_dim
        # Initialised as detectron2's FastRCNNOutputLayers initialises its class layer.
        self.cls_score = LinearClassifier(input_dim, num_classes)
        self.init_virtual_outliers(input_dim, **vos_options)

    @classmethod
    def from_config(cls, cfg, input_dim):
        return {
            "input_dim": input_dim,
            "num_classes": cfg.MODEL.VOS_CLASSIFIER.NUM_CLASSES,
            "bottleneck_dim": cfg.MODEL.VOS.BOTTLENECK_DIM,
            **vos_kwargs_from_config(cfg),
        }

    def forward(self, features):
        """
        Args:
            features (Tensor): (N, D) image features.

        Returns:
            Tensor: (N, K) class logits.
        """
        return self.cls_score(self.bottleneck(features))

    def losses(self, logits, features, labels):
        """Cross-entropy plus, with VOS enabled, ``loss_vos`` (beta x eq. 5).

        Args:
            logits (Tensor): (N, K) class logits.
            features (Tensor): (N, D) the features :meth:`forward` computed them from (with
                a bottleneck, its output is recomputed from them for the queues).
            labels (Tensor): (N,) int64 classes in [0, K).

        Returns:
            dict[str, Tensor]: ``loss_cls`` and, with VOS enabled, ``loss_vos``.
        """
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"training labels must lie in [0, {self.num_classes}) (MODEL.VOS_CLASSIFIER."
                f"NUM_CLASSES), got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        losses = {"loss_cls": F.cross_entropy(logits, labels)}
        if self.vos_enabled:
            with torch.no_grad():
                features = self.bottleneck(features)
            finite = self.finite_rows(logits, features, torch.ones_like(labels, dtype=torch.bool), "images")
            losses["loss_vos"] = self.vos_loss_weight * self.uncertainty_loss(
                logits[finite], features[finite], labels[finite]
            )
        return losses

    def inference(self, logits):
        """The per-image classification outputs.

        Args:
            logits (Tensor): (N, K) class logits of N images.

        Returns:
            list[dict]: per image, ``{"classification": {...}}``, see
            :class:`vos_det.classification.VOSImageClassifier` for the fields.
        """
        probabilities = torch.softmax(logits.float(), dim=1)
        table, id_scores = self.ood_score_table(logits)
        threshold = self.current_ood_threshold()
        results = []
        for index in range(logits.shape[0]):
            ood_scores = {name: values[index] for name, values in table.items()}
            ood_score = ood_scores[self.ood_score]
            results.append(
                {
                    "classification": {
                        "pred_class": probabilities[index].argmax(),
                        "scores": probabilities[index],
                        "id_score": id_scores[index],
                        "ood_score": ood_score,
                        "is_ood": ood_score > threshold,
                        "ood_scores": ood_scores,
                    }
                }
            )
        return results
