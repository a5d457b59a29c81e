"""Registers the built-in classification datasets: digits-cls (ID digits 0-4, OOD digits 5-9).

Registered names: ``digits_cls_train``, ``digits_cls_val``, ``digits_cls_test`` (ID,
``ood_role`` "id") and ``digits_cls_ood`` (OOD, ``ood_role`` "ood", ``id_dataset``
``digits_cls_train``), under the root given by ``DETECTRON2_DATASETS`` (default
``./datasets``). The images are generated on first use (a few seconds, no download) by
:func:`vos_det.classification.digits_cls.generate_digits_cls`.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .digits_cls import (
    DIGITS_CLS_ID_CLASSES,
    DIGITS_CLS_OOD_CLASSES,
    digits_cls_paths,
    generate_digits_cls,
)
from .image_folder import EVALUATOR_TYPE, load_image_folder

__all__ = ["register_all_digits_cls", "DIGITS_CLS_DATASETS"]

# Registered name -> (split folder, ood_role, classes).
DIGITS_CLS_DATASETS = {
    "digits_cls_train": ("train", "id", DIGITS_CLS_ID_CLASSES),
    "digits_cls_val": ("val", "id", DIGITS_CLS_ID_CLASSES),
    "digits_cls_test": ("test", "id", DIGITS_CLS_ID_CLASSES),
    "digits_cls_ood": ("ood", "ood", DIGITS_CLS_OOD_CLASSES),
}


def _load_digits_cls(root: str, split: str, class_names):
    generate_digits_cls(root)
    return load_image_folder(digits_cls_paths(root).split_dir(split), class_names)[0]


def register_all_digits_cls(root: str) -> None:
    """Register the digits-cls splits of ``<root>/digits_cls``; names already known are kept.

    Args:
        root: the datasets root.
    """
    paths = digits_cls_paths(root)
    for name, (split, role, class_names) in DIGITS_CLS_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(
            name, lambda split=split, class_names=class_names: _load_digits_cls(root, split, class_names)
        )
        metadata = {
            "thing_classes": list(class_names),
            "ood_role": role,
            "evaluator_type": EVALUATOR_TYPE,
            "image_root": os.path.abspath(paths.split_dir(split)),
        }
        if role == "ood":
            metadata["id_dataset"] = "digits_cls_train"
        MetadataCatalog.get(name).set(**metadata)


register_all_digits_cls(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
