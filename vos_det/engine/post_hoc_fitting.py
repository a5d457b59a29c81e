"""Fit the post-hoc OOD scores of a trained detector on its ID training boxes.

    from vos_det.engine.post_hoc_fitting import fit_mahalanobis, fit_post_hoc_scores
    path = fit_post_hoc_scores(cfg, "output/x/model_final.pth")   # -> output/x/post_hoc_scores.pth
    path = fit_mahalanobis(cfg, "output/x/model_final.pth")       # -> output/x/mahalanobis_stats.pth

Every ground-truth box of the training set is pooled through the detector: its penultimate
box feature and foreground logits, and its ROI-pooled features of every backbone output;
for SAFE also the latter in the image perturbed by one FGSM step. Each score that needs
fitting (:mod:`vos_det.modeling.ood_scores`) is fitted on these and the states are written
next to the weights. k of the k-NN score is chosen on ID validation + OOD validation boxes
when both are given, never on a test split.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from torch.nn import functional as F
from tqdm import tqdm

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..cli import check_writable_dir
from ..data.availability import check_dataset_files
from ..evaluation.ood_metrics import auroc, fpr_at_tpr
from ..modeling.regularizers.margin_classifiers import LinearClassifier
from ..modeling.ood_scores import (
    POST_HOC_STATE_FILE,
    BoxFitData,
    pool_box_layers,
    save_post_hoc_state,
)
from ..modeling.ood_scores.knn import nearest_similarities, similarity_to_distance
from .checkpoint import check_checkpoint_matches_model, check_weights_file
from .feature_extraction import box_head_features, build_annotated_test_loader, ground_truth_box_features

__all__ = [
    "KNN_K_CANDIDATES",
    "MAHALANOBIS_STATISTICS_FILE",
    "choose_knn_k",
    "extract_box_fit_data",
    "fit_mahalanobis",
    "fit_post_hoc_scores",
]

logger = logging.getLogger(__name__)

# The values of k tried on the validation boxes (capped at the bank size).
KNN_K_CANDIDATES = (1, 5, 10, 20, 50, 100, 200)
# The file fit_mahalanobis writes next to the weights.
MAHALANOBIS_STATISTICS_FILE = "mahalanobis_stats.pth"


def _load_trained_model(cfg, weights):
    """The detector of ``cfg`` with ``weights`` loaded (checked to fit it), in eval mode."""
    model = build_model(cfg)
    check_checkpoint_matches_model(weights, model)
    DetectionCheckpointer(model).load(weights)
    return model.eval()


def _fgsm_images(model, images, gt_boxes, gt_classes, epsilon: float):
    """One FGSM step of ``epsilon`` input pixels against the class loss of the given boxes.

    The loss is the cross-entropy of the box predictor's logits (background included) of
    the ground-truth boxes against their classes: the perturbation makes the detector less
    sure of the objects it knows.
    """
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        features = box_head_features(model, model.backbone(inputs), gt_boxes)
        loss = F.cross_entropy(model.roi_heads.box_predictor.cls_score(features), gt_classes)
        (gradient,) = torch.autograd.grad(loss, inputs)
    # The inputs are normalised by pixel_std: a step of epsilon pixels is epsilon / std here.
    return (inputs + (epsilon / model.pixel_std) * gradient.sign()).detach()


@torch.no_grad()
def extract_box_fit_data(model, data_loader, fgsm_epsilon: float = 0.0, description: str = "boxes") -> BoxFitData:
    """Everything the post-hoc scores fit on, for the ground-truth boxes of a dataset.

    Args:
        model (GeneralizedRCNN): the detector, in eval mode, with a VOS box predictor.
        data_loader: yields lists of dataset dicts with ``image`` and ``instances``, e.g.
            :func:`~vos_det.engine.feature_extraction.build_annotated_test_loader`.
        fgsm_epsilon: > 0: also pool the boxes from FGSM-perturbed images (SAFE).
        description: label of the progress bar.

    Returns:
        BoxFitData: CPU tensors; ``layer_features`` holds every backbone output.
    """
    predictor = model.roi_heads.box_predictor
    strides = {name: shape.stride for name, shape in model.backbone.output_shape().items()}
    layer_names = sorted(strides)
    features, labels, layers, perturbed = [], [], [], []
    for inputs in tqdm(data_loader, desc=description, unit="img"):
        images = model.preprocess_image(inputs)
        gt_boxes = [x["instances"].gt_boxes.to(images.tensor.device) for x in inputs]
        gt_classes = torch.cat([x["instances"].gt_classes for x in inputs]).to(images.tensor.device)
        feature_maps = model.backbone(images.tensor)
        features.append(box_head_features(model, feature_maps, gt_boxes).float().cpu())
        labels.append(gt_classes.cpu())
        box_tensors = [b.tensor for b in gt_boxes]
        layers.append({k: v.cpu() for k, v in pool_box_layers(feature_maps, strides, layer_names, box_tensors).items()})
        if fgsm_epsilon > 0 and len(gt_classes):
            adversarial = _fgsm_images(model, images.tensor, gt_boxes, gt_classes, fgsm_epsilon)
            adversarial_maps = model.backbone(adversarial)
            perturbed.append(
                {k: v.cpu() for k, v in pool_box_layers(adversarial_maps, strides, layer_names, box_tensors).items()}
            )
    if not features:
        raise ValueError(f"{description}: the data loader yielded no images")
    features = torch.cat(features)
    with torch.no_grad():
        logits = predictor.foreground_logits(features.to(predictor.cls_score.weight.device)).float().cpu()
    weight = getattr(predictor.cls_score, "weight", None)
    bias = getattr(predictor.cls_score, "bias", None)
    # Only the plain linear layer is affine (the margin classifiers normalise their input).
    linear = type(predictor.cls_score) in (torch.nn.Linear, LinearClassifier)
    return BoxFitData(
        features=features,
        logits=logits,
        labels=torch.cat(labels),
        num_classes=predictor.num_classes,
        classifier_weight=weight[: predictor.num_classes].detach().cpu() if linear else None,
        classifier_bias=bias[: predictor.num_classes].detach().cpu() if linear and bias is not None else None,
        layer_features={name: torch.cat([part[name] for part in layers]) for name in layer_names},
        perturbed_layer_features=(
            {name: torch.cat([part[name] for part in perturbed]) for name in layer_names} if perturbed else None
        ),
        logits_of=lambda x: predictor.foreground_logits(x.to(predictor.cls_score.weight.device)).cpu(),
    )


def _concat(parts: List[BoxFitData]) -> BoxFitData:
    """One BoxFitData of several datasets' (same model)."""
    def cat_layers(dicts):
        return None if any(d is None for d in dicts) else {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}

    first = parts[0]
    return BoxFitData(
        features=torch.cat([p.features for p in parts]),
        logits=torch.cat([p.logits for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        num_classes=first.num_classes,
        classifier_weight=first.classifier_weight,
        classifier_bias=first.classifier_bias,
        layer_features=cat_layers([p.layer_features for p in parts]),
        perturbed_layer_features=cat_layers([p.perturbed_layer_features for p in parts]),
        logits_of=first.logits_of,
    )


def choose_knn_k(train_features, id_features, ood_features, candidates: Sequence[int] = KNN_K_CANDIDATES):
    """The k of the k-NN score with the lowest FPR95 (ties: highest AUROC, then smallest k)
    of ID vs OOD validation boxes, the bank being the training boxes.

    Args:
        train_features (Tensor): (M, D) training box features.
        id_features, ood_features (Tensor): (N_id, D), (N_ood, D) validation box features.
        candidates: the values of k tried (those above M are skipped).

    Returns:
        tuple[int, dict]: k, and per k tried {"fpr95", "auroc"}.
    """
    bank = F.normalize(train_features.float(), dim=1)
    tried = [k for k in candidates if k <= bank.shape[0]]
    if not tried:
        raise ValueError(f"no k of {list(candidates)} fits a bank of {bank.shape[0]} training boxes")
    # The similarities to the bank once, with the largest k: column k - 1 of its sorted
    # top-k is the k-th neighbour's for every smaller k.
    columns = [k - 1 for k in tried]
    distances = [
        similarity_to_distance(nearest_similarities(F.normalize(queries.float(), dim=1), bank, max(tried))[:, columns])
        .cpu()
        .numpy()
        for queries in (id_features, ood_features)
    ]
    results = {}
    for i, k in enumerate(tried):
        id_scores, ood_scores = distances[0][:, i], distances[1][:, i]
        results[k] = {"fpr95": fpr_at_tpr(id_scores, ood_scores), "auroc": auroc(id_scores, ood_scores)}
    best = min(results, key=lambda k: (results[k]["fpr95"], -results[k]["auroc"], k))
    return best, results


def fit_post_hoc_scores(
    cfg,
    weights: str,
    output: Optional[str] = None,
    datasets: Optional[Sequence[str]] = None,
    val_id: Optional[str] = None,
    val_ood: Optional[str] = None,
    scores: Optional[Sequence[str]] = None,
    add_classes: Sequence[tuple] = (),
) -> str:
    """Fit every post-hoc score that needs it for a trained detector and save the states.

    Args:
        cfg: the model's config (frozen or not; MODEL.VOS.POST_HOC.* are read).
        weights: the trained weights (.pth).
        output: the state file; default ``post_hoc_scores.pth`` next to the weights.
        datasets: ID datasets to fit on; default ``cfg.DATASETS.TRAIN``.
        val_id, val_ood: ID and OOD validation datasets (e.g. digits_det_val,
            digits_det_ood_val) on which k of the k-NN score is chosen; without both, k is
            MODEL.VOS.POST_HOC.KNN.K or the paper's 50.
        scores: names of the scores to fit; default all that need fitting.
        add_classes: (name, dataset) pairs: classes added to mahalanobis_multilayer from
            all boxes of the dataset, without retraining.

    Returns:
        str: the state file; set ``MODEL.VOS.POST_HOC.STATE`` to it.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.VOS.POST_HOC.STATE = ""
    model = _load_trained_model(cfg, weights)
    scorers = model.roi_heads.box_predictor.post_hoc.scores
    names = list(scores) if scores else [name for name, s in scorers.items() if s.needs_fit]
    unknown = sorted(set(names) - set(scorers))
    if unknown:
        raise ValueError(f"unknown post-hoc scores {unknown}; known: {list(scorers)}")
    fit_datasets = list(datasets or cfg.DATASETS.TRAIN)
    if val_id in fit_datasets:
        raise ValueError(
            f"the k-NN validation set {val_id!r} is also fitted on (the bank): its boxes would be "
            "their own nearest neighbours; choose k on a held-out ID set"
        )
    epsilon = cfg.MODEL.VOS.POST_HOC.SAFE.FGSM_EPSILON if "safe" in names else 0.0

    def extract(name, fgsm=0.0):
        return extract_box_fit_data(model, build_annotated_test_loader(cfg, name), fgsm, description=name)

    data = _concat([extract(name, epsilon) for name in fit_datasets])
    logger.info("fitting %s on %d training boxes", names, len(data.labels))
    info: Dict = {"weights": os.path.abspath(weights), "num_boxes": int(len(data.labels))}
    for name in names:
        if name == "knn" and val_id and val_ood:
            k, tried = choose_knn_k(data.features, extract(val_id).features, extract(val_ood).features)
            scorers[name].fit(data, k=k, k_source=f"lowest FPR95 on {val_id} vs {val_ood}")
            info["knn_validation"] = {str(key): value for key, value in tried.items()}
        else:
            scorers[name].fit(data)
        logger.info("fitted %s: %s", name, scorers[name].fitted_config)
    for class_name, dataset in add_classes:
        new = extract(dataset)
        index = scorers["mahalanobis_multilayer"].add_class(new.features, new.layer_features)
        info.setdefault("added_classes", []).append([class_name, dataset, index])
    output = output or os.path.join(os.path.dirname(os.path.abspath(weights)), POST_HOC_STATE_FILE)
    predictor = model.roi_heads.box_predictor
    save_post_hoc_state(
        dict(scorers.items()), output, int(data.features.shape[1]), predictor.num_classes, **info
    )
    return output


def fit_mahalanobis(
    cfg,
    weights: str,
    output: Optional[str] = None,
    datasets: Optional[Sequence[str]] = None,
    add_classes: Sequence[tuple] = (),
) -> str:
    """Fit the class Gaussians (shared covariance) of the penultimate box features and save them.

    Every ground-truth box of the datasets is pooled through the trained box head; the class
    means, the shared covariance and the priors are written for
    ``MODEL.VOS.MAHALANOBIS_STATS``.

    Args:
        cfg: the model's config (MODEL.WEIGHTS is not read: ``weights`` is).
        weights: the trained weights (.pth).
        output: the statistics file; default ``mahalanobis_stats.pth`` next to the weights.
        datasets: ID datasets to fit on; default ``cfg.DATASETS.TRAIN``.
        add_classes: (name, dataset) pairs: classes added from all boxes of the dataset,
            without retraining (means, covariance and priors updated as a refit would).

    Returns:
        str: the statistics file.
    """
    check_weights_file(weights, "--weights")
    fit_datasets = list(datasets or cfg.DATASETS.TRAIN)
    check_dataset_files(fit_datasets + [name for _, name in add_classes])
    output = output or os.path.join(os.path.dirname(weights), MAHALANOBIS_STATISTICS_FILE)
    check_writable_dir(os.path.dirname(os.path.abspath(output)), "folder of the statistics file")
    model = _load_trained_model(cfg, weights)
    discriminant = model.roi_heads.box_predictor.mahalanobis

    def features_of(name):
        return ground_truth_box_features(model, build_annotated_test_loader(cfg, name), description=name)

    features, labels = zip(*(features_of(name) for name in fit_datasets))
    discriminant.fit(torch.cat(features), torch.cat(labels), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    logger.info("fitted %d class Gaussians on %d boxes", discriminant.num_classes, int(discriminant.counts.sum()))
    for class_name, dataset_name in add_classes:
        new_features, _ = features_of(dataset_name)
        index = discriminant.add_class(new_features)
        logger.info("added class %r as index %d from %d boxes of %s", class_name, index, len(new_features), dataset_name)
    discriminant.save_statistics(output)
    return output
