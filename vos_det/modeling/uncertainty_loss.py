"""The uncertainty loss of VOS (eq. 5): logistic regression on the weighted energy."""
import torch
from torch.nn import functional as F

from .energy import weighted_logsumexp

__all__ = ["ID_LABEL", "energy_logistic_loss"]

# Label of in-distribution inputs for the uncertainty classifier (outliers are 0).
ID_LABEL = 1


def energy_logistic_loss(id_logits, outlier_logits, class_weights, uncertainty_classifier, storage):
    """Cross-entropy of the logistic regression on -E: ID inputs (label 1) vs outliers (0).

    Also logs the mean weighted energies of both sides and the class weights to ``storage``.

    Args:
        id_logits (Tensor): (N, K) foreground logits of ID features.
        outlier_logits (Tensor): (M, K) foreground logits of the virtual outliers.
        class_weights (Tensor): (K,) non-negative energy weights w.
        uncertainty_classifier (nn.Module): maps (N + M, 1) values of -E to 2 logits.
        storage (EventStorage): where the energies and weights are logged.

    Returns:
        Tensor: the scalar, unweighted loss.
    """
    negative_energies = torch.cat(
        [weighted_logsumexp(id_logits, class_weights), weighted_logsumexp(outlier_logits, class_weights)]
    ).float()
    num_id = id_logits.shape[0]
    labels = torch.full_like(negative_energies, 1 - ID_LABEL, dtype=torch.long)
    labels[:num_id] = ID_LABEL
    classifier_logits = uncertainty_classifier(negative_energies[:, None])
    storage.put_scalar("vos/id_energy", -negative_energies[:num_id].mean().item())
    storage.put_scalar("vos/outlier_energy", -negative_energies[num_id:].mean().item())
    storage.put_scalars(
        **{f"vos/energy_weight_{k}": w for k, w in enumerate(class_weights.detach().tolist())},
        smoothing_hint=False,
    )
    return F.cross_entropy(classifier_logits, labels)
