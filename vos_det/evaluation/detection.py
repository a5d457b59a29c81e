"""ID detection quality: COCO-style AP / AP50 / AP75 and, for VOC-format sets, the VOC AP."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator, print_csv_format
from detectron2.utils import comm

__all__ = ["VOCDetectionEvaluator", "build_detection_evaluator", "log_detection_results"]

logger = logging.getLogger(__name__)


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """detectron2's PascalVOCDetectionEvaluator reporting under ``"voc"`` instead of ``"bbox"``.

    Its ``AP`` is the mean over IoU .50:.95 of the VOC AP (area under the interpolated
    precision-recall curve, or 11-point for VOC2007), ``AP50`` the VOC AP50; it can then
    sit next to COCOEvaluator's ``"bbox"`` (COCO-style AP) in one DatasetEvaluators.
    """

    def evaluate(self):
        results = super().evaluate()
        return None if results is None else {"voc": results["bbox"]}


def build_detection_evaluator(dataset_name: str, output_dir: str):
    """The detection evaluator of an ID set, chosen by its metadata's ``evaluator_type``.

    * ``"pascal_voc"``: COCOEvaluator (COCO-style AP, AP50, AP75, APs/m/l under ``"bbox"``;
      the dataset is converted to COCO json in ``output_dir`` once per process) and
      :class:`VOCDetectionEvaluator` (under ``"voc"``);
    * ``"coco"``: COCOEvaluator.

    COCOEvaluator falls back to pycocotools' COCOeval when detectron2's fast ``_C`` version
    is not built.

    Args:
        dataset_name: a registered dataset.
        output_dir: folder for the COCO json conversion and the COCO predictions.

    Returns:
        DatasetEvaluator
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in ("pascal_voc", "coco"):
        raise ValueError(
            f"no evaluator for dataset {dataset_name!r}: its metadata evaluator_type is "
            f"{evaluator_type!r}; expected 'pascal_voc' or 'coco'"
        )
    os.makedirs(output_dir, exist_ok=True)
    # allow_cached_coco=False: a regenerated dataset must not be scored against a stale json.
    coco = COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_dir, allow_cached_coco=False)
    if evaluator_type == "coco":
        return coco
    return DatasetEvaluators([coco, VOCDetectionEvaluator(dataset_name)])


def log_detection_results(results, dataset_names):
    """Log, from the main process, each ID set's detection metrics as detectron2's CSV lines.

    Args:
        results (dict): ``{id_set: {task: {metric: value}}}`` (an OOD protocol's results).
        dataset_names (list[str]): the ID sets, in order; those without results are left out.
    """
    if not comm.is_main_process():
        return
    for name in dataset_names:
        if results.get(name):
            logger.info("Detection results on %s:", name)
            print_csv_format(results[name])
