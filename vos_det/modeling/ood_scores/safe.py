"""SAFE, sensitivity-aware features (Wilson, Fischer, Dayoub, Miller and Suenderhauf, "SAFE:
Sensitivity-Aware Features for Out-of-Distribution Object Detection", ICCV 2023).

Fitting, on the ground-truth boxes of the ID training set:

1. every candidate feature map (the backbone's outputs) is ROI-pooled for each box, in the
   clean image and in the image perturbed by one FGSM step against the detector's class
   loss on those boxes (``tools/fit_ood_scores.py`` makes both);
2. a map's sensitivity is the mean change of its pooled features under the perturbation,
   relative to their mean norm; the ``num_layers`` most sensitive maps are kept (the paper
   found residual + batch-norm layers to be the sensitive ones and picked them by that
   rule; here they are measured);
3. their pooled features, concatenated and standardised with the clean boxes' mean and std,
   train a small MLP (two hidden ReLU layers) to tell the perturbed boxes (label 1) from
   the clean ones (label 0), with binary cross-entropy.

The score of a detection is the MLP's logit on its box, larger = more OOD.
"""
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config_options import options_from_config
from .base import OOD_SCORE_REGISTRY, PostHocScore

__all__ = ["SAFEScore", "layer_sensitivities"]


def layer_sensitivities(clean, perturbed):
    """Mean ||perturbed - clean|| / mean ||clean|| of each layer's (N, C) box features.

    Args:
        clean (dict[str, Tensor]): name -> (N, C) features of the clean images.
        perturbed (dict[str, Tensor]): the same boxes in the perturbed images.

    Returns:
        dict[str, float]: name -> sensitivity.
    """
    return {
        name: float((perturbed[name] - clean[name]).norm(dim=1).mean() / clean[name].norm(dim=1).mean().clamp_min(1e-12))
        for name in clean
    }


def _mlp(input_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, 1),
    )


@OOD_SCORE_REGISTRY.register()
class SAFEScore(PostHocScore):
    """SAFE (fitted: the chosen maps, the feature standardisation and the MLP)."""

    name = "safe"

    def __init__(
        self,
        candidate_layers: Sequence[str] = (),
        num_layers: int = 2,
        hidden_dim: int = 256,
        epochs: int = 30,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
    ):
        """
        Args:
            candidate_layers: maps to choose from; empty = every pooled map of the fit data.
            num_layers: how many of the most sensitive maps are kept.
            hidden_dim: width of the MLP's hidden layers.
            epochs, learning_rate, batch_size: Adam training of the MLP.
            seed: seed of the MLP's initialisation and of the batch order.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.VOS.POST_HOC.SAFE.NUM_LAYERS must be >= 1, got {num_layers}")
        self.candidate_layers = tuple(candidate_layers)
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.seed = seed

    @classmethod
    def from_config(cls, cfg):
        safe = cfg.MODEL.VOS.POST_HOC.SAFE
        options = options_from_config(safe, "num_layers", "hidden_dim", "epochs", "learning_rate", "batch_size")
        return cls(candidate_layers=safe.CANDIDATE_FEATURES, seed=max(cfg.SEED, 0), **options)

    def layer_names(self):
        return tuple(self.fitted_config.get("layers", ()))

    def fit(self, data):
        if data.perturbed_layer_features is None or data.layer_features is None:
            raise ValueError("SAFE needs the pooled features of clean and FGSM-perturbed images")
        candidates = self.candidate_layers or tuple(data.layer_features)
        sensitivity = layer_sensitivities(
            {name: data.layer_features[name] for name in candidates},
            {name: data.perturbed_layer_features[name] for name in candidates},
        )
        layers = sorted(candidates, key=lambda name: -sensitivity[name])[: self.num_layers]
        clean = torch.cat([data.layer_features[name].float() for name in layers], dim=1)
        perturbed = torch.cat([data.perturbed_layer_features[name].float() for name in layers], dim=1)
        mean, std = clean.mean(dim=0), clean.std(dim=0).clamp_min(1e-6)
        inputs = (torch.cat([clean, perturbed]) - mean) / std
        targets = torch.cat([torch.zeros(len(clean)), torch.ones(len(perturbed))])

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mlp = _mlp(inputs.shape[1], self.hidden_dim)
        optimizer = torch.optim.Adam(mlp.parameters(), lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.enable_grad():
            for _ in range(self.epochs):
                for batch in torch.randperm(len(inputs), generator=generator).split(self.batch_size):
                    loss = F.binary_cross_entropy_with_logits(mlp(inputs[batch]).squeeze(1), targets[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        with torch.no_grad():
            logits = mlp(inputs).squeeze(1)
            accuracy = float(((logits > 0).float() == targets).float().mean())
            final_loss = float(F.binary_cross_entropy_with_logits(logits, targets))
        self.fitted_config = {
            "layers": list(layers),
            "sensitivity": sensitivity,
            "input_dim": inputs.shape[1],
            "hidden_dim": self.hidden_dim,
            "train_loss": final_loss,
            "train_accuracy": accuracy,
        }
        self.set_fitted(mean=mean, std=std)
        self.mlp = mlp.requires_grad_(False)
        return self

    def after_load(self):
        self.mlp = _mlp(self.fitted_config["input_dim"], self.fitted_config["hidden_dim"]).requires_grad_(False)

    def forward(self, features, logits, layer_features=None, logits_of=None):
        self.require_fitted()
        x = (self._layer_input(layer_features, self.layer_names()) - self.mean) / self.std
        return self.mlp(x).squeeze(1)
