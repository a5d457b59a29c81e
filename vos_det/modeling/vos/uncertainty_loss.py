"""The uncertainty loss of VOS (eq. 5): a classifier of the weighted energy, ID vs outliers."""
import torch
from torch.nn import functional as F

from ..ood_scores.energy import weighted_logsumexp
from .diagnostics import log_uncertainty_diagnostics, uncertainty_diagnostic_scalars

__all__ = ["ID_LABEL", "energy_logistic_loss"]

# Label of in-distribution inputs for the uncertainty classifier (outliers are 0).
ID_LABEL = 1


def energy_logistic_loss(id_logits, outlier_logits, class_weights, uncertainty_classifier, storage,
                         balanced: bool = False, scalars=None):
    """Cross-entropy of the uncertainty head on -E: ID inputs (label 1) vs outliers (0).

    For the "mlp" head (two logits (0, z), see :mod:`.uncertainty_heads`) this is the binary
    cross-entropy with logits of z, the released main-MLP branch's loss.

    Also logs the diagnostics of the step to ``storage``
    (:func:`~vos_det.modeling.vos.diagnostics.log_uncertainty_diagnostics`: mean energies
    and classifier accuracy of both sides, loss over prior entropy, energy weights).

    Args:
        id_logits (Tensor): (N, K) foreground logits of ID features.
        outlier_logits (Tensor): (M, K) foreground logits of the virtual outliers.
        class_weights (Tensor): (K,) non-negative energy weights w.
        uncertainty_classifier (nn.Module): maps (N + M, 1) values of -E to 2 logits
            (outlier, ID).
        storage (EventStorage): where the diagnostics are logged.
        balanced (bool): False (the paper): the mean cross-entropy over all N + M samples;
            True: the mean over the ID samples and the mean over the outliers, averaged,
            so both sides weigh one half whatever N and M.
        scalars (dict, optional): when given, the diagnostics are added to it (as 0-dim
            tensors, for the caller to log with its own in one transfer,
            :func:`~vos_det.modeling.vos.diagnostics.put_scalars_at_once`) instead of
            being logged to ``storage`` here.

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
    if balanced:
        per_sample = F.cross_entropy(classifier_logits, labels, reduction="none")
        loss = 0.5 * (per_sample[:num_id].mean() + per_sample[num_id:].mean())
    else:
        loss = F.cross_entropy(classifier_logits, labels)
    if scalars is None:
        log_uncertainty_diagnostics(
            storage, negative_energies, classifier_logits, num_id, loss, class_weights, balanced, ID_LABEL
        )
    else:
        scalars.update(
            uncertainty_diagnostic_scalars(
                negative_energies, classifier_logits, num_id, loss, class_weights, balanced, ID_LABEL
            )
        )
    return loss
