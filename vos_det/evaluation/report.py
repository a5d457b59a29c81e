"""Human-readable tables and JSON files of OOD evaluation results."""
import json
import math

from tabulate import tabulate

__all__ = [
    "format_classification_table",
    "format_detection_table",
    "format_ood_report",
    "format_ood_table",
    "write_json",
]

# How the report names the rule that kept the samples of an ID set, by unit.
_SELECTION_NAMES = {"boxes": "box selection", "images": "sample selection"}
# (metrics key, column header) of the OOD table; FPR95 and AUROC/AUPR are percentages.
_COLUMNS = (
    ("FPR95", "FPR95"),
    ("AUROC", "AUROC"),
    ("AUPR-In", "AUPR-In"),
    ("AUPR-Out", "AUPR-Out"),
    ("FPR95-OOD-positive", "FPR95 (OOD pos.)"),
    ("num_id", "#ID"),
    ("num_ood", "#OOD"),
)


def format_ood_table(ood_results, convention=None):
    """A table with one row per (ID set, OOD set, score).

    Args:
        ood_results (dict): ``{id_set: {ood_set: {score_name: metrics}}}`` where metrics is
            the dict of :func:`vos_det.metrics.ood_metrics.ood_metrics`.
        convention (str, optional): a line stating the FPR95 convention, printed under the
            table.

    Returns:
        str: the table (FPR95 and AUROC/AUPR in percent).
    """
    rows = []
    for id_name, per_ood in ood_results.items():
        for ood_name, per_score in per_ood.items():
            for score_name, metrics in per_score.items():
                values = [
                    int(metrics[key]) if key.startswith("num_") else metrics.get(key, math.nan)
                    for key, _ in _COLUMNS
                ]
                rows.append([id_name, ood_name, score_name] + values)
    headers = ["ID set", "OOD set", "score"] + [header for _, header in _COLUMNS]
    table = tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="pipe")
    return table if convention is None else f"{table}\n{convention}"


def format_detection_table(detection_results):
    """One row per ID set: COCO-style AP / AP50 / AP75 ("bbox") and VOC AP ("voc").

    Args:
        detection_results (dict): ``{id_set: {"bbox": {...}, "voc": {...}}}``.

    Returns:
        str: the table, or "" if there is nothing to show.
    """
    columns = [("bbox", "AP", "AP"), ("bbox", "AP50", "AP50"), ("bbox", "AP75", "AP75")]
    columns += [("voc", "AP", "VOC AP"), ("voc", "AP50", "VOC AP50"), ("voc", "AP75", "VOC AP75")]
    present = [
        c for c in columns if any(c[1] in r.get(c[0], {}) for r in detection_results.values())
    ]
    if not present:
        return ""
    rows = [
        [name] + [r.get(task, {}).get(key, math.nan) for task, key, _ in present]
        for name, r in detection_results.items()
    ]
    headers = ["ID set"] + [
        ("COCO-style " if task == "bbox" and key == "AP" else "") + header
        for task, key, header in present
    ]
    return tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="pipe")


def format_classification_table(results):
    """One row per set: accuracy (ID sets), share of images flagged OOD, number of images.

    Args:
        results (dict): ``{id_set: {"classification": {...}}, "ood_sets": {ood_set: {...}}}``
            (the figures of :class:`vos_det.classification.ClassificationOODEvaluator`).

    Returns:
        str: the table, or "" if there is nothing to show.
    """
    rows = [
        [name, value["classification"].get("accuracy", math.nan),
         value["classification"].get("is_ood_rate", math.nan), int(value["classification"]["num_images"])]
        for name, value in results.items()
        if isinstance(value, dict) and "classification" in value
    ]
    if not rows:
        return ""
    rows += [
        [name, math.nan, metrics.get("is_ood_rate", math.nan), int(metrics["num_images"])]
        for name, metrics in results.get("ood_sets", {}).items()
    ]
    return tabulate(rows, headers=["set", "accuracy", "is_ood", "#images"], floatfmt=".2f", tablefmt="pipe")


def _selection_lines(report):
    """How the samples were kept: each ID set's box selection and counts, or the image rule."""
    lines = []
    if report.get("sample_selection"):
        lines.append(f"Sample selection: {report['sample_selection']}")
    for id_name, selection in report.get("box_selection", {}).items():
        lines.append(f"Box selection for ID set {id_name}: {selection['description']}")
        per_class = [
            f"{name} {info['threshold']:.3f} " + (f"(F1 {info['f1']:.3f})" if "f1" in info else "(no ground truth)")
            if "threshold" in info
            else f"{name}: {info['skipped']}"
            for name, info in selection.get("per_class", {}).items()
        ]
        if per_class:
            lines.append("  per-class optimal-F1 thresholds: " + ", ".join(per_class))
        counts = report.get("boxes", {}).get(id_name, {})
        if counts:
            lines.append(
                "  boxes kept: "
                + "; ".join(
                    f"{name} {c['selected']} of {c['detections']} detections ({c['images']} images)"
                    for name, c in counts.items()
                )
            )
    return lines


def _calibration_lines(calibration, unit):
    """The calibration and the share of each set's kept samples it accepts / flags."""
    lines = ["", "Calibration: " + calibration["description"]]
    for name, fraction in calibration.get("id_kept", {}).items():
        lines.append(f"  {100 * fraction:.2f}% of the kept {unit} of ID set {name} are accepted as ID (is_ood False)")
    selection = _SELECTION_NAMES.get(unit, "selection")
    for id_name, per_ood in calibration.get("ood_flagged", {}).items():
        for ood_name, fraction in per_ood.items():
            lines.append(
                f"  {100 * fraction:.2f}% of the kept {unit} of {ood_name} are flagged OOD "
                f"(is_ood True; {selection} of {id_name})"
            )
    lines += [f"  written: {path}" for path in calibration.get("files", {}).values()]
    return lines


def format_ood_report(report, unit="boxes"):
    """The text of an OOD evaluation report (see :mod:`vos_det.evaluation.ood_summary`).

    Args:
        report (dict): with ``results`` and ``convention`` and optionally ``protocol``,
            ``box_selection``, ``boxes``, ``sample_selection``, ``calibration``, ``skipped``,
            ``plots``, ``pictures``; each section is printed when its entries are present.
        unit (str): what a sample is: "boxes" (detection) or "images" (classification).

    Returns:
        str
    """
    results = report["results"]
    lines = []
    if report.get("protocol"):
        lines += [f"OOD protocol: {report['protocol']['description']}", ""]
    detection = format_detection_table({k: v for k, v in results.items() if k in report.get("box_selection", {})})
    if detection:
        lines += [
            "ID detection quality (COCO-style AP = mean over IoU .50:.95; VOC AP from the VOC "
            "devkit rule):",
            detection,
            "",
        ]
    classification = format_classification_table(results)
    if classification:
        lines += ["Classification (percent; is_ood: images flagged OOD at the model's threshold):", classification, ""]
    lines += _selection_lines(report)
    if results.get("ood"):
        protocol = f", protocol {report['protocol']['name']}" if report.get("protocol") else ""
        lines += ["", f"OOD detection over the kept {unit} (percent{protocol}):"]
        lines.append(format_ood_table(results["ood"], "Convention: " + report["convention"]))
    lines += [f"Not computed: {skipped}" for skipped in report.get("skipped", [])]
    if report.get("calibration"):
        lines += _calibration_lines(report["calibration"], unit)
    plots = report.get("plots", []) + report.get("pictures", [])
    if plots:
        lines += ["", "Plots:"] + [f"  {path}" for path in plots]
    return "\n".join(lines)


def _json_safe(value):
    """Replace NaN / inf floats (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(data, path):
    """Write ``data`` as strict JSON (non-finite floats become null)."""
    with open(path, "w") as f:
        json.dump(_json_safe(data), f, indent=2)
