"""Class-conditional Gaussians with one shared covariance (Lee et al., NeurIPS 2018).

Fitted post hoc to the box features of the ID training set: mu_k the class means, Sigma the
shared (maximum-likelihood) covariance, pi_k the class priors. A box is scored by its
minimum Mahalanobis distance to the class means (an OOD score: larger = more OOD) and can be
classified by the Gaussian discriminant

    g_k(h) = mu_k^T P h - 1/2 mu_k^T P mu_k + log pi_k,    P = Sigma^-1.

The sufficient statistics (counts, means, within-class scatter) are kept, so a new class can
be added from its examples' features alone, with no retraining of the network: the result
equals a refit from scratch on all classes.
"""
import os

import torch
from torch import nn

from ...utils.file_io import atomic_open

__all__ = ["GaussianDiscriminant"]


class GaussianDiscriminant(nn.Module):
    """Class Gaussians with a shared covariance, as buffers (saved with ``state_dict``).

    Buffers (float64):
        counts: (K,) number of features of each class.
        means: (K, D) class means.
        scatter: (D, D) within-class scatter sum_k sum_i (h_i - mu_k)(h_i - mu_k)^T.
        precision: (D, D) inverse of scatter / N + eps I.
    """

    def __init__(self, feature_dim: int, eps: float = 1e-6):
        """
        Args:
            feature_dim: D, the feature dimension.
            eps: diagonal regulariser added to the covariance before inversion.
        """
        super().__init__()
        self.feature_dim = feature_dim
        self.eps = eps
        # The file the statistics were loaded from (load_statistics); while set, loading a
        # model checkpoint leaves them alone.
        self.statistics_file = None
        self.register_buffer("counts", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(0, feature_dim, dtype=torch.float64))
        self.register_buffer("scatter", torch.zeros(feature_dim, feature_dim, dtype=torch.float64))
        self.register_buffer("precision", torch.zeros(feature_dim, feature_dim, dtype=torch.float64))

    @property
    def num_classes(self) -> int:
        return self.counts.numel()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.statistics_file is not None:
            # Statistics named by MODEL.OOD.MAHALANOBIS_STATS win over those a checkpoint
            # carries (typically none: a model trained before they were fitted).
            return
        # The number of classes is data: take the shapes of the checkpoint's buffers, on this
        # module's device (checkpoints are loaded onto the CPU; the model may be on a GPU).
        for name in ("counts", "means"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.scatter.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def save_statistics(self, path: str):
        """Write the statistics (a state dict of tensors) to ``path``, atomically."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save({k: v.cpu() for k, v in self.state_dict().items()}, f)

    def load_statistics(self, path: str):
        """Load statistics written by :meth:`save_statistics` (no pickled code is run).

        From then on, loading a model checkpoint (``load_state_dict`` of a parent module)
        keeps these statistics instead of the checkpoint's.

        Raises:
            FileNotFoundError / ValueError: naming the file and the problem.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Mahalanobis statistics not found: {path} (MODEL.OOD.MAHALANOBIS_STATS)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or set(state) != set(self.state_dict()):
            raise ValueError(f"{path} does not hold Mahalanobis statistics (expected keys {sorted(self.state_dict())})")
        if state["means"].shape[1:] != (self.feature_dim,):
            raise ValueError(
                f"{path}: statistics of {state['means'].shape[1]}-d features, but the box head "
                f"gives {self.feature_dim}-d features"
            )
        self.statistics_file = None
        self.load_state_dict(state)
        self.statistics_file = path
        return self

    def _check(self, features, labels=None):
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"expected features of shape (N, {self.feature_dim}), got {tuple(features.shape)}"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contain NaN or Inf")
        if labels is not None and labels.shape != features.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match features {tuple(features.shape)}")

    @torch.no_grad()
    def fit(self, features, labels, num_classes: int):
        """Fit from scratch.

        Args:
            features (Tensor): (N, D) features.
            labels (Tensor): (N,) class indices in [0, num_classes).
            num_classes (int): K; every class needs at least one feature.
        """
        self._check(features, labels)
        features = features.to(self.scatter.device, torch.float64)
        labels = labels.to(self.scatter.device, torch.long)
        counts = torch.bincount(labels, minlength=num_classes).double()
        if counts.numel() != num_classes or bool((counts == 0).any()):
            missing = torch.nonzero(counts[:num_classes] == 0).flatten().tolist()
            raise ValueError(f"classes {missing} have no features (labels must lie in [0, {num_classes}))")
        means = torch.zeros(num_classes, self.feature_dim, dtype=torch.float64, device=features.device)
        means.index_add_(0, labels, features)
        means /= counts[:, None]
        centered = features - means[labels]
        self.counts, self.means = counts, means
        self.scatter.copy_(centered.T @ centered)
        self._update_precision()
        return self

    @torch.no_grad()
    def add_class(self, features):
        """Add one class from its features alone; its index is the current K.

        Args:
            features (Tensor): (n, D) features of the new class, n >= 1.

        Returns:
            int: the index of the new class.
        """
        self._check(features)
        if features.shape[0] == 0:
            raise ValueError("a new class needs at least one feature")
        features = features.to(self.scatter.device, torch.float64)
        mean = features.mean(dim=0)
        centered = features - mean
        self.counts = torch.cat([self.counts, self.counts.new_tensor([features.shape[0]])])
        self.means = torch.cat([self.means, mean[None]])
        self.scatter += centered.T @ centered
        self._update_precision()
        return self.num_classes - 1

    def _update_precision(self):
        covariance = self.scatter / self.counts.sum()
        identity = torch.eye(self.feature_dim, dtype=torch.float64, device=covariance.device)
        self.precision.copy_(torch.linalg.inv(covariance + self.eps * identity))

    def covariance(self):
        """The shared covariance Sigma = scatter / N, shape (D, D)."""
        return self.scatter / self.counts.sum()

    def priors(self):
        """Class priors pi_k = n_k / N, shape (K,)."""
        return self.counts / self.counts.sum()

    def mahalanobis_distances(self, features):
        """Squared Mahalanobis distances (h - mu_k)^T P (h - mu_k).

        Args:
            features (Tensor): (N, D).

        Returns:
            Tensor: (N, K) float64.
        """
        self._require_fitted()
        features = features.to(self.precision)
        projected = features @ self.precision
        return (
            (projected * features).sum(dim=1, keepdim=True)
            - 2.0 * projected @ self.means.T
            + ((self.means @ self.precision) * self.means).sum(dim=1)[None, :]
        ).clamp_min(0.0)

    def ood_scores(self, features):
        """Minimum squared Mahalanobis distance to a class mean; larger = more OOD, (N,)."""
        return self.mahalanobis_distances(features).min(dim=1).values

    def class_scores(self, features):
        """Gaussian discriminant g_k(h) = mu_k^T P h - 1/2 mu_k^T P mu_k + log pi_k, (N, K)."""
        self._require_fitted()
        features = features.to(self.precision)
        means_precision = self.means @ self.precision
        return (
            features @ means_precision.T
            - 0.5 * (means_precision * self.means).sum(dim=1)[None, :]
            + torch.log(self.priors())[None, :]
        )

    def _require_fitted(self):
        if self.num_classes == 0:
            raise RuntimeError("GaussianDiscriminant is not fitted: call fit() or load statistics")
