"""Human-readable tables of OOD evaluation results."""
from tabulate import tabulate

__all__ = ["format_ood_table"]

_COLUMNS = ("FPR95", "AUROC", "AUPR-In", "AUPR-Out", "num_id", "num_ood")


def format_ood_table(ood_results):
    """A table with one row per (ID set, OOD set, score).

    Args:
        ood_results (dict): ``{id_set: {ood_set: {score_name: metrics}}}`` where metrics is
            the dict of :func:`vos_det.evaluation.ood_metrics.ood_metrics`.

    Returns:
        str: the table (FPR95 and AUROC/AUPR in percent).
    """
    rows = []
    for id_name, per_ood in ood_results.items():
        for ood_name, per_score in per_ood.items():
            for score_name, metrics in per_score.items():
                values = [int(metrics[c]) if c.startswith("num_") else metrics[c] for c in _COLUMNS]
                rows.append([id_name, ood_name, score_name] + values)
    headers = ["ID set", "OOD set", "score"] + [c.replace("num_", "#") for c in _COLUMNS]
    return tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="pipe")
