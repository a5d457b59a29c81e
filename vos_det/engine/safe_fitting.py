"""Fitting SAFE as released: hooked shortcut features of the boxes a detector predicts on its
training images, clean and after one FGSM step on its whole training loss.

    from vos_det.engine.safe_fitting import fit_safe
    record = fit_safe(cfg, model, ["digits_det_train"], "digits_det_val", "digits_det_ood_val")

The method and its sources are in :mod:`vos_det.modeling.ood_scores.safe`. Cost: one
inference pass and one training-mode forward + backward per training image, then one
backbone pass per candidate eps (every eps reuses the one gradient: FGSM's step is
``eps * sign(gradient)``); the validation images are inferred once; the MLPs are small.
"""
import contextlib
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils.events import EventStorage
from torch import nn
from tqdm import tqdm

from ..metrics.ood_metrics import auroc, fpr_at_tpr
from ..modeling.ood_scores.safe import LayerCapture, SAFEFitData, SAFEScore, match_layers
from .feature_extraction import annotated_test_mapper

__all__ = ["extract_safe_features", "fgsm_images", "fit_safe", "safe_loader"]

logger = logging.getLogger(__name__)

# Pixel values of the detector's input images (the release clamps its FGSM images to them).
_PIXEL_RANGE = (0.0, 255.0)


@contextlib.contextmanager
def _training_forward_without_side_effects(model: nn.Module):
    """Train mode for the losses, BatchNorm in eval mode, and every buffer (BN statistics,
    VOS queues, ...) restored on exit; the model's mode is restored too."""
    was_training = model.training
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])


def fgsm_images(model: nn.Module, inputs: List[Dict], epsilons: Sequence[float], seed: int = 0):
    """Images perturbed by one FGSM step on the detector's summed training losses.

    As ``SAFE/RCNN.py`` l. 70-94: the model in train mode (here with BatchNorm in eval mode,
    and no buffer changed), the gradient of the sum of its loss dict (RPN + ROI heads) with
    respect to the input pixels, then ``clamp(image + eps * sign(gradient), 0, 255)``.

    Args:
        model: a GeneralizedRCNN.
        inputs: dataset dicts with ``image`` ((3, H, W), 0-255) and ``instances``.
        epsilons: step sizes in pixel units.
        seed: seed of the proposal sampling of the training pass.

    Returns:
        dict[float, list[Tensor]]: eps -> per image the (3, H, W) float32 perturbed image.
    """
    images = [x["image"].to(model.device).float().requires_grad_(True) for x in inputs]
    batch = [{**x, "image": image} for x, image in zip(inputs, images)]
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.enable_grad(), _training_forward_without_side_effects(model), EventStorage(0):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            losses = model(batch)
        gradients = torch.autograd.grad(sum(losses.values()), images)
    return {
        eps: [(image.detach() + eps * g.sign()).clamp(*_PIXEL_RANGE) for image, g in zip(images, gradients)]
        for eps in epsilons
    }


@torch.no_grad()
def extract_safe_features(
    model: nn.Module,
    data_loader,
    layers: Sequence[str],
    epsilons: Sequence[float] = (),
    seed: int = 0,
    description: str = "SAFE",
    ground_truth: bool = False,
) -> SAFEFitData:
    """Hooked-layer features of the boxes the detector predicts, clean and perturbed.

    Args:
        model: a GeneralizedRCNN in eval mode.
        data_loader: yields lists of dataset dicts with ``image`` and (for ``epsilons``)
            ``instances``, e.g. :func:`safe_loader`.
        layers: the hooked modules (:func:`~vos_det.modeling.ood_scores.safe.match_layers`).
        epsilons: FGSM steps whose perturbed features are pooled too (none: clean only).
        seed: seed of the FGSM pass's proposal sampling (plus the batch's index).
        description: label of the progress bar.
        ground_truth: pool the ground-truth boxes instead of the predicted ones.

    Returns:
        SAFEFitData: CPU tensors; an image without boxes adds no row.
    """
    capture = LayerCapture(model, layers)
    clean, perturbed, image_index = [], {eps: [] for eps in epsilons}, []
    num_images = 0
    try:
        for batch_index, inputs in enumerate(tqdm(data_loader, desc=description, unit="batch")):
            if ground_truth:
                model.backbone(model.preprocess_image(inputs).tensor)
                boxes = [x["instances"].gt_boxes.tensor for x in inputs]
            else:
                boxes = [d.pred_boxes.tensor for d in model.inference(inputs, do_postprocess=False)]
            clean.append(capture.pool(boxes).cpu())
            image_index.append(
                torch.cat([torch.full((len(b),), num_images + i, dtype=torch.int64) for i, b in enumerate(boxes)])
            )
            num_images += len(inputs)
            if epsilons:
                adversarial = fgsm_images(model, inputs, epsilons, seed=seed + batch_index)
                for eps, images in adversarial.items():
                    model.backbone(model.preprocess_image([{"image": image} for image in images]).tensor)
                    perturbed[eps].append(capture.pool(boxes).cpu())
    finally:
        capture.remove()
    if not clean:
        raise ValueError(f"{description}: the data loader yielded no images")
    return SAFEFitData(
        layers=tuple(layers),
        clean=torch.cat(clean),
        perturbed={eps: torch.cat(parts) for eps, parts in perturbed.items()},
        image_index=torch.cat(image_index),
    )


def safe_loader(cfg, dataset_name: str, max_images: int = 0):
    """A test-time loader that keeps the annotations, over ``max_images`` evenly spread
    images of a dataset (0 = all)."""
    dicts = DatasetCatalog.get(dataset_name)
    if 0 < max_images < len(dicts):
        dicts = [dicts[i] for i in np.linspace(0, len(dicts) - 1, max_images).round().astype(int)]
    return build_detection_test_loader(dicts, mapper=annotated_test_mapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS)


def _choice_key(result, eps, default):
    # Lowest FPR95, then highest AUROC, then the step nearest the release's.
    return (result["fpr95"], -result["auroc"], abs(eps - default), eps)


def fit_safe(
    cfg,
    model: nn.Module,
    datasets: Sequence[str],
    val_id: Optional[str] = None,
    val_ood: Optional[str] = None,
    scorer: Optional[SAFEScore] = None,
) -> Dict:
    """Fit the SAFE score of a detector on its training images and choose its FGSM step.

    With ``val_id`` and ``val_ood``, an MLP is trained for every step of
    ``scorer.epsilon_candidates`` and the one with the lowest FPR95 of the ID vs OOD
    validation images' ground-truth boxes (the objects, as k of the k-NN score is chosen;
    ties: higher AUROC, then nearest the release's 8) is kept; otherwise
    ``scorer.fgsm_epsilon``. The choice is recorded in the fitted config.

    Args:
        cfg: the model's config.
        model: the detector (GeneralizedRCNN, eval mode) whose box predictor holds the scorer.
        datasets: ID training datasets.
        val_id, val_ood: ID and OOD validation datasets (never a test split).
        scorer: the SAFEScore to fit; default the model's.

    Returns:
        dict: what goes into the state file's info (per eps tried, FPR95 and AUROC).

    Raises:
        ValueError: no backbone module matches the layer patterns (one line, naming the key).
    """
    scorer = scorer if scorer is not None else model.roi_heads.box_predictor.post_hoc.scores["safe"]
    layers = match_layers(model, scorer.layer_patterns)
    choose = bool(val_id and val_ood)
    epsilons = scorer.epsilon_candidates if choose else (scorer.fgsm_epsilon,)
    logger.info("SAFE: hooking %s; FGSM steps %s", layers, list(epsilons))
    parts = [
        extract_safe_features(
            model, safe_loader(cfg, name, scorer.max_images), layers, epsilons, scorer.seed, f"SAFE {name}"
        )
        for name in datasets
    ]
    offsets = np.cumsum([0] + [int(p.image_index.max()) + 1 if len(p.image_index) else 0 for p in parts[:-1]])
    data = SAFEFitData(
        layers=tuple(layers),
        clean=torch.cat([p.clean for p in parts]),
        perturbed={eps: torch.cat([p.perturbed[eps] for p in parts]) for eps in epsilons},
        image_index=torch.cat([p.image_index + int(offset) for p, offset in zip(parts, offsets)]),
    )
    if not choose:
        scorer.fit(data, scorer.fgsm_epsilon, epsilon_source="MODEL.OOD.POST_HOC.SAFE.FGSM_EPSILON")
        scorer.to(model.device)
        return {}
    id_val, ood_val = (
        extract_safe_features(model, safe_loader(cfg, name), layers, description=f"SAFE {name}", ground_truth=True).clean
        for name in (val_id, val_ood)
    )
    results, states = {}, {}
    for eps in epsilons:
        scorer.fit(data, eps)
        with torch.no_grad():
            id_scores = scorer.score_features(id_val).cpu().numpy()
            ood_scores = scorer.score_features(ood_val).cpu().numpy()
        results[eps] = {"fpr95": fpr_at_tpr(id_scores, ood_scores), "auroc": auroc(id_scores, ood_scores)}
        states[eps] = scorer.fitted_state()
        logger.info("SAFE eps %g: validation FPR95 %.4f, AUROC %.4f", eps, results[eps]["fpr95"], results[eps]["auroc"])
    best = min(results, key=lambda eps: _choice_key(results[eps], eps, scorer.fgsm_epsilon))
    tried = {f"{eps:g}": value for eps, value in results.items()}
    scorer.load_fitted_state(states[best])
    scorer.fitted_config.update(
        epsilon_source=f"lowest FPR95 on {val_id} vs {val_ood}",
        epsilon_validation=tried,
        num_val_boxes=[int(len(id_val)), int(len(ood_val))],
    )
    scorer.to(model.device)
    return {"safe_epsilon_validation": tried}
