"""Diagnostics of the VOS uncertainty head: what it has learned, as numbers.

The uncertainty loss of VOS (eq. 5) can sit at the entropy of its class prior (a handful
of outliers against hundreds of ID boxes per step) without separating anything. The
quantities here tell a researcher, during training and from a checkpoint, whether it does:

* the mean weighted energies of the ID features and of the virtual outliers, and the
  uncertainty classifier's accuracy on each;
* the loss relative to the entropy of the prior it is trained with (the loss of the best
  constant predictor): 1 = nothing learned, 0 = perfect separation;
* how far out the outliers lie: their Mahalanobis radius under the fitted class Gaussians,
  relative to sqrt(D), the typical radius of a D-dimensional Gaussian sample (and the same
  for the ID features of the step, the reference);
* the norm and spread of the energy weights w;
* offline (tools/vos_diagnostics.py): the AUROC of the weighted energy with the trained w
  against the distribution of AUROCs over random w drawn as at initialisation.
"""
import math

import numpy as np
import torch

from ...metrics.ood_metrics import auroc
from ..ood_scores.energy import weighted_energy

__all__ = [
    "prior_entropy",
    "put_scalars_at_once",
    "scalars_to_host",
    "uncertainty_diagnostic_scalars",
    "log_uncertainty_diagnostics",
    "mahalanobis_radius_ratio",
    "random_energy_weight_aurocs",
]


def prior_entropy(num_id: int, num_outliers: int, balanced: bool = False) -> float:
    """Entropy (nats) of the label prior the uncertainty loss is trained with.

    The loss of the best constant predictor: -p log p - (1 - p) log(1 - p) with p the
    fraction of ID samples; log 2 for the class-balanced loss, whose effective prior is 1/2.

    Args:
        num_id: ID samples of the step.
        num_outliers: virtual outliers of the step.
        balanced: whether the loss weights both sides equally.

    Returns:
        float: the entropy; 0 when one side is empty.
    """
    if num_id == 0 or num_outliers == 0:
        return 0.0
    if balanced:
        return math.log(2.0)
    p = num_id / (num_id + num_outliers)
    return -p * math.log(p) - (1.0 - p) * math.log(1.0 - p)


def scalars_to_host(scalars):
    """Python floats of scalars, with one device-to-host transfer for all of them.

    Args:
        scalars (dict[str, Tensor or float]): name -> 0-dim tensor (on any one device) or
            Python number.

    Returns:
        dict[str, float]: name -> value, in the order of ``scalars``.
    """
    names = [name for name, value in scalars.items() if isinstance(value, torch.Tensor)]
    values = dict(scalars)
    if names:
        stacked = torch.stack([scalars[name].detach().double().reshape(()) for name in names])
        values.update(zip(names, stacked.tolist()))
    return {name: float(value) for name, value in values.items()}


def put_scalars_at_once(storage, scalars):
    """Put scalars (:func:`scalars_to_host`) into an EventStorage, ``smoothing_hint=False``."""
    values = scalars_to_host(scalars)
    if values:
        storage.put_scalars(**values, smoothing_hint=False)


@torch.no_grad()
def uncertainty_diagnostic_scalars(negative_energies, classifier_logits, num_id, loss, class_weights,
                                   balanced=False, id_label=1):
    """The scalars of :func:`log_uncertainty_diagnostics`, as 0-dim tensors left on their
    device (and Python numbers), without reading anything back to the host.

    Returns:
        dict[str, Tensor or float]: name -> value.
    """
    energies = -negative_energies.float()
    predicted_id = classifier_logits.argmax(dim=1) == id_label
    num_outliers = energies.shape[0] - num_id
    entropy = prior_entropy(num_id, num_outliers, balanced)
    weights = class_weights.detach().float()
    scalars = {
        "vos/energy_weight_norm": weights.norm(),
        "vos/energy_weight_std": weights.std(unbiased=False),
        **{f"vos/energy_weight_{k}": w for k, w in enumerate(weights.unbind())},
    }
    if num_id:
        scalars["vos/id_energy"] = energies[:num_id].mean()
        scalars["vos/id_accuracy"] = predicted_id[:num_id].float().mean()
    if num_outliers:
        scalars["vos/outlier_energy"] = energies[num_id:].mean()
        scalars["vos/outlier_accuracy"] = (~predicted_id[num_id:]).float().mean()
    if entropy > 0:
        scalars["vos/loss_over_prior_entropy"] = loss.detach().double() / entropy
    return scalars


@torch.no_grad()
def log_uncertainty_diagnostics(storage, negative_energies, classifier_logits, num_id, loss, class_weights,
                                balanced=False, id_label=1):
    """Log the scalars of one uncertainty-loss step to an EventStorage.

    Logged (each a scalar of ``storage``, hence console, metrics.json and TensorBoard):
    ``vos/id_energy``, ``vos/outlier_energy`` (mean weighted energies), ``vos/id_accuracy``,
    ``vos/outlier_accuracy`` (fraction of each side the uncertainty classifier puts on
    its own side), ``vos/loss_over_prior_entropy`` (the unweighted loss, loss_vos /
    LOSS_WEIGHT, over :func:`prior_entropy`), ``vos/energy_weight_norm`` (||w||_2),
    ``vos/energy_weight_std`` (population standard deviation of w over the classes) and
    ``vos/energy_weight_<k>``. One device-to-host transfer for all of them.

    Args:
        storage (EventStorage): where the scalars go.
        negative_energies (Tensor): (N + M,) -E of the N ID samples then the M outliers.
        classifier_logits (Tensor): (N + M, 2) logits of the uncertainty classifier.
        num_id (int): N.
        loss (Tensor): the scalar unweighted loss of the step.
        class_weights (Tensor): (K,) the energy weights w.
        balanced (bool): whether the loss is class-balanced (changes the prior entropy).
        id_label (int): the classifier's ID class index.
    """
    put_scalars_at_once(
        storage,
        uncertainty_diagnostic_scalars(
            negative_energies, classifier_logits, num_id, loss, class_weights, balanced, id_label
        ),
    )


@torch.no_grad()
def mahalanobis_radius_ratio(points, means, scale, dtype=torch.float64):
    """Mahalanobis distance of each point to its nearest class mean, over sqrt(D).

    Under the fitted Gaussian N(mu_k, Sigma), a sample's squared radius is chi-square(D):
    its radius is about sqrt(D), so 1 is the typical ID radius of a Gaussian and the
    least likely of n draws lies at sqrt(chi2.isf(1/n, D) / D) (1.25 for D = 128 and
    n = 10^4). The nearest mean is the one a point is most likely to belong to.

    Args:
        points (Tensor): (M, D) points.
        means (Tensor): (K, D) class means.
        scale (Tensor): (D, D) lower-triangular L with L L^T = Sigma.
        dtype: of the triangular solves. float32 serves the per-step log (a mean of ratios
            near 1, to 3-4 digits: the solve's relative error is about cond(L) * 6e-8, and
            cond(L) <= sqrt(largest eigenvalue / COVARIANCE_EPS)); float64 the offline
            diagnostics. GPUs other than data-centre ones run float64 at 1/32 the speed.

    Returns:
        Tensor: (M,) ratios in ``dtype``.
    """
    dim = means.shape[1]
    scale = scale.to(dtype)
    whitened_points = torch.linalg.solve_triangular(scale, points.to(dtype).T, upper=False).T
    whitened_means = torch.linalg.solve_triangular(scale, means.to(dtype).T, upper=False).T
    return torch.cdist(whitened_points, whitened_means).min(dim=1).values / math.sqrt(dim)


def random_energy_weight_aurocs(id_logits, ood_logits, num_draws: int, seed: int = 0):
    """AUROC of the weighted energy for ``num_draws`` random energy weights.

    The control of the trained weights: each draw is w ~ U[0, 1)^K, the law of VOS's
    initialisation of theta_w (w = relu(theta_w) = theta_w there).

    Args:
        id_logits (Tensor): (N, K) foreground logits of ID boxes.
        ood_logits (Tensor): (M, K) foreground logits of OOD boxes.
        num_draws (int): number of random weight vectors.
        seed (int): seed of the draws.

    Returns:
        np.ndarray: (num_draws,) AUROCs in [0, 1] (OOD = larger energy).
    """
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(num_draws, id_logits.shape[1], generator=generator, dtype=torch.float64)
    id_logits, ood_logits = id_logits.detach().double().cpu(), ood_logits.detach().double().cpu()
    return np.array(
        [auroc(weighted_energy(id_logits, w).numpy(), weighted_energy(ood_logits, w).numpy()) for w in weights]
    )
