"""The uncertainty head of VOS: the classifier of -E (ID vs virtual outlier), two variants.

The released VOS code has two branches (github.com/deeplearning-wisc/vos):

* ``main``: ``logistic_regression = Linear(1, 2)``, trained with cross-entropy, ID label 1
  (``detection/modeling/roihead_gmm.py``, branch main);
* ``main-MLP``, the code of the paper's final (OpenReview) numbers and of the released
  checkpoints: ``logistic_regression = Sequential(Linear(1, 512), ReLU(), Linear(512, 1))``
  trained with ``binary_cross_entropy_with_logits``, ID label 1 (``roihead_gmm.py:533-537``
  and ``:873-876`` of that branch).

Both are used here through one interface: the head maps (N, 1) values of -E to (N, 2)
logits (outlier, ID), whose softmax is (p(outlier), p(ID)). The MLP's single logit z is
returned as the pair (0, z): softmax((0, z)) = (sigmoid(-z), sigmoid(z)) and the
cross-entropy of that pair is exactly the binary cross-entropy with logits of z, so the
loss, the scores and the diagnostics need no case for the head.
"""
import torch
from torch import nn

from ...config.choices import UNCERTAINTY_HEADS
from .uncertainty_loss import ID_LABEL

__all__ = ["MLP_HIDDEN_DIM", "UNCERTAINTY_HEADS", "MLPUncertaintyHead", "build_uncertainty_head", "id_probability"]

# Hidden width of the main-MLP branch's head (roihead_gmm.py:534 of that branch).
MLP_HIDDEN_DIM = 512


class MLPUncertaintyHead(nn.Sequential):
    """The main-MLP branch's head: Linear(1, 512) - ReLU - Linear(512, 1), as two logits.

    Its parameters are named ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``, as those of
    the release's ``logistic_regression`` Sequential.
    """

    def __init__(self, hidden_dim: int = MLP_HIDDEN_DIM):
        super().__init__(nn.Linear(1, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def id_logit(self, x):
        """The MLP's own output z, whose sigmoid is p(ID).

        Args:
            x (Tensor): (N, 1) values of -E.

        Returns:
            Tensor: (N, 1) logits.
        """
        return super().forward(x)

    def forward(self, x):
        """
        Args:
            x (Tensor): (N, 1) values of -E.

        Returns:
            Tensor: (N, 2) logits (0, z): column ``ID_LABEL`` holds z, the other 0.
        """
        z = self.id_logit(x)
        zeros = torch.zeros_like(z)
        return torch.cat([z, zeros] if ID_LABEL == 0 else [zeros, z], dim=1)


def build_uncertainty_head(kind: str) -> nn.Module:
    """The uncertainty head named by ``MODEL.VOS.UNCERTAINTY_HEAD``.

    Args:
        kind: "logistic" (``Linear(1, 2)``, branch main) or "mlp" (:class:`MLPUncertaintyHead`,
            branch main-MLP).

    Returns:
        nn.Module: (N, 1) -> (N, 2) logits (outlier, ID).
    """
    if kind == "logistic":
        return nn.Linear(1, 2)
    if kind == "mlp":
        return MLPUncertaintyHead()
    raise ValueError(f"MODEL.VOS.UNCERTAINTY_HEAD must be one of {UNCERTAINTY_HEADS}, got {kind!r}")


def id_probability(head: nn.Module, x):
    """p(ID) of the head for (N, 1) inputs, shape (N,).

    For the MLP head this is ``sigmoid(z)`` computed as the release does
    (``rcnn_predictor.py:135-136`` of main-MLP), so that its float32 values, ties included,
    are the release's; for the logistic head the softmax's ID column.
    """
    if isinstance(head, MLPUncertaintyHead):
        return head.id_logit(x).sigmoid().reshape(-1)
    return torch.softmax(head(x), dim=1)[:, ID_LABEL]
