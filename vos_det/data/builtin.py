"""Registers the built-in datasets of vos_det in detectron2's catalogs.

Like detectron2's own ``detectron2/data/datasets/builtin.py``, the datasets live under the root
given by the environment variable ``DETECTRON2_DATASETS`` (default ``./datasets``). There is
one ``register_all_*`` function per benchmark; registration is lazy, so the files need not
exist until a dataset is loaded.

Each dataset's metadata says its role in the OOD protocol: ``ood_role`` is ``"id"`` for the
in-distribution splits and ``"ood"`` for OOD test sets, which also name their ``id_dataset``
(the training set whose classes count as known); ``test_split`` is True for the test sets, ID
or OOD, on which nothing may be chosen (tools/fit_ood_scores.py refuses them for --val-id /
--val-ood).

Datasets (folder layout and sources in datasets/README.md):

- ``voc_2007_trainval``, ``voc_2012_trainval``, ``voc_2007_test`` (and the other VOC splits):
  registered by detectron2 itself; :func:`set_pascal_voc_roles` marks them ID and makes them
  drop unusable boxes on load (see :mod:`vos_det.data.box_checks`).
- ``coco_ood_val``, ``openimages_ood_val``: the OOD test sets of the VOC benchmark (COCO json).
- ``bdd100k_train``, ``bdd100k_val``: the ID sets of the BDD100k benchmark (COCO json, the 10
  detection classes of BDD100K in their official order).
- ``digits_det_{train,val,test}``, ``digits_det_ood``: the CPU benchmark made by digits_det;
  ``digits_det_far_ood`` (non-digit shapes, OOD), ``digits_det_shifted_test`` (digits 0-4 on
  new canvas styles, ID), ``digits_det_ood_val`` (OOD validation: for choosing
  hyperparameters, never a test split) and ``digits_det_far_ood_matched`` (the far-OOD
  shapes rendered like the digits, OOD).
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from .coco_json_registration import register_coco_json_dataset
from .digits_det import (
    DIGITS_DET_FAR_OOD_CLASSES,
    DIGITS_DET_ID_CLASSES,
    DIGITS_DET_OOD_CLASSES,
    DIGITS_DET_OOD_VAL_CLASSES,
    digits_det_paths,
)
from .pascal_voc import load_voc_dataset

__all__ = [
    "BDD100K_CLASSES",
    "register_all_bdd100k",
    "register_all_digits_det",
    "register_all_ood",
    "register_checked_pascal_voc",
    "set_pascal_voc_roles",
]

# PascalVOCDetectionEvaluator uses the VOC2007 11-point AP for year 2007 and the area under
# the precision-recall curve for any other year.
_VOC_AREA_METRIC_YEAR = 2012

# The PASCAL VOC splits detectron2's own builtin registers under the same datasets root.
_PASCAL_VOC_SPLITS = (
    "voc_2007_trainval",
    "voc_2007_train",
    "voc_2007_val",
    "voc_2007_test",
    "voc_2012_trainval",
    "voc_2012_train",
    "voc_2012_val",
)
# The training set whose classes the OOD sets of the VOC benchmark are OOD with respect to.
_VOC_ID_DATASET = "voc_2007_trainval"

# OOD test sets of the VOC benchmark: name -> (COCO json, image folder), under the root.
_OOD_SETS = {
    # COCO val2017 images with none of the 20 VOC classes (datasets/prepare_coco_ood.py).
    "coco_ood_val": (
        "coco/annotations/instances_val2017_ood_wrt_voc.json",
        "coco/val2017",
    ),
    # The OpenImages OOD subset, in the layout of the official VOS release.
    "openimages_ood_val": (
        "OpenImages/ood_classes_rm_overlap/COCO-Format/val_coco_format.json",
        "OpenImages/ood_classes_rm_overlap/images",
    ),
}

# The 10 classes of BDD100K detection, in the order of its category ids 1..10.
BDD100K_CLASSES = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "traffic light",
    "traffic sign",
)
# BDD100k ID sets: name -> (COCO json made by the bdd100k toolkit, image folder), under the root.
_BDD100K_SPLITS = {
    "bdd100k_train": ("bdd100k/labels/det_20/det_train_cocofmt.json", "bdd100k/images/100k/train"),
    "bdd100k_val": ("bdd100k/labels/det_20/det_val_cocofmt.json", "bdd100k/images/100k/val"),
}


# The digits-det splits that are test sets (``test_split`` in their metadata): results are
# reported on them, nothing is chosen on them. val and ood_val are for choosing.
_DIGITS_TEST_SPLITS = (
    "digits_det_test", "digits_det_shifted_test", "digits_det_ood", "digits_det_far_ood", "digits_det_far_ood_matched"
)


def _check_voc_boxes_on_load(name: str) -> None:
    """Make a registered PASCAL VOC dataset load through :func:`load_voc_dataset`.

    Its metadata (``dirname``, ``split``, ``thing_classes``, set by detectron2's
    ``register_pascal_voc``) is kept; only the loader changes, so that boxes no detector can
    learn from (swapped corners, empty, outside the image) are dropped with a warning that
    names their xml file instead of being flipped into valid boxes by the mapper.
    """
    metadata = MetadataCatalog.get(name)
    dirname, split, class_names = metadata.dirname, metadata.split, tuple(metadata.thing_classes)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_voc_dataset(dirname, split, class_names))


def register_checked_pascal_voc(name: str, dirname: str, split: str, year: int, class_names) -> None:
    """detectron2's ``register_pascal_voc`` whose loader drops unusable boxes with a warning.

    Args:
        name: the dataset name.
        dirname: the VOC-layout folder (Annotations, ImageSets/Main, JPEGImages).
        split: the image set ("train", "test", ...).
        year: 2007 for the 11-point VOC AP, any other year for the area AP.
        class_names: the class names, in the order of the contiguous ids.
    """
    register_pascal_voc(name, dirname, split, year, class_names=class_names)
    _check_voc_boxes_on_load(name)


def set_pascal_voc_roles() -> None:
    """Mark detectron2's PASCAL VOC splits (``voc_2007_trainval`` etc.) as ID (``ood_role``).

    detectron2 registers them at import under ``$DETECTRON2_DATASETS``; they are reused, not
    registered again, but load through :func:`load_voc_dataset` (unusable boxes dropped with
    a warning). Names missing from the catalog are skipped.
    """
    registered = set(DatasetCatalog.list())
    for name in _PASCAL_VOC_SPLITS:
        if name in registered:
            metadata = MetadataCatalog.get(name)
            metadata.set(ood_role="id", test_split=metadata.split == "test")
            _check_voc_boxes_on_load(name)


def _register_coco_json_sets(root: str, datasets, **options) -> None:
    """Register COCO-json datasets, name -> (json, image folder) under ``root``, with the
    options of :func:`register_coco_json_dataset`; names already in the catalog are skipped."""
    for name, (json_file, image_root) in datasets.items():
        if name in DatasetCatalog.list():
            continue
        register_coco_json_dataset(name, os.path.join(root, json_file), os.path.join(root, image_root), **options)


def register_all_ood(root: str) -> None:
    """Register the OOD test sets of the VOC benchmark under ``root`` (lazily).

    ``coco_ood_val`` and ``openimages_ood_val``: COCO jsons, ``ood_role`` "ood", ``id_dataset``
    "voc_2007_trainval". Names already in the catalog are left untouched.

    Args:
        root: the datasets root.
    """
    _register_coco_json_sets(root, _OOD_SETS, ood_role="ood", id_dataset=_VOC_ID_DATASET)
    for name in _OOD_SETS:
        MetadataCatalog.get(name).set(test_split=True)


def register_all_bdd100k(root: str) -> None:
    """Register ``bdd100k_train`` and ``bdd100k_val`` under ``root`` (lazily).

    COCO jsons as converted by the bdd100k toolkit; ``ood_role`` "id", ``thing_classes`` the
    10 detection classes in their official order (json categories are mapped by name), COCO
    evaluator. Names already in the catalog are left untouched.

    Args:
        root: the datasets root.
    """
    _register_coco_json_sets(root, _BDD100K_SPLITS, ood_role="id", thing_classes=BDD100K_CLASSES)
    # BDD100k's val split is the ID test set of the VOS paper's BDD benchmark.
    MetadataCatalog.get("bdd100k_val").set(test_split=True)


def register_all_digits_det(root: str) -> None:
    """Register the digits-det splits of ``<root>/digits_det`` (made by generate_digits_det).

    Registers ``digits_det_{train,val,test}`` and ``digits_det_shifted_test`` (ID, PASCAL
    VOC layout, VOC evaluator with the area AP) and ``digits_det_ood``,
    ``digits_det_far_ood``, ``digits_det_ood_val`` and ``digits_det_far_ood_matched`` (OOD,
    COCO json). Names already in the
    catalog are left untouched.

    Args:
        root: the datasets root.
    """
    paths = digits_det_paths(root)
    voc_splits = {split: paths.voc_dir for split in ("train", "val", "test")}
    voc_splits["shifted_test"] = paths.shifted_voc_dir
    for split, voc_dir in voc_splits.items():
        name = f"digits_det_{split}"
        if name in DatasetCatalog.list():
            continue
        register_checked_pascal_voc(name, voc_dir, split, _VOC_AREA_METRIC_YEAR, DIGITS_DET_ID_CLASSES)
        MetadataCatalog.get(name).set(
            evaluator_type="pascal_voc", ood_role="id", test_split=name in _DIGITS_TEST_SPLITS
        )

    ood_splits = {
        "digits_det_ood": (DIGITS_DET_OOD_CLASSES, paths.ood_json, paths.ood_image_dir),
        "digits_det_far_ood": (DIGITS_DET_FAR_OOD_CLASSES, paths.far_ood_json, paths.far_ood_image_dir),
        "digits_det_ood_val": (DIGITS_DET_OOD_VAL_CLASSES, paths.ood_val_json, paths.ood_val_image_dir),
        "digits_det_far_ood_matched": (
            DIGITS_DET_FAR_OOD_CLASSES, paths.far_ood_matched_json, paths.far_ood_matched_image_dir
        ),
    }
    for ood_name, (class_names, json_file, image_dir) in ood_splits.items():
        if ood_name in DatasetCatalog.list():
            continue
        register_coco_instances(
            ood_name,
            {
                "thing_classes": list(class_names),
                "ood_role": "ood",
                "id_dataset": "digits_det_train",
                "test_split": ood_name in _DIGITS_TEST_SPLITS,
            },
            json_file,
            image_dir,
        )


_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
set_pascal_voc_roles()
register_all_ood(_root)
register_all_bdd100k(_root)
register_all_digits_det(_root)
