"""Fit the post-hoc OOD scores of a trained detector on its ID training boxes.

    from vos_det.engine.post_hoc_fitting import fit_mahalanobis, fit_post_hoc_scores
    path = fit_post_hoc_scores(cfg, "output/x/model_final.pth")   # -> output/x/post_hoc_scores.pth
    path = fit_mahalanobis(cfg, "output/x/model_final.pth")       # -> output/x/mahalanobis_stats.pth

Every ground-truth box of the training set is pooled through the detector: its penultimate
box feature and foreground logits, and its ROI-pooled features of every backbone output.
Each score that needs fitting (:mod:`vos_det.modeling.ood_scores`) is fitted on these, SAFE
on its own data (:mod:`.safe_fitting`: the boxes the detector predicts, clean and after
FGSM), and the states are written next to the weights, with a content hash of those weights
(checked when the states are used). k of the k-NN score, SAFE's FGSM step and the parts,
scaling and rule of the fused score (:mod:`.fused_fitting`: on the detections there) are
chosen on ID validation + OOD validation boxes when both are given, never on a test split
(unless explicitly allowed, which the state records; without them the fused score is not
fitted). ``update=True`` refits some scores of an existing state file and keeps the others.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..data.availability import check_dataset_files
from ..data.catalog import is_test_split
from ..errors import UserError
from ..metrics.ood_metrics import auroc, fpr_at_tpr
from ..modeling.regularizers.margin_classifiers import LinearClassifier
from ..modeling.ood_scores import (
    POST_HOC_STATE_FILE,
    BoxFitData,
    pool_box_layers,
    save_post_hoc_state,
)
from ..modeling.ood_scores.knn import nearest_similarities, similarity_to_distance
from ..modeling.ood_scores.safe import matching_layers
from ..modeling.ood_scores.state_file import read_post_hoc_info
from ..utils.file_io import check_writable_dir
from .feature_extraction import box_head_features, build_annotated_test_loader, ground_truth_box_features
from .fused_fitting import NoValidationDetections, fit_fused_score
from .safe_fitting import fit_safe
from .trained_model import WEIGHTS_HASH_KEY, check_weights_file, load_trained_model, weights_fingerprint

__all__ = [
    "KNN_K_CANDIDATES",
    "MAHALANOBIS_STATISTICS_FILE",
    "check_validation_sets",
    "choose_knn_k",
    "extract_box_fit_data",
    "fit_mahalanobis",
    "fit_post_hoc_scores",
]

logger = logging.getLogger(__name__)

# The values of k tried on the validation boxes (capped at the bank size).
KNN_K_CANDIDATES = (1, 5, 10, 20, 50, 100, 200)
# The k-NN scores and the BoxFitData field each searches: the box features h, the embedding z.
_KNN_VECTORS = {"knn": "features", "knn_embedding": "embeddings"}
# The file fit_mahalanobis writes next to the weights.
MAHALANOBIS_STATISTICS_FILE = "mahalanobis_stats.pth"


@torch.no_grad()
def extract_box_fit_data(model, data_loader, description: str = "boxes") -> BoxFitData:
    """Everything the post-hoc scores fit on, for the ground-truth boxes of a dataset.

    Args:
        model (GeneralizedRCNN): the detector, in eval mode, with a VOS box predictor.
        data_loader: yields lists of dataset dicts with ``image`` and ``instances``, e.g.
            :func:`~vos_det.engine.feature_extraction.build_annotated_test_loader`.
        description: label of the progress bar.

    Returns:
        BoxFitData: CPU tensors; ``layer_features`` holds every backbone output.
    """
    predictor = model.roi_heads.box_predictor
    strides = {name: shape.stride for name, shape in model.backbone.output_shape().items()}
    layer_names = sorted(strides)
    features, labels, layers = [], [], []
    for inputs in tqdm(data_loader, desc=description, unit="img"):
        images = model.preprocess_image(inputs)
        gt_boxes = [x["instances"].gt_boxes.to(images.tensor.device) for x in inputs]
        gt_classes = torch.cat([x["instances"].gt_classes for x in inputs]).to(images.tensor.device)
        feature_maps = model.backbone(images.tensor)
        features.append(box_head_features(model, feature_maps, gt_boxes).float().cpu())
        labels.append(gt_classes.cpu())
        box_tensors = [b.tensor for b in gt_boxes]
        layers.append({k: v.cpu() for k, v in pool_box_layers(feature_maps, strides, layer_names, box_tensors).items()})
    if not features:
        raise ValueError(f"{description}: the data loader yielded no images")
    features = torch.cat(features)
    with torch.no_grad():
        on_device = features.to(predictor.cls_score.weight.device)
        logits = predictor.foreground_logits(on_device).float().cpu()
        embedding_of = predictor.embedding_of()
        embeddings = embedding_of(on_device).float().cpu() if embedding_of is not None else None
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
        logits_of=lambda x: predictor.foreground_logits(x.to(predictor.cls_score.weight.device)).cpu(),
        embeddings=embeddings,
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
        logits_of=first.logits_of,
        embeddings=None if first.embeddings is None else torch.cat([p.embeddings for p in parts]),
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


def check_validation_sets(val_id: Optional[str], val_ood: Optional[str], allow_test_split: bool = False) -> List[str]:
    """Refuse a test split (metadata ``test_split``) as a k-NN validation set.

    k chosen on a test split is tuned on the data its results are reported on.

    Args:
        val_id, val_ood: the --val-id / --val-ood datasets (None: not given).
        allow_test_split: accept test splits anyway (--allow-test-split).

    Returns:
        list[str]: the test splits accepted (empty unless ``allow_test_split``).

    Raises:
        UserError: naming the option, the dataset and what to do.
        KeyError: a dataset that is not registered.
    """
    test_splits = []
    for option, name in (("--val-id", val_id), ("--val-ood", val_ood)):
        if not name or not is_test_split(name):
            continue
        if not allow_test_split:
            raise UserError(
                f"{option} {name} is a test split (test_split in its metadata): k of k-NN chosen on it "
                "would be tuned on the data it is judged on; give a validation split (digits-det: "
                "--val-id digits_det_val --val-ood digits_det_ood_val), or --allow-test-split to do it "
                "anyway (recorded in the state file)"
            )
        test_splits.append(name)
    return test_splits


def _checkpoint_fingerprint(weights: str) -> Optional[str]:
    """:func:`weights_fingerprint` of a ``.pth`` checkpoint (None for other formats, which
    check_checkpoint_matches_model does not read either)."""
    if not weights.endswith(".pth"):
        return None
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    return weights_fingerprint(checkpoint.get("model", checkpoint))


def _scores_to_fit(model, scores: Optional[Sequence[str]]) -> List[str]:
    """The post-hoc scores of ``model`` to fit: ``scores`` (each checked: known, and fittable
    on this model), or by default every score that needs fitting and that the model can
    have (SAFE without matching shortcut layers and the embedding scores without an
    embedding loss are left out, SAFE with a warning)."""
    scorers = model.roi_heads.box_predictor.post_hoc.scores
    names = list(scores) if scores else [name for name, s in scorers.items() if s.needs_fit]
    unknown = sorted(set(names) - set(scorers))
    if unknown:
        raise ValueError(f"unknown post-hoc scores {unknown}; known: {list(scorers)}")
    if not scores and "safe" in names and not matching_layers(model, scorers["safe"].layer_patterns):
        logger.warning(
            "SAFE not fitted: no module of the %s backbone matches MODEL.OOD.POST_HOC.SAFE.LAYER_PATTERNS "
            "(it reads residual projection shortcuts)", type(model.backbone).__name__,
        )
        names.remove("safe")
    if model.roi_heads.box_predictor.embedding_of() is None:
        # Scores of an embedding the model does not have: nothing to fit them on.
        without_input = [name for name in names if scorers[name].reads_embedding]
        if scores and without_input:
            raise ValueError(
                f"the OOD scores {without_input} search the embedding of an embedding loss "
                "(MODEL.EMBEDDING.LOSSES: SIRENLoss or CIDERLoss); this model has none"
            )
        names = [name for name in names if name not in without_input]
    return names


def fit_post_hoc_scores(
    cfg,
    weights: str,
    output: Optional[str] = None,
    datasets: Optional[Sequence[str]] = None,
    val_id: Optional[str] = None,
    val_ood: Optional[str] = None,
    scores: Optional[Sequence[str]] = None,
    add_classes: Sequence[tuple] = (),
    allow_test_split: bool = False,
    update: bool = False,
) -> str:
    """Fit every post-hoc score that needs it for a trained detector and save the states.

    Args:
        cfg: the model's config (frozen or not; MODEL.OOD.POST_HOC.* are read).
        weights: the trained weights (.pth).
        output: the state file; default ``post_hoc_scores.pth`` next to the weights.
        datasets: ID datasets to fit on; default ``cfg.DATASETS.TRAIN``.
        val_id, val_ood: ID and OOD validation datasets (e.g. digits_det_val,
            digits_det_ood_val) on which k of the k-NN score, SAFE's FGSM step and the fused
            score's candidate are chosen; without both, k is MODEL.OOD.POST_HOC.KNN.K or the
            paper's 50, the step MODEL.OOD.POST_HOC.SAFE.FGSM_EPSILON, and the fused score is
            not fitted (an error if ``scores`` names it).
        scores: names of the scores to fit; default all that need fitting.
        add_classes: (name, dataset) pairs: classes added to mahalanobis_multilayer from
            all boxes of the dataset, without retraining.
        allow_test_split: accept test splits as ``val_id`` / ``val_ood`` (refused
            otherwise; the state's info then lists them under ``test_splits_allowed``).
        update: start from the existing state file ``output`` of these weights: only
            ``scores`` (required) are fitted again, the others keep their states, and the
            file's info is kept, its entries of the refitted scores replaced.

    Returns:
        str: the state file; set ``MODEL.OOD.POST_HOC.STATE`` to it. Its info records the
        weights and their :func:`~vos_det.engine.trained_model.weights_fingerprint`.
    """
    test_splits = check_validation_sets(val_id, val_ood, allow_test_split)
    output = output or os.path.join(os.path.dirname(os.path.abspath(weights)), POST_HOC_STATE_FILE)
    if update and not scores:
        raise ValueError("updating a post-hoc state file refits the scores named: give them (--scores)")
    if update and not os.path.isfile(output):
        raise FileNotFoundError(f"no post-hoc state file to update: {output}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    # Updating: the model is built with the file's states (checked against the weights).
    cfg.MODEL.OOD.POST_HOC.STATE = output if update else ""
    model = load_trained_model(cfg, weights)
    scorers = model.roi_heads.box_predictor.post_hoc.scores
    names = _scores_to_fit(model, scores)
    fit_datasets = list(datasets or cfg.DATASETS.TRAIN)
    if val_id in fit_datasets:
        raise ValueError(
            f"the k-NN validation set {val_id!r} is also fitted on (the bank): its boxes would be "
            "their own nearest neighbours; choose k on a held-out ID set"
        )

    extracted = {}

    def extract(name):
        # The validation sets serve both k-NN scores (knn, knn_embedding): pooled once.
        if name not in extracted:
            loader = build_annotated_test_loader(cfg, name)
            extracted[name] = extract_box_fit_data(model, loader, description=name)
        return extracted[name]

    data = _concat([extract(name) for name in fit_datasets])
    logger.info("fitting %s on %d training boxes", names, len(data.labels))
    info: Dict = read_post_hoc_info(output) if update else {}
    info.update({
        "weights": os.path.abspath(weights),
        WEIGHTS_HASH_KEY: _checkpoint_fingerprint(weights),
        "num_boxes": int(len(data.labels)),
    })
    if test_splits:
        info["test_splits_allowed"] = test_splits
    for name in names:
        if name == "fused":
            continue  # fitted last, on the outputs of its fitted parts
        if name in _KNN_VECTORS and val_id and val_ood:
            field = _KNN_VECTORS[name]
            k, tried = choose_knn_k(*(getattr(part, field) for part in (data, extract(val_id), extract(val_ood))))
            scorers[name].fit(data, k=k, k_source=f"lowest FPR95 on {val_id} vs {val_ood}")
            info[f"{name}_validation"] = {str(key): value for key, value in tried.items()}
        elif name == "safe":
            info.update(fit_safe(cfg, model, fit_datasets, val_id, val_ood, scorers[name]))
        else:
            scorers[name].fit(data)
        logger.info("fitted %s: %s", name, scorers[name].fitted_config)
    if "fused" in names:
        if val_id and val_ood:
            try:
                info["fused_validation"] = fit_fused_score(cfg, model, scorers, data, val_id, val_ood)
            except NoValidationDetections as error:
                if scores:
                    raise
                logger.warning("fused OOD score not fitted: %s", error)
        elif scores:
            raise ValueError("the fused score is chosen on ID and OOD validation boxes: give val_id and val_ood")
        else:
            logger.warning("fused OOD score not fitted: it needs ID and OOD validation sets (--val-id, --val-ood)")
    for class_name, dataset in add_classes:
        new = extract(dataset)
        index = scorers["mahalanobis_multilayer"].add_class(new.features, new.layer_features)
        info.setdefault("added_classes", []).append([class_name, dataset, index])
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
    ``MODEL.OOD.MAHALANOBIS_STATS``.

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
    model = load_trained_model(cfg, weights)
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
