"""Box features ROI-pooled from several feature maps (FPN levels / backbone stages).

Each box is ROI-aligned on every named map (at that map's stride) to a small grid and
averaged over it: one C-dimensional vector per map, the average of the map over the box.
Used by the multi-layer Mahalanobis and SAFE scores, at fit time (ground-truth boxes) and at
inference (the proposals of the kept detections) alike.
"""
from typing import Dict, Sequence

import torch
from torchvision.ops import roi_align

__all__ = ["pool_box_layers"]

# Side of the ROIAlign grid averaged into one vector per box and map.
POOL_RESOLUTION = 4


def pool_box_layers(feature_maps: Dict[str, torch.Tensor], strides: Dict[str, int], names: Sequence[str], boxes):
    """Average every named feature map over every box.

    Args:
        feature_maps: name -> (B, C, H, W) maps of a batch of B images.
        strides: name -> the map's stride in input pixels.
        names: the maps to pool.
        boxes (list[Tensor]): per image, (n_i, 4) XYXY boxes in input pixels.

    Returns:
        dict[str, Tensor]: name -> (sum n_i, C) float32 box features, image after image.
    """
    missing = [name for name in names if name not in feature_maps or name not in strides]
    if missing:
        raise KeyError(f"feature maps {missing} are not among the backbone's outputs {sorted(feature_maps)}")
    boxes = [b.float() for b in boxes]
    pooled = {}
    for name in names:
        feature_map = feature_maps[name]
        grid = roi_align(
            feature_map.float(),
            [b.to(feature_map.device) for b in boxes],
            output_size=POOL_RESOLUTION,
            spatial_scale=1.0 / strides[name],
            sampling_ratio=0,
            aligned=True,
        )
        pooled[name] = grid.mean(dim=(2, 3))
    return pooled
