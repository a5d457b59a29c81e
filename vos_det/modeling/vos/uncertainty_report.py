"""Offline diagnostics of a trained VOS model's uncertainty head (tools/vos_diagnostics.py).

From a checkpoint: the weighted energies of ID boxes, OOD boxes, the queued ID training
features and virtual outliers drawn from the checkpoint's queues with the model's own
synthesis rule (the paper's Figure 1 view), the uncertainty classifier's accuracy on each,
and the random-energy-weights control: the AUROC (ID vs OOD boxes) of the weighted energy
with the trained weights against its distribution over weights drawn as at initialisation.
"""
import copy

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...metrics.ood_metrics import auroc
from ..ood_scores.energy import weighted_energy
from .diagnostics import mahalanobis_radius_ratio, random_energy_weight_aurocs
from .npos import npos_outliers
from .synthesis import sample_virtual_outliers
from .uncertainty_loss import ID_LABEL

__all__ = [
    "detection_logits",
    "classification_logits",
    "virtual_outlier_logits",
    "uncertainty_report",
    "SYNTHESIS_RULES",
    "synthesis_rule_energies",
    "plot_energy_histograms",
    "plot_random_weight_control",
]


@torch.no_grad()
def detection_logits(model, data_loader, score_threshold: float):
    """Foreground logits of the detections whose class score is >= ``score_threshold``.

    Runs the detector's stages as ``GeneralizedRCNN.inference`` does (backbone, proposals,
    box head, box predictor) and keeps, through the proposal indices the predictor's
    ``inference`` returns, the logits of each output detection.

    Args:
        model (GeneralizedRCNN): a detector with the VOS box predictor, in eval mode.
        data_loader: a detectron2 test loader.
        score_threshold (float): class-score threshold of the kept detections.

    Returns:
        Tensor: (N, K) float32 logits on the CPU.
    """
    heads = model.roi_heads
    predictor = heads.box_predictor
    logits = [torch.zeros(0, predictor.num_classes)]
    for inputs in data_loader:
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals])
        predictions = predictor(heads.box_head(pooled))
        instances, proposal_indices = predictor.inference(predictions, proposals)
        offset = 0
        for image_instances, indices, image_proposals in zip(instances, proposal_indices, proposals):
            rows = indices[image_instances.scores >= score_threshold] + offset
            logits.append(predictions[0][rows, : predictor.num_classes].float().cpu())
            offset += len(image_proposals)
    return torch.cat(logits)


@torch.no_grad()
def classification_logits(model, data_loader):
    """Class logits of every image (a :class:`VOSImageClassifier` in eval mode): (N, K)."""
    logits = [torch.zeros(0, model.predictor.num_classes)]
    for inputs in data_loader:
        logits.append(model.predictor(model.image_features(model.preprocess_image(inputs))).float().cpu())
    return torch.cat(logits)


@torch.no_grad()
def virtual_outlier_logits(predictor, num_steps: int):
    """Logits of the virtual outliers of ``num_steps`` synthesis steps from the stored queues.

    Each step is :meth:`VirtualOutlierMixin.synthesize_outliers` at iteration 0, 1, ...
    (the model's own rule and options, its per-iteration seeds).

    Args:
        predictor: the box predictor or classification head (VOS enabled, queues full).
        num_steps (int): synthesis steps.

    Returns:
        tuple[Tensor, Tensor, Tensor]: outlier logits (M, K), ID queue logits (K * N, K)
        and the outliers' mean Mahalanobis radius over sqrt(D) (and that of the queued ID
        features), as a (2,) tensor.
    """
    if not predictor.feature_queues.all_full():
        raise ValueError("the checkpoint's VOS queues are not full: was it trained past the start of synthesis?")
    outliers = [predictor.synthesize_outliers(step) for step in range(num_steps)]
    outliers = torch.cat([o for o in outliers if o is not None])
    queued = predictor.feature_queues.features.flatten(0, 1)
    means, scale = predictor.last_class_gaussian
    radii = torch.stack(
        [mahalanobis_radius_ratio(outliers, means, scale).mean(), mahalanobis_radius_ratio(queued, means, scale).mean()]
    )
    cls_score = predictor.cls_score
    dtype = next(cls_score.parameters()).dtype
    logits = cls_score(outliers.to(dtype))[:, : predictor.num_classes].float()
    queue_logits = cls_score(queued.to(dtype))[:, : predictor.num_classes].float()
    return logits.cpu(), queue_logits.cpu(), radii.cpu()


# Outlier rules compared on one checkpoint's queues: name -> keyword arguments of
# sample_virtual_outliers (Gaussian) or {"npos": noise scale}.
SYNTHESIS_RULES = {
    "paper (least likely of 10^4)": {},
    "OUTLIER_TAIL 1e-30": {"tail": 1e-30},
    "OUTLIER_TAIL 1e-100": {"tail": 1e-100},
    "OUTLIER_RADIUS_SCALE 2": {"radius_scale": 2.0},
    "OUTLIER_RADIUS_SCALE 4": {"radius_scale": 4.0},
    "npos (noise 0.5)": {"npos": 0.5},
}


@torch.no_grad()
def synthesis_rule_energies(predictor, num_outliers: int = 1000, seed: int = 0):
    """Weighted energy and radius of outliers drawn by each of :data:`SYNTHESIS_RULES`.

    All from the same queues and the same trained classifier, so only the rule differs:
    it shows whether a rule's outliers lie at higher energy than the ID features (what
    an energy-based OOD score needs) or lower. Gaussian rules use the queues' Gaussians
    (``predictor.last_class_gaussian``, fitted by a synthesis step); NPOS uses the
    predictor's k and boundary size.

    Args:
        predictor: VOS box predictor or classification head with full queues, after at
            least one :meth:`synthesize_outliers` call.
        num_outliers (int): outliers per rule (per class for the Gaussian rules: rounded
            down to a multiple of K).
        seed (int): seed of the draws.

    Returns:
        dict[str, dict]: rule (and "queued ID features") -> mean and std of the weighted
        energy, the fraction above the ID features' median energy, the mean radius ratio.
    """
    means, scale = predictor.last_class_gaussian
    queued = predictor.feature_queues.features.flatten(0, 1)
    weights = predictor.energy_class_weights().detach().double().cpu()
    dtype = next(predictor.cls_score.parameters()).dtype

    def energies(points):
        logits = predictor.cls_score(points.to(dtype))[:, : predictor.num_classes]
        return weighted_energy(logits.double().cpu(), weights)

    id_energies = energies(queued)
    median = id_energies.median()
    table = {}
    for name, points in [("queued ID features", queued)] + [
        (name, npos_outliers(queued, num_outliers, k=predictor.npos_k, num_boundary=predictor.npos_boundary,
                             num_candidates=10 * num_outliers, noise_scale=rule["npos"],
                             generator=torch.Generator(device=queued.device).manual_seed(seed))
         if "npos" in rule else
         sample_virtual_outliers(means, scale, 10000, max(1, num_outliers // predictor.num_classes), seed=seed,
                                 **rule)[0])
        for name, rule in SYNTHESIS_RULES.items()
    ]:
        values = energies(points)
        table[name] = {
            "energy_mean": float(values.mean()), "energy_std": float(values.std()),
            "fraction_above_id_median": float((values > median).double().mean()),
            "radius_ratio": float(mahalanobis_radius_ratio(points, means, scale).mean()),
        }
    return table


def _summary(values):
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "num": int(len(values))}


@torch.no_grad()
def uncertainty_report(predictor, logits_by_set, *, id_set, ood_set, num_draws: int, seed: int = 0):
    """The numbers of the diagnostics, as a JSON-ready dict.

    Args:
        predictor: the VOS box predictor or classification head.
        logits_by_set (dict[str, Tensor]): (N_s, K) logits of each set of inputs, e.g. the
            ID boxes, the OOD boxes, the queued ID features, the virtual outliers.
        id_set, ood_set (str): the keys of the ID and OOD evaluation sets.
        num_draws (int): random energy-weight draws of the control.
        seed (int): seed of the draws.

    Returns:
        dict: per set, the weighted energy (mean, std) and the fraction the uncertainty
        classifier calls ID; the trained AUROC (ID vs OOD, weighted energy, %), the random
        AUROCs (mean, std, min, max, %) and the fraction of random draws the trained weights
        beat; the energy weights.
    """
    weights = predictor.energy_class_weights().detach().float().cpu()
    # A CPU copy: the live model's head stays on its device.
    classifier = copy.deepcopy(predictor.uncertainty_classifier).cpu()
    logits_by_set = {name: logits.detach().cpu() for name, logits in logits_by_set.items()}
    sets = {}
    energies = {}
    for name, logits in logits_by_set.items():
        energies[name] = weighted_energy(logits.double(), weights.double()).float()
        p_id = torch.softmax(classifier(-energies[name][:, None]), dim=1)[:, ID_LABEL]
        sets[name] = {"weighted_energy": _summary(energies[name].numpy()),
                      "fraction_called_id": float((p_id > 0.5).float().mean()) if len(p_id) else float("nan")}
    trained = auroc(energies[id_set].numpy(), energies[ood_set].numpy())
    random = random_energy_weight_aurocs(logits_by_set[id_set], logits_by_set[ood_set], num_draws, seed)
    return {
        "sets": sets,
        "auroc_trained_weights": 100.0 * trained,
        "auroc_random_weights": {
            "mean": 100.0 * float(random.mean()), "std": 100.0 * float(random.std(ddof=1)) if len(random) > 1 else 0.0,
            "min": 100.0 * float(random.min()), "max": 100.0 * float(random.max()), "num_draws": int(num_draws),
        },
        "fraction_random_beaten": float((random < trained).mean()),
        "random_aurocs": (100.0 * random).tolist(),
        "energy_weights": weights.tolist(),
    }


def _finish(figure, axes, path, *, xlabel, ylabel, title):
    """Label the one axes of ``figure``, lay it out and write it as PNG to ``path``."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def plot_energy_histograms(energies_by_set, path, title=""):
    """Overlaid density histograms of the weighted energy of each set (PNG)."""
    figure = Figure(figsize=(7.5, 4.2))
    axes = figure.add_subplot(1, 1, 1)
    finite = np.concatenate([np.asarray(v)[np.isfinite(v)] for v in energies_by_set.values()])
    bins = np.linspace(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1, 61)
    for name, values in energies_by_set.items():
        axes.hist(np.asarray(values), bins=bins, density=True, histtype="step", linewidth=1.5,
                  label=f"{name} (n={len(values)}, mean {np.mean(values):.2f})")
    return _finish(
        figure, axes, path, xlabel="weighted energy E (eq. 6); larger = more OOD", ylabel="density",
        title=title or "ID vs virtual-outlier energies",
    )


def plot_random_weight_control(random_aurocs, trained_auroc, path, title=""):
    """Histogram of the AUROC over random energy weights, the trained weights' marked (PNG)."""
    figure = Figure(figsize=(6.5, 4.0))
    axes = figure.add_subplot(1, 1, 1)
    axes.hist(random_aurocs, bins=30, color="tab:gray", label=f"random w ~ U[0,1)^K (n={len(random_aurocs)})")
    beaten = float(np.mean(np.asarray(random_aurocs) < trained_auroc))
    axes.axvline(trained_auroc, color="tab:red", linewidth=2,
                 label=f"trained w: {trained_auroc:.2f} (beats {100 * beaten:.1f}% of random)")
    return _finish(
        figure, axes, path, xlabel="AUROC (%) of the weighted energy, ID vs OOD", ylabel="draws",
        title=title or "random-energy-weights control",
    )
