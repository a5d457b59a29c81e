"""Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016)."""
import torch
from torch import nn

from detectron2.config import configurable

from .embedding_losses import EMBEDDING_LOSS_REGISTRY

__all__ = ["CenterLoss"]


@EMBEDDING_LOSS_REGISTRY.register()
class CenterLoss(nn.Module):
    """Pulls every foreground box feature towards the center of its class.

    L_C = 1/N sum_i 1/2 ||x_i - c_{y_i}||^2 (the paper's sum over the mini-batch, divided by
    its size N), weighted by lambda. The centers are not learnt by gradient descent: after
    each batch, every class j present updates (paper, eq. 4)

        c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),

    n_j the number of its boxes in the batch. They start at zero and live in a buffer,
    so they are saved in checkpoints.
    """

    @configurable
    def __init__(self, feature_dim: int, num_classes: int, *, loss_weight: float, center_lr: float):
        """
        Args:
            feature_dim: D, the dimension of the box features.
            num_classes: K, the number of foreground classes.
            loss_weight: lambda, the weight of L_C.
            center_lr: alpha, the step of the center update, in (0, 1].
        """
        super().__init__()
        if not 0.0 < center_lr <= 1.0:
            raise ValueError(f"MODEL.EMBEDDING.CENTER_LOSS.ALPHA must be in (0, 1], got {center_lr}")
        self.loss_weight = loss_weight
        self.center_lr = center_lr
        self.register_buffer("centers", torch.zeros(num_classes, feature_dim))

    @classmethod
    def from_config(cls, cfg, feature_dim, num_classes):
        node = cfg.MODEL.EMBEDDING.CENTER_LOSS
        options = {"loss_weight": node.WEIGHT, "center_lr": node.ALPHA}
        return {"feature_dim": feature_dim, "num_classes": num_classes, **options}

    def forward(self, features, labels):
        """
        Args:
            features (Tensor): (N, D) foreground box features.
            labels (Tensor): (N,) their classes in [0, K).

        Returns:
            dict[str, Tensor]: ``loss_center``, lambda * L_C (zero for N = 0); in training
            mode the centers are updated afterwards.
        """
        if features.shape[0] == 0:
            return {"loss_center": features.sum() * 0.0}
        centers = self.centers.to(features.dtype)
        loss = 0.5 * (features - centers[labels]).pow(2).sum(dim=1).mean()
        if self.training:
            self.update_centers(features.detach(), labels)
        return {"loss_center": self.loss_weight * loss}

    @torch.no_grad()
    def update_centers(self, features, labels):
        """c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), every class at once."""
        num_classes = self.centers.shape[0]
        counts = torch.bincount(labels, minlength=num_classes).to(self.centers.dtype)
        feature_sums = torch.zeros_like(self.centers).index_add_(0, labels, features.to(self.centers.dtype))
        deltas = (counts[:, None] * self.centers - feature_sums) / (1.0 + counts[:, None])
        self.centers.sub_(self.center_lr * deltas)
