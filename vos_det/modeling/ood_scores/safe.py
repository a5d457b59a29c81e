"""SAFE, sensitivity-aware features (Wilson, Fischer, Dayoub, Miller and Suenderhauf, "SAFE:
Sensitivity-Aware Features for Out-of-Distribution Object Detection", ICCV 2023), as the
authors release it (SamWilso/SAFE_Official at commit 4123f62; our own code, citing its lines).

Layers. The outputs of the residual blocks' projection shortcuts (conv + BN): every module
of the backbone whose full name matches one of :data:`DEFAULT_LAYER_PATTERNS` (regular
expressions, ``re.fullmatch``; ``MODEL.OOD.POST_HOC.SAFE.LAYER_PATTERNS`` changes them):

- detectron2 ResNet: ``backbone.bottom_up.res<k>.<i>.shortcut``, the release's "every
  ``Conv2d`` whose name contains ``shortcut``" (``SAFE/shared/tracker.py`` l. 30-31); a
  detectron2 ``Conv2d`` applies its norm, so its output is conv + BN. Only the first block of
  a stage that changes width or stride has one: res2-res5 of an R-50, res3-res5 of an R-18;
- detectron2 RegNetX: ``backbone.bottom_up.s<k>.b1.bn``, the BN of the first block's
  projection (``tracker.py`` l. 23-29).

Fitting (:mod:`vos_det.engine.safe_fitting`), on the ID training images:

1. clean pass, eval mode: the boxes the detector predicts, and each hooked map ROI-aligned to
   one 1 x 1 bin per box (``SAFE/extract.py`` l. 110-119, 154-170; ``tracker.py`` l. 44-52:
   ``roi_align(feat, rois, (1, 1), scale)``, i.e. adaptive sampling, ``aligned=False``);
2. one FGSM step of ``eps`` pixel units (0-255) on the sum of the detector's training losses
   (RPN + ROI heads) in train mode, clamped to [0, 255] (``SAFE/RCNN.py`` l. 70-94,
   ``extract.py`` l. 121-137), then the same boxes pooled again (``extract.py`` l. 139-148);
   vos_det keeps BatchNorm in eval mode for that pass (the release's R-50 has FrozenBN; a BN
   trained from scratch would normalise by one image and update its running statistics) and
   leaves every buffer of the detector as it was;
3. an MLP (:func:`safe_mlp`, ``SAFE/shared/metaclassifier.py`` l. 13-25) is trained with
   binary cross-entropy (l. 31) to give the clean boxes label 1 and the perturbed ones 0
   (``SAFE/shared/datasets.py`` l. 57-65), on features minus the mean of the clean ones
   (``SAFE/train.py`` l. 13-21, 126), by SGD with momentum 0.9 (``metaclassifier.py`` l. 33),
   lr 1e-3, 5 epochs, 32 images a batch (``train.py`` l. 31-36), on a random 80 % of the
   images, the other 20 % held out (l. 77-81). ``train.py`` l. 173-180 saves an epoch's
   weights when its *training* loss is below the best *validation* loss so far; vos_det
   keeps the epoch of the lowest validation loss.

``eps`` is the release's 8 unless validation sets are given; then it is chosen from
``EPSILON_CANDIDATES`` by the lowest FPR95 of ID vs OOD validation ground-truth boxes, recorded.

Score. The release ranks a box by minus the MLP's probability of "clean"
(``SAFE/eval.py`` l. 151-165); vos_det returns minus its logit (the same order, without
float32 sigmoid saturation): larger = more OOD. At inference each detection is pooled on its
proposal box (the box every layer-pooling score of vos_det reads); the release pools the
regressed box.

The hooked outputs are read by forward hooks, which :func:`attach_post_hoc_hooks` puts on a
built detector (the project's Trainer, OODPredictor and fitting do it); they keep the outputs
only in the inference passes that compute SAFE.
"""
import logging
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import roi_align

from ..config_options import options_from_config
from .base import OOD_SCORE_REGISTRY, PostHocScore

__all__ = [
    "DEFAULT_LAYER_PATTERNS",
    "LayerCapture",
    "SAFEFitData",
    "SAFEScore",
    "attach_post_hoc_hooks",
    "match_layers",
    "matching_layers",
    "pool_boxes_1x1",
    "safe_mlp",
    "train_safe_mlp",
]

logger = logging.getLogger(__name__)

# detectron2 ResNet projection shortcuts (in an FPN's bottom_up or as the backbone itself),
# and the projection BN of the first block of each RegNet stage.
DEFAULT_LAYER_PATTERNS = (
    r"backbone\.(bottom_up\.)?res\d+\.\d+\.shortcut",
    r"backbone\.(bottom_up\.)?s\d+\.b1\.bn",
)
# The release's metaclassifier: Dropout's default probability, every bias filled with 0.01.
_DROPOUT = 0.5
_BIAS_INIT = 0.01
# SGD momentum of the release (metaclassifier.py l. 33).
_MOMENTUM = 0.9
# Labels of the release (datasets.py l. 62-63): clean boxes 1, perturbed boxes 0.
_CLEAN, _PERTURBED = 1.0, 0.0


def matching_layers(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Names of the backbone modules whose full name matches one of ``patterns``.

    Args:
        model: a detector with a ``backbone`` (e.g. GeneralizedRCNN).
        patterns: regular expressions, matched with ``re.fullmatch`` against the names of
            ``model.named_modules()``.

    Returns:
        The matching names, in the order of ``named_modules`` (shallow to deep); maybe none.

    Raises:
        ValueError: a pattern is not a regular expression.
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(f"MODEL.OOD.POST_HOC.SAFE.LAYER_PATTERNS: {pattern!r} is not a regular expression ({e})")
    return [
        f"backbone.{name}"
        for name, _ in model.backbone.named_modules()
        if name and any(p.fullmatch(f"backbone.{name}") for p in compiled)
    ]


def match_layers(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """:func:`matching_layers`, at least one.

    Raises:
        ValueError: a pattern is not a regular expression, or no module matches.
    """
    names = matching_layers(model, patterns)
    if not names:
        raise ValueError(
            f"SAFE: no module of the {type(model.backbone).__name__} backbone matches "
            f"MODEL.OOD.POST_HOC.SAFE.LAYER_PATTERNS {list(patterns)} (SAFE reads residual "
            "projection shortcuts: use a ResNet / RegNet backbone or set patterns naming its modules)"
        )
    return names


def pool_boxes_1x1(maps: Sequence[torch.Tensor], input_size: Tuple[int, int], boxes: Sequence[torch.Tensor]):
    """ROI-align every map to one 1 x 1 bin per box, as the release does.

    Args:
        maps: (B, C_l, h_l, w_l) feature maps of a batch of B images.
        input_size: (H, W) of the (padded) batch the maps were computed from; a map's stride
            is ``round(H / h_l)``.
        boxes: per image, (n_i, 4) XYXY boxes in input pixels.

    Returns:
        Tensor: (sum n_i, sum C_l) float32, image after image, the maps side by side.
    """
    pooled = []
    for feature_map in maps:
        stride = round(input_size[0] / feature_map.shape[-2])
        rois = [b.to(device=feature_map.device, dtype=torch.float32) for b in boxes]
        pooled.append(roi_align(feature_map.float(), rois, output_size=1, spatial_scale=1.0 / stride).flatten(1))
    return torch.cat(pooled, dim=1)


class LayerCapture:
    """Forward hooks keeping the latest outputs of named modules of a detector, and the size of
    the batch its backbone last read (to know each map's stride).

    ``capture.maps`` (name -> (B, C, h, w), detached) and ``capture.input_size`` are those of
    the last backbone pass; :meth:`pool` pools boxes on them.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], wanted: Optional[Callable[[], bool]] = None):
        """
        Args:
            model: the detector (GeneralizedRCNN).
            names: full names of modules of ``model`` (see :func:`match_layers`).
            wanted: asked at the start of each backbone pass; the outputs of that pass are
                kept only if it returns True (None: always kept).
        """
        self.names = tuple(names)
        self.maps: Dict[str, torch.Tensor] = {}
        self.input_size: Optional[Tuple[int, int]] = None
        self.wanted = wanted
        self._keeping = True
        self._handles = [model.backbone.register_forward_pre_hook(self._remember_input)]
        for name in self.names:
            module = model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _remember_input(self, module, args):
        self.input_size = tuple(args[0].shape[-2:])
        self.maps = {}
        self._keeping = self.wanted is None or self.wanted()

    def _hook(self, name):
        def keep(module, inputs, output):
            if self._keeping:
                self.maps[name] = output.detach()

        return keep

    def pool(self, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """(sum n_i, sum C) features of per-image boxes on the last pass's maps (1 x 1 bins)."""
        missing = [name for name in self.names if name not in self.maps]
        if missing or self.input_size is None:
            raise RuntimeError(f"SAFE: the modules {missing} did not run in the detector's last backbone pass")
        return pool_boxes_1x1([self.maps[name] for name in self.names], self.input_size, boxes)

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def safe_mlp(input_dim: int) -> nn.Sequential:
    """The release's metaclassifier without its final sigmoid (metaclassifier.py l. 13-25).

    Returns:
        ``Linear(d, d // 2) -> Linear(d // 2, d // 4) -> Dropout(0.5) -> Linear(d // 4, 1)``
        (no activation between the linear layers, as released), Xavier-uniform weights,
        biases 0.01: (N, d) -> (N, 1) logits of "clean".
    """
    if input_dim < 4:
        raise ValueError(f"SAFE: the hooked layers give {input_dim} features per box; the MLP needs at least 4")
    mlp = nn.Sequential(
        nn.Linear(input_dim, input_dim // 2),
        nn.Linear(input_dim // 2, input_dim // 4),
        nn.Dropout(_DROPOUT),
        nn.Linear(input_dim // 4, 1),
    )
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, _BIAS_INIT)
    return mlp


@dataclass
class SAFEFitData:
    """The hooked-layer features of the boxes the detector predicts on its training images.

    Attributes:
        layers: the hooked modules, in the order of the feature columns.
        clean: (N, d) float32 features of the N boxes in the clean images.
        perturbed: eps -> (N, d) features of the same boxes in the images perturbed by FGSM
            of that eps (pixel units).
        image_index: (N,) int64, the training image each box comes from (the release splits
            and batches by image).
    """

    layers: Tuple[str, ...]
    clean: torch.Tensor
    perturbed: Dict[float, torch.Tensor]
    image_index: torch.Tensor


def train_safe_mlp(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    image_index: torch.Tensor,
    *,
    epochs: int,
    learning_rate: float,
    images_per_batch: int,
    validation_fraction: float,
    seed: int,
):
    """Train the metaclassifier to tell clean boxes (label 1) from perturbed ones (label 0).

    Args:
        clean, perturbed: (N, d) features of the same N boxes, clean and perturbed.
        image_index: (N,) the image of each box: images are split and batched whole.
        epochs, learning_rate, images_per_batch: SGD (momentum 0.9) schedule.
        validation_fraction: fraction of the images held out (the release's 0.2).
        seed: seed of the initialisation, the split and the batch order.

    Returns:
        tuple[nn.Sequential, Tensor, dict]: the MLP (eval mode, weights of the epoch with the
        lowest validation loss), the (d,) mean of the clean features it subtracts, and the
        training record {"epoch", "validation_loss", "validation_accuracy", "train_loss"}.
    """
    mean = clean.float().mean(dim=0)
    images, box_image = torch.unique(image_index, return_inverse=True)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    num_train = int((1.0 - validation_fraction) * len(images))
    if num_train < 1 or num_train == len(images):
        raise ValueError(
            f"SAFE: {len(images)} training images with predicted boxes are too few for a "
            f"{1 - validation_fraction:.0%} / {validation_fraction:.0%} split"
        )
    train_images, val_images = order[:num_train], order[num_train:]
    x = torch.cat([clean.float(), perturbed.float()]) - mean
    y = torch.cat([torch.full((len(clean),), _CLEAN), torch.full((len(perturbed),), _PERTURBED)])
    rows_of_image = [torch.nonzero(box_image == i).flatten() for i in range(len(images))]
    offset = len(clean)

    def rows(image_ids):
        picked = torch.cat([rows_of_image[int(i)] for i in image_ids])
        return torch.cat([picked, picked + offset])

    val_rows = rows(val_images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = safe_mlp(x.shape[1])
        optimizer = torch.optim.SGD(mlp.parameters(), lr=learning_rate, momentum=_MOMENTUM)
        best = None
        with torch.enable_grad():
            for epoch in range(epochs):
                mlp.train()
                losses = []
                shuffled = train_images[torch.randperm(len(train_images), generator=generator)]
                for batch in shuffled.split(images_per_batch):
                    batch_rows = rows(batch)
                    loss = F.binary_cross_entropy_with_logits(mlp(x[batch_rows]).squeeze(1), y[batch_rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                mlp.eval()
                with torch.no_grad():
                    logits = mlp(x[val_rows]).squeeze(1)
                    val_loss = float(F.binary_cross_entropy_with_logits(logits, y[val_rows]))
                    accuracy = float(((logits > 0).float() == y[val_rows]).float().mean())
                if best is None or val_loss < best[1]["validation_loss"]:
                    record = {
                        "epoch": epoch + 1,
                        "validation_loss": val_loss,
                        "validation_accuracy": accuracy,
                        "train_loss": sum(losses) / len(losses),
                    }
                    best = ({k: v.clone() for k, v in mlp.state_dict().items()}, record)
    mlp.load_state_dict(best[0])
    return mlp.eval().requires_grad_(False), mean, best[1]


@OOD_SCORE_REGISTRY.register()
class SAFEScore(PostHocScore):
    """SAFE (fitted: the hooked modules, the mean of their clean features, the MLP, eps)."""

    name = "safe"

    def __init__(
        self,
        layer_patterns: Sequence[str] = DEFAULT_LAYER_PATTERNS,
        fgsm_epsilon: float = 8.0,
        epsilon_candidates: Sequence[float] = (2.0, 4.0, 8.0, 16.0),
        epochs: int = 5,
        learning_rate: float = 1e-3,
        images_per_batch: int = 32,
        validation_fraction: float = 0.2,
        max_images: int = 0,
        seed: int = 0,
    ):
        """
        Args:
            layer_patterns: regular expressions naming the hooked modules (:func:`match_layers`).
            fgsm_epsilon: the FGSM step in pixel units when it is not chosen on validation
                sets (the release's 8).
            epsilon_candidates: the steps tried when it is.
            epochs, learning_rate, images_per_batch, validation_fraction: the MLP's
                training (the release's 5, 1e-3, 32, 0.2).
            max_images: training images used for fitting, evenly spread (0 = all).
            seed: seed of the MLP's initialisation, split and batch order, and of the
                proposal sampling of the FGSM pass.
        """
        super().__init__()
        self.layer_patterns = tuple(layer_patterns)
        self.fgsm_epsilon = float(fgsm_epsilon)
        self.epsilon_candidates = tuple(float(e) for e in epsilon_candidates)
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.images_per_batch = images_per_batch
        self.validation_fraction = validation_fraction
        self.max_images = max_images
        self.seed = seed
        self._capture: Optional[LayerCapture] = None

    @classmethod
    def from_config(cls, cfg):
        safe = cfg.MODEL.OOD.POST_HOC.SAFE
        options = options_from_config(
            safe, "layer_patterns", "fgsm_epsilon", "epsilon_candidates", "epochs", "learning_rate",
            "images_per_batch", "max_images",
        )
        return cls(seed=max(cfg.SEED, 0), **options)

    # --- hooks -------------------------------------------------------------------------------

    reads_module_outputs = True
    """Scored from the outputs of the detector's own modules (through :meth:`attach`) on the
    detections' boxes, not from the backbone's output maps."""

    def attach(self, model: nn.Module, wanted: Optional[Callable[[], bool]] = None) -> None:
        """Hook the fitted modules of ``model`` (nothing if not fitted; again: re-hooked).

        Args:
            model: the detector.
            wanted: whether a forward pass about to start will compute this score; the
                hooked outputs are kept only for those passes (None: for every pass).
        """
        self.detach()
        if self.is_fitted():
            self._capture = LayerCapture(model, self.fitted_config["layers"], wanted)

    def detach(self) -> None:
        """Remove the hooks of :meth:`attach`."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def is_attached(self) -> bool:
        return self._capture is not None

    # --- fitting and scoring -----------------------------------------------------------------

    def fit(self, data: SAFEFitData, epsilon: float, **record):
        """Train the MLP on the clean boxes and those perturbed by FGSM of ``epsilon``.

        Args:
            data: from :func:`vos_det.engine.safe_fitting.extract_safe_features`.
            epsilon: a key of ``data.perturbed``.
            record: how ``epsilon`` was chosen etc., kept in the fitted config.
        """
        mlp, mean, training = train_safe_mlp(
            data.clean,
            data.perturbed[epsilon],
            data.image_index,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            images_per_batch=self.images_per_batch,
            validation_fraction=self.validation_fraction,
            seed=self.seed,
        )
        self.detach()
        self.fitted_config = {
            "layers": list(data.layers),
            "epsilon": float(epsilon),
            "input_dim": int(data.clean.shape[1]),
            "num_boxes": int(len(data.clean)),
            "num_images": int(len(torch.unique(data.image_index))),
            **training,
            **record,
        }
        self.set_fitted(mean=mean)
        self.mlp = mlp.to(self.device)
        return self

    def load_fitted_state(self, state):
        """Restore a fitted state; one of the earlier port (features of FPN maps, no
        eps) is another method's: it is skipped with a warning, leaving SAFE unfitted."""
        if "epsilon" not in state["config"]:
            logger.warning(
                "post-hoc state of 'safe' fitted by the earlier SAFE port (layers %s) ignored: "
                "refit it with tools/fit_ood_scores.py", state["config"].get("layers"),
            )
            return self
        return super().load_fitted_state(state)

    def after_load(self):
        self.detach()
        self.mlp = safe_mlp(self.fitted_config["input_dim"]).eval().requires_grad_(False)

    def score_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) OOD scores (minus the logit of "clean") of (N, d) hooked-layer features."""
        self.require_fitted()
        return -self.mlp(x.float().to(self.mean.device) - self.mean).squeeze(1)

    def forward(self, features, logits, layer_features=None, logits_of=None, boxes=None):
        """OOD scores of N detections from the hooked maps of the current forward pass.

        Args:
            boxes (list[Tensor]): per image, the (n_i, 4) boxes of the N rows.

        Returns:
            Tensor: (N,) float32, larger = more OOD.
        """
        self.require_fitted()
        if self._capture is None or boxes is None:
            raise RuntimeError(
                "the 'safe' OOD score reads the outputs of backbone modules through forward hooks: "
                "call vos_det.modeling.ood_scores.attach_post_hoc_hooks(model) on the built detector"
            )
        return self.score_features(self._capture.pool(boxes))


def attach_post_hoc_hooks(model: nn.Module) -> nn.Module:
    """Hook the modules the fitted post-hoc scores of a detector read (SAFE's layers).

    Call it on a built detector whose ``MODEL.OOD.POST_HOC.STATE`` holds a fitted SAFE (the
    project's Trainer.build_model and OODPredictor do); without one it does nothing. The hooks
    keep the modules' outputs only in the inference passes that compute the score (the box
    predictor's ``ood_field_names()``, see
    :func:`vos_det.evaluation.records.computing_all_ood_scores`).

    Returns:
        the model.
    """
    box_predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    post_hoc = getattr(box_predictor, "post_hoc", None)
    for name, score in post_hoc.scores.items() if post_hoc is not None else ():
        if getattr(score, "reads_module_outputs", False):
            score.attach(model, wanted=_computing(box_predictor, name))
    return model


def _computing(box_predictor: nn.Module, name: str) -> Callable[[], bool]:
    """Whether ``box_predictor``'s next inference computes the post-hoc score ``name``."""

    def computing() -> bool:
        return not box_predictor.training and name in box_predictor.post_hoc.computed(box_predictor.ood_field_names())

    return computing
