"""The interface of the post-hoc OOD scores: a registry of scorers fitted on ID training boxes.

A scorer is an ``nn.Module`` registered in :data:`OOD_SCORE_REGISTRY` under the name of its
``ood_scores_<name>`` field. It is used in three steps:

1. ``fit(data)`` on the ground-truth boxes of the ID training set (:class:`BoxFitData`),
   done by ``tools/fit_ood_scores.py``; scorers without fitted state (``needs_fit`` False)
   skip it;
2. ``fitted_state()`` -> a dict of tensors, numbers and strings, saved next to the weights
   and read back with ``torch.load(..., weights_only=True)`` by ``load_fitted_state``;
3. ``scorer(features, logits, layer_features=..., logits_of=...)`` -> (N,) OOD scores of N
   boxes, larger = more OOD.

The fitted state follows ``.to()`` but stays out of the model's checkpoints (the box
predictor drops it from its ``state_dict``): it is fitted to given weights and saved in its
own file, which ``MODEL.OOD.POST_HOC.STATE`` names.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from detectron2.utils.registry import Registry

__all__ = ["OOD_SCORE_REGISTRY", "FIT_TOOL", "BoxFitData", "PostHocScore"]

OOD_SCORE_REGISTRY = Registry("OOD_SCORE")
OOD_SCORE_REGISTRY.__doc__ = """
Post-hoc OOD scores of detected boxes (:class:`PostHocScore` subclasses), by the name of
their ``ood_scores_<name>`` field; built as ``cls.from_config(cfg)`` or ``cls()``.
"""

# The tool that fits every scorer's state (named in the errors of unfitted scorers).
FIT_TOOL = "tools/fit_ood_scores.py"


@dataclass
class BoxFitData:
    """The ground-truth boxes of the ID training set, as a post-hoc score sees them.

    Attributes:
        features: (N, D) penultimate box features (the input of the class layer).
        logits: (N, K) their foreground logits.
        labels: (N,) int64 classes in [0, K).
        num_classes: K.
        classifier_weight: (K, D) weight of the class layer's foreground rows, or None if
            the class layer is not affine.
        classifier_bias: (K,) its bias, or None.
        layer_features: feature-map name -> (N, C) the boxes ROI-pooled from that map.
        logits_of: maps (M, D) features to their (M, K) foreground logits.
        embeddings: (N, d) unit vectors z = normalize(g(h)) of the model's embedding loss
            (SIREN's or CIDER's projection head g), or None if it has none.
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    classifier_weight: Optional[torch.Tensor] = None
    classifier_bias: Optional[torch.Tensor] = None
    layer_features: Optional[Dict[str, torch.Tensor]] = None
    logits_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    embeddings: Optional[torch.Tensor] = None


class PostHocScore(nn.Module):
    """Base class of the post-hoc OOD scores.

    Subclasses set ``name``, implement :meth:`forward` and, if ``needs_fit``, :meth:`fit`,
    registering what they fit with :meth:`set_fitted` (tensors) and :attr:`fitted_config`
    (numbers, strings and lists).
    """

    name = ""
    needs_fit = True
    # True: :meth:`forward` gets the model's embedding z (``BoxFitData.embeddings``) as its
    # ``features``, and is not computed for a model without an embedding loss.
    reads_embedding = False

    def __init__(self):
        super().__init__()
        self.fitted_config: Dict = {}
        self._fitted_names: Tuple[str, ...] = ()
        # Empty; it only follows .to() so that state fitted or loaded later (on whatever
        # device its data was) lands on the device of the model holding this scorer.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    # --- fitted state ---------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device this scorer was moved to (that of the model holding it)."""
        return self._device_anchor.device

    def set_fitted(self, **tensors: torch.Tensor) -> None:
        """Store fitted tensors as non-persistent buffers on :attr:`device` (they follow
        ``.to()``), whatever the device of the data they were fitted on."""
        for name, value in tensors.items():
            self.register_buffer(name, value.detach().to(self.device, copy=True), persistent=False)
        self._fitted_names = tuple(sorted(set(self._fitted_names) | set(tensors)))

    def is_fitted(self) -> bool:
        return not self.needs_fit or bool(self.fitted_config)

    def fitted_state(self) -> Dict:
        """What :meth:`fit` learned, as CPU tensors and plain values.

        Returns:
            dict: ``"buffers"`` (the tensors of :meth:`set_fitted`), ``"modules"`` (the
            ``state_dict`` of the submodules made by :meth:`after_load`, e.g. a network) and
            ``"config"`` (numbers, strings, lists).
        """
        return {
            "buffers": {name: getattr(self, name).cpu() for name in self._fitted_names},
            "modules": {name: value.cpu() for name, value in self.state_dict().items()},
            "config": dict(self.fitted_config),
        }

    def load_fitted_state(self, state: Dict) -> "PostHocScore":
        """Restore a state returned by :meth:`fitted_state`."""
        self.fitted_config = dict(state["config"])
        self.set_fitted(**state["buffers"])
        # The submodules after_load builds are created on this scorer's device.
        with torch.device(self.device):
            self.after_load()
        self.load_state_dict(state["modules"])
        return self

    def after_load(self) -> None:
        """Build the submodules whose shapes the fitted config gives (before their weights
        are loaded; :meth:`load_fitted_state` calls it with :attr:`device` as the default
        device of new tensors); optional."""

    def require_fitted(self) -> None:
        if not self.is_fitted():
            raise RuntimeError(
                f"the {self.name!r} OOD score is not fitted: run {FIT_TOOL} for these weights "
                "and set MODEL.OOD.POST_HOC.STATE to the file it writes"
            )

    # --- fitting and scoring ------------------------------------------------------------

    def fit(self, data: BoxFitData) -> "PostHocScore":
        """Fit on the ID training boxes (scores without state need nothing)."""
        return self

    def layer_names(self) -> Tuple[str, ...]:
        """The feature maps whose ROI-pooled box features :meth:`forward` needs."""
        return ()

    def part_names(self) -> Tuple[str, ...]:
        """The other post-hoc scores whose values :meth:`forward` combines; they are computed
        first and passed to it as ``part_scores`` (name -> (N,) scores); optional."""
        return ()

    def forward(self, features, logits, layer_features=None, logits_of=None):
        """OOD scores of N boxes, larger = more OOD.

        Args:
            features (Tensor): (N, D) penultimate box features.
            logits (Tensor): (N, K) foreground logits.
            layer_features (dict[str, Tensor], optional): name -> (N, C) ROI-pooled
                features of the maps in :meth:`layer_names`.
            logits_of (callable, optional): (M, D) features -> (M, K) foreground logits.

        Returns:
            Tensor: (N,) float32.
        """
        raise NotImplementedError

    def _layer_input(self, layer_features, names):
        """Concatenate the pooled features of ``names``, with a clear error if missing."""
        if layer_features is None or any(name not in layer_features for name in names):
            available = sorted(layer_features or ())
            raise RuntimeError(
                f"the {self.name!r} OOD score needs box features pooled from the feature maps "
                f"{list(names)}; got {available} (it runs inside VOSROIHeads, which passes them)"
            )
        return torch.cat([layer_features[name].float() for name in names], dim=1)
