"""Non-parametric outlier synthesis in the style of NPOS (Tao, Du, Ming, Li; ICLR 2023).

No Gaussian is fitted. On the L2-normalised ID features of the class queues:

1. boundary features: the ``num_boundary`` features farthest from their k-th nearest
   neighbour among the other ID features (the k-NN distance of Sun et al., 2022);
2. candidates: ``num_candidates`` points, each a boundary feature (drawn uniformly) plus
   isotropic Gaussian noise of norm about ``noise_scale`` (per-coordinate std
   noise_scale / sqrt(D));
3. outliers: the ``num_outliers`` candidates whose k-NN distance to the ID features is
   largest (farthest from every ID feature).

The outliers are mapped back to feature space by the norm of their boundary feature (the
classifier reads unnormalised features), so their logits are comparable to ID logits.
Cost: an (num_features, num_features) and a (num_candidates, num_features) similarity
product, in row blocks (memory O(block x num_features)).
"""
import math

import torch
from torch.nn import functional as F

__all__ = ["knn_distances", "npos_outliers"]

# Rows of the similarity matrix computed at once.
_BLOCK_ROWS = 2048


def knn_distances(queries, keys, k: int, exclude_self: bool = False):
    """Euclidean distance of each query to its k-th nearest key (unit-norm rows).

    Args:
        queries (Tensor): (Q, D) unit-norm rows.
        keys (Tensor): (N, D) unit-norm rows.
        k (int): which neighbour, 1 = nearest.
        exclude_self (bool): queries are ``keys`` themselves; a point is not its own neighbour.

    Returns:
        Tensor: (Q,) distances, in the dtype of the inputs.
    """
    extra = int(exclude_self)
    if not 0 < k <= keys.shape[0] - extra:
        raise ValueError(f"k-NN needs 0 < k <= {keys.shape[0] - extra} (the ID features), got k={k}")
    distances = []
    for start in range(0, queries.shape[0], _BLOCK_ROWS):
        similarities = queries[start : start + _BLOCK_ROWS] @ keys.T
        if exclude_self:
            rows = torch.arange(similarities.shape[0], device=similarities.device)
            similarities[rows, rows + start] = float("-inf")
        kth = similarities.topk(k, dim=1).values[:, -1]
        # ||a - b||^2 = 2 - 2 a.b for unit vectors.
        distances.append((2.0 - 2.0 * kth).clamp_min(0.0).sqrt())
    return torch.cat(distances)


@torch.no_grad()
def npos_outliers(features, num_outliers: int, *, k: int, num_boundary: int, num_candidates: int,
                  noise_scale: float, generator=None):
    """Virtual outliers around the boundary of the ID features (see the module docstring).

    Args:
        features (Tensor): (N, D) ID features (the queues of all classes together).
        num_outliers (int): outliers returned.
        k (int): the neighbour of the k-NN distance.
        num_boundary (int): boundary features the candidates are drawn around.
        num_candidates (int): noisy candidates, of which the farthest ``num_outliers`` are kept.
        noise_scale (float): expected norm of the noise added to a unit-norm boundary feature.
        generator (torch.Generator, optional): generator of the draws, on the device of
            ``features`` (the draws are made there: no host-to-device copy).

    Returns:
        Tensor: (num_outliers, D) outliers in the dtype and device of ``features``.
    """
    num_features, dim = features.shape
    if not 0 < num_outliers <= num_candidates:
        raise ValueError(f"NPOS needs 0 < outliers <= candidates, got {num_outliers} and {num_candidates}")
    if not 0 < num_boundary <= num_features:
        raise ValueError(f"NPOS needs 0 < boundary features <= {num_features}, got {num_boundary}")
    work = features.float()
    norms = work.norm(dim=1)
    unit = F.normalize(work, dim=1)
    boundary = knn_distances(unit, unit, k, exclude_self=True).topk(num_boundary).indices
    choice = torch.randint(num_boundary, (num_candidates,), generator=generator, device=unit.device)
    noise = torch.randn(num_candidates, dim, generator=generator, device=unit.device) * (noise_scale / math.sqrt(dim))
    anchors = boundary[choice]
    candidates = unit[anchors] + noise
    candidate_distances = knn_distances(F.normalize(candidates, dim=1), unit, k)
    keep = candidate_distances.topk(num_outliers).indices
    return (candidates[keep] * norms[anchors[keep], None]).to(features.dtype)
