"""Registers the built-in datasets of vos_det in detectron2's catalogs.

Like detectron2's own ``detectron2/data/datasets/builtin.py``, the datasets live under the root
given by the environment variable ``DETECTRON2_DATASETS`` (default ``./datasets``). There is
one ``register_all_*`` function per benchmark; registration is lazy, so the files need not
exist until a dataset is loaded.

Each dataset's metadata says its role in the OOD protocol: ``ood_role`` is ``"id"`` for the
in-distribution splits and ``"ood"`` for OOD test sets, which also name their ``id_dataset``
(the training set whose classes count as known).
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from .digits_det import DIGITS_DET_ID_CLASSES, DIGITS_DET_OOD_CLASSES, digits_det_paths

__all__ = ["register_all_digits_det"]

# PascalVOCDetectionEvaluator uses the VOC2007 11-point AP for year 2007 and the area under
# the precision-recall curve for any other year.
_VOC_AREA_METRIC_YEAR = 2012


def register_all_digits_det(root: str) -> None:
    """Register the digits-det splits of ``<root>/digits_det`` (made by generate_digits_det).

    Registers ``digits_det_{train,val,test}`` (ID, PASCAL VOC layout, VOC evaluator with the
    area AP) and ``digits_det_ood`` (OOD, COCO json). Names already in the catalog are left
    untouched.

    Args:
        root: the datasets root.
    """
    paths = digits_det_paths(root)
    for split in ("train", "val", "test"):
        name = f"digits_det_{split}"
        if name in DatasetCatalog.list():
            continue
        register_pascal_voc(
            name, paths.voc_dir, split, _VOC_AREA_METRIC_YEAR, class_names=DIGITS_DET_ID_CLASSES
        )
        MetadataCatalog.get(name).set(evaluator_type="pascal_voc", ood_role="id")

    ood_name = "digits_det_ood"
    if ood_name not in DatasetCatalog.list():
        register_coco_instances(
            ood_name,
            {
                "thing_classes": list(DIGITS_DET_OOD_CLASSES),
                "ood_role": "ood",
                "id_dataset": "digits_det_train",
            },
            paths.ood_json,
            paths.ood_image_dir,
        )


register_all_digits_det(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
