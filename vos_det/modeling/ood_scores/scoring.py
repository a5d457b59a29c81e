"""The post-hoc scores as the box predictor runs them: fitted state, feature maps, one table."""
import contextlib
from typing import Callable, Collection, Dict, List, Optional

import torch
from torch import nn

from ..precision import full_precision
from .base import FIT_TOOL
from .box_pooling import pool_box_layers
from .state_file import load_post_hoc_state

__all__ = ["PostHocScoring"]


class PostHocScoring(nn.Module):
    """Every post-hoc score of a box predictor, and what they need at inference.

    Holds the scorers (:func:`~vos_det.modeling.ood_scores.build_post_hoc_scores`) and,
    while :meth:`feature_maps` is active (``VOSROIHeads`` sets it around its box inference),
    the backbone's feature maps, from which the multi-layer scores pool each detection's
    proposal box. The scorers' state is fitted to given weights and lives in its own file:
    it is left out of this module's ``state_dict`` and ignored when a checkpoint is loaded.
    """

    def __init__(self, scores: nn.ModuleDict, state_file: str = "", feature_dim: int = 0, num_classes: int = 0):
        """
        Args:
            scores: name -> PostHocScore.
            state_file: file written by tools/fit_ood_scores.py ("" = nothing fitted).
            feature_dim, num_classes: of the box predictor, checked against the file.
        """
        super().__init__()
        self.scores = scores
        self.state_file = state_file
        if state_file:
            load_post_hoc_state(dict(scores.items()), state_file, feature_dim, num_classes)
        self._maps = None
        self._prefix = None
        self.register_state_dict_post_hook(_drop_own_keys)
        self.register_load_state_dict_pre_hook(_remember_prefix)
        self.register_load_state_dict_post_hook(_ignore_own_keys)

    def available(self) -> List[str]:
        """Names of the scores that can be computed (fitted, or needing no fit)."""
        return [name for name, score in self.scores.items() if score.is_fitted()]

    def computed(self, names: Optional[Collection[str]] = None) -> List[str]:
        """The available scores among ``names`` (None = all), with the scores they combine.

        Args:
            names: the scores wanted.

        Returns:
            list[str]: in the order of :meth:`available`.
        """
        available = self.available()
        if names is None:
            return available
        chosen = {name for name in names if name in available}
        chosen |= {part for name in chosen for part in self.scores[name].part_names()}
        return [name for name in available if name in chosen]

    def layer_names(self, names: Optional[Collection[str]] = None) -> List[str]:
        """The feature maps the scores :meth:`computed` for ``names`` pool boxes from."""
        return sorted({layer for name in self.computed(names) for layer in self.scores[name].layer_names()})

    @contextlib.contextmanager
    def feature_maps(self, feature_maps: Dict[str, torch.Tensor], strides: Dict[str, int]):
        """Make the backbone's maps (name -> (B, C, H, W)) and strides available to
        :meth:`table` while the context lasts."""
        self._maps = (feature_maps, strides)
        try:
            yield
        finally:
            self._maps = None

    def table(
        self,
        features: Optional[torch.Tensor],
        logits: torch.Tensor,
        boxes: Optional[List[torch.Tensor]] = None,
        logits_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        names: Optional[Collection[str]] = None,
        embedding_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """The available post-hoc scores of N boxes (those of ``names``).

        Args:
            features: (N, D) penultimate box features; None = only the scores of the
                logits alone (those without fitted state).
            logits: (N, K) foreground logits.
            boxes: per image, the (n_i, 4) proposal boxes of the N rows (sum n_i = N),
                needed by multi-layer scores; without them (or outside :meth:`feature_maps`)
                those scores are left out.
            logits_of: (M, D) features -> (M, K) foreground logits.
            names: the scores wanted (None = all); the scores they combine are computed
                too, but returned only if wanted.
            embedding_of: (M, D) features -> (M, d) embedding z of the model's embedding
                loss, the input of the scores that read it (``reads_embedding``); None = the
                model has none, and those scores are left out.

        Returns:
            dict[str, Tensor]: name -> (N,) float32, larger = more OOD; computed with
            autocast off.
        """
        to_compute = self.computed(names)
        if features is None:
            to_compute = [name for name in to_compute if not self.scores[name].needs_fit]
        if embedding_of is None:
            to_compute = [name for name in to_compute if not self.scores[name].reads_embedding]
        if not to_compute:
            return {}
        layers = self.layer_names(to_compute)
        layer_features = None
        if layers and boxes is not None and self._maps is not None:
            layer_features = pool_box_layers(*self._maps, layers, boxes)
        embeddings = None
        table = {}
        # Autocast off: each score computes in the precision its maths needs (float32, or
        # float64 for the Mahalanobis and ViM projections), whatever the model's AMP.
        with full_precision(logits.device):
            # The scores that combine others (part_names) come after them.
            for name in sorted(to_compute, key=lambda n: bool(self.scores[n].part_names())):
                score = self.scores[name]
                if getattr(score, "reads_module_outputs", False):
                    # Hooked on the detector's modules (SAFE): pools the boxes itself.
                    if boxes is not None and score.is_attached():
                        table[name] = score(features, logits, boxes=boxes).float()
                    continue
                if score.layer_names() and layer_features is None:
                    continue
                parts = score.part_names()
                if any(part not in table for part in parts):
                    continue
                extra = {"part_scores": {part: table[part] for part in parts}} if parts else {}
                score_input = features
                if score.reads_embedding:
                    embeddings = embedding_of(features) if embeddings is None else embeddings
                    score_input = embeddings
                table[name] = score(score_input, logits, layer_features=layer_features, logits_of=logits_of, **extra).float()
        return {name: values for name, values in table.items() if names is None or name in names}

    def missing_reason(self, name: str) -> str:
        """Why the score ``name`` is not in :meth:`table` (for an error message)."""
        if name in self.scores and not self.scores[name].is_fitted():
            return (
                f"the {name!r} OOD score is not fitted: run {FIT_TOOL} for these weights and set "
                "MODEL.OOD.POST_HOC.STATE to the file it writes"
            )
        score = self.scores[name] if name in self.scores else None
        if getattr(score, "reads_embedding", False):
            return (
                f"the {name!r} OOD score searches the embedding of an embedding loss "
                "(MODEL.EMBEDDING.LOSSES: SIRENLoss or CIDERLoss), which this model was not trained with"
            )
        if getattr(score, "reads_module_outputs", False) and not score.is_attached():
            return (
                f"the {name!r} OOD score reads backbone modules through forward hooks: call "
                "vos_det.modeling.ood_scores.attach_post_hoc_hooks(model) on the built detector"
            )
        parts = score.part_names() if score is not None else ()
        missing = [part for part in parts if part not in self.available()]
        if missing:
            return (
                f"the {name!r} OOD score combines the scores {missing}, which are not fitted: run "
                f"{FIT_TOOL} for these weights"
            )
        return (
            f"the {name!r} OOD score pools the detections' boxes from the backbone's feature "
            "maps, which only VOSROIHeads passes to the box predictor"
        )


def _drop_own_keys(module, state_dict, prefix, local_metadata):
    for key in [key for key in state_dict if key.startswith(prefix)]:
        del state_dict[key]


def _remember_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    module._prefix = prefix
    # A checkpoint never holds fitted post-hoc state; drop any, rather than load it.
    for key in [key for key in state_dict if key.startswith(prefix)]:
        del state_dict[key]


def _ignore_own_keys(module, incompatible_keys):
    prefix = module._prefix
    if prefix is None:
        return
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not k.startswith(prefix)]
    module._prefix = None
