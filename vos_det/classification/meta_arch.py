"""VOSImageClassifier: image classification as detection with one box, the whole image."""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.structures import Boxes, ImageList

from .head import VOSClassificationHead

__all__ = ["VOSImageClassifier", "whole_image_boxes", "is_image_classifier"]


def whole_image_boxes(image_sizes: Sequence[Tuple[int, int]], device=None) -> List[Boxes]:
    """One box per image covering all of it: [0, 0, W, H] in XYXY pixel coordinates.

    Args:
        image_sizes: (height, width) of each image as the model sees it (after the mapper's
            resize, before the batch's padding: ``ImageList.image_sizes``), so the padding
            is never pooled.
        device: device of the boxes.

    Returns:
        list[Boxes]: one Boxes of length 1 per image.
    """
    return [
        Boxes(torch.tensor([[0.0, 0.0, float(width), float(height)]], device=device))
        for height, width in image_sizes
    ]


def _flat_dim(shape: ShapeSpec) -> int:
    return int(np.prod([d for d in (shape.channels, shape.height, shape.width) if d]))


@META_ARCH_REGISTRY.register()
class VOSImageClassifier(nn.Module):
    """An image classifier made of the detector's parts, with VOS OOD scores.

    The whole image is one box: backbone features -> detectron2's :class:`ROIPooler` on the
    box [0, 0, W, H] of each image -> the box head (``MODEL.ROI_BOX_HEAD``) -> a Linear +
    ReLU projection (``MODEL.VOS_CLASSIFIER.PROJECTION_DIM``) -> a K-way linear classifier
    trained with VOS (:class:`VOSClassificationHead`). No RPN, no box regression.

    Input: a list of dicts with ``"image"`` (3, H, W) in ``INPUT.FORMAT`` and, in training,
    ``"class_id"`` (int in [0, K)); images of different sizes are padded together and each
    pooled over its own box.

    Training returns ``{"loss_cls", "loss_vos"}`` (``loss_vos`` only with MODEL.VOS.ENABLED;
    exactly 0, but in the graph, until synthesis starts).

    Inference returns one dict per image, ``{"classification": c}``, where c holds tensors
    on the model's device:

    * ``pred_class``: () int64, argmax of ``scores``;
    * ``scores``: (K,) float, softmax over the K classes;
    * ``id_score``: () float in [0, 1], p(ID | image): the logistic regression on the weighted
      energy (eq. 8); sigmoid(-energy) for a model trained without VOS;
    * ``ood_score``: () float, the score named by MODEL.OOD.SCORE, larger = more OOD;
    * ``is_ood``: () bool, ``ood_score`` > the calibrated threshold if the model stores one,
      else MODEL.OOD.THRESHOLD;
    * ``ood_scores``: dict score name -> () float, larger = more OOD: ``msp`` (-max softmax),
      ``energy`` (-logsumexp of the logits) and, with VOS, ``weighted_energy`` (eq. 6) and
      ``vos`` (1 - id_score).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        in_features: Sequence[str],
        pooler: ROIPooler,
        box_head: nn.Module,
        projection: nn.Module,
        predictor: VOSClassificationHead,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone (Backbone): the feature extractor.
            in_features: names of the backbone outputs the whole-image box is pooled from.
            pooler: pools each image's box from those outputs (their scales in order).
            box_head: maps the pooled (N, C, R, R) features to (N, ...) features.
            projection: maps the flattened box-head features to the (N, D) features the
                predictor classifies (and VOS models); ``nn.Identity()`` for none.
            predictor: the classifier with its VOS machinery.
            pixel_mean, pixel_std: per-channel normalisation of the input images.
            input_format: channel order of the input images, for visualisation and callers.
        """
        super().__init__()
        self.backbone = backbone
        self.in_features = list(in_features)
        self.pooler = pooler
        self.box_head = box_head
        self.projection = projection
        self.predictor = predictor
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        output_shape = backbone.output_shape()
        in_features = list(cfg.MODEL.VOS_CLASSIFIER.IN_FEATURES)
        missing = [f for f in in_features if f not in output_shape]
        if not in_features or missing:
            raise ValueError(
                f"MODEL.VOS_CLASSIFIER.IN_FEATURES {in_features} must name outputs of the "
                f"backbone, which are {sorted(output_shape)}"
            )
        channels = {output_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(
                f"MODEL.VOS_CLASSIFIER.IN_FEATURES {in_features} differ in channels: {channels}"
            )
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / output_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        box_head = build_box_head(
            cfg, ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)
        )
        box_head_dim = _flat_dim(box_head.output_shape)
        projection_dim = cfg.MODEL.VOS_CLASSIFIER.PROJECTION_DIM
        if projection_dim < 0:
            raise ValueError(f"MODEL.VOS_CLASSIFIER.PROJECTION_DIM must be >= 0, got {projection_dim}")
        if projection_dim:
            projection = nn.Sequential(
                nn.Flatten(), nn.Linear(box_head_dim, projection_dim), nn.ReLU(inplace=True)
            )
            feature_dim = projection_dim
        else:
            projection = nn.Flatten()
            feature_dim = box_head_dim
        return {
            "backbone": backbone,
            "in_features": in_features,
            "pooler": pooler,
            "box_head": box_head,
            "projection": projection,
            "predictor": VOSClassificationHead(cfg, feature_dim),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images into one batch (as GeneralizedRCNN does)."""
        images = [x["image"].to(self.device) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=getattr(self.backbone, "padding_constraints", None),
        )

    def image_features(self, images: ImageList):
        """(N, D) features of the whole-image boxes, the input of the classifier."""
        features = self.backbone(images.tensor)
        boxes = whole_image_boxes(images.image_sizes, device=images.tensor.device)
        pooled = self.pooler([features[f] for f in self.in_features], boxes)
        return self.projection(self.box_head(pooled))

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs (list[dict]): the mapper's outputs (see the class docstring).

        Returns:
            dict[str, Tensor] in training (the losses), else list[dict] (one per image).
        """
        images = self.preprocess_image(batched_inputs)
        features = self.image_features(images)
        logits = self.predictor(features)
        if not self.training:
            return self.predictor.inference(logits)
        missing = [i for i, x in enumerate(batched_inputs) if "class_id" not in x]
        if missing:
            raise ValueError(f"training inputs {missing} have no 'class_id'")
        labels = torch.as_tensor([int(x["class_id"]) for x in batched_inputs], device=self.device)
        return self.predictor.losses(logits, features, labels)


def is_image_classifier(cfg) -> bool:
    """Whether ``cfg.MODEL.META_ARCHITECTURE`` is :class:`VOSImageClassifier` (or a subclass)."""
    meta_arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return isinstance(meta_arch, type) and issubclass(meta_arch, VOSImageClassifier)
