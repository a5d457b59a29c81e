"""Box-head features of ground-truth boxes, for post-hoc statistics (Mahalanobis)."""
import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from tqdm import tqdm

__all__ = [
    "annotated_test_mapper",
    "box_head_features",
    "build_annotated_test_loader",
    "ground_truth_box_features",
]


def annotated_test_mapper(cfg):
    """A DatasetMapper with test-time resizing that keeps the annotations (as ``instances``)."""
    return DatasetMapper(
        cfg,
        is_train=True,  # keeps the annotations; the augmentations are the test ones
        augmentations=[
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        ],
    )


def build_annotated_test_loader(cfg, dataset_name):
    """A loader with test-time resizing that keeps the annotations (as ``instances``)."""
    return build_detection_test_loader(cfg, dataset_name, mapper=annotated_test_mapper(cfg))


def box_head_features(model, feature_maps, boxes):
    """The features the box predictor's class layer reads for given boxes.

    Args:
        model (GeneralizedRCNN): the detector.
        feature_maps (dict[str, Tensor]): the backbone's outputs for a batch.
        boxes (list[Boxes]): per image, the boxes to pool.

    Returns:
        Tensor: (sum n_i, D).
    """
    roi_heads = model.roi_heads
    pooled = roi_heads.box_pooler([feature_maps[f] for f in roi_heads.box_in_features], boxes)
    box_features = roi_heads.box_head(pooled).flatten(start_dim=1)
    # The input of cls_score: after the bottleneck of MODEL.VOS.BOTTLENECK_DIM if any.
    return getattr(roi_heads.box_predictor, "bottleneck", torch.nn.Identity())(box_features)


@torch.no_grad()
def ground_truth_box_features(model, data_loader, description="features"):
    """Pool every ground-truth box through the ROI box head of a GeneralizedRCNN.

    The features are those the box predictor sees (the input of ``cls_score``), so
    statistics fitted on them apply to the boxes the detector outputs.

    Args:
        model (GeneralizedRCNN): the detector, in eval mode.
        data_loader: yields lists of dataset dicts with ``image`` and ``instances``
            (gt_boxes, gt_classes), e.g. :func:`build_annotated_test_loader`.
        description (str): label of the progress bar.

    Returns:
        tuple[Tensor, Tensor]: features (N, D) float32 and class indices (N,) int64, CPU.
    """
    features, labels = [], []
    for inputs in tqdm(data_loader, desc=description, unit="img"):
        images = model.preprocess_image(inputs)
        feature_maps = model.backbone(images.tensor)
        gt_boxes = [x["instances"].gt_boxes.to(images.tensor.device) for x in inputs]
        box_features = box_head_features(model, feature_maps, gt_boxes)
        features.append(box_features.float().cpu())
        labels.append(torch.cat([x["instances"].gt_classes for x in inputs]))
    if not features:
        raise ValueError("the data loader yielded no images")
    return torch.cat(features), torch.cat(labels)
