"""The OOD role of a registered dataset, and a check of its class names against a model's.

Every dataset vos_det registers (or marks, for detectron2's own VOC splits) holds in its
metadata an ``ood_role``: ``"id"`` for the in-distribution splits, whose ``thing_classes`` are
the classes the model is trained on, and ``"ood"`` for OOD test sets, which also name their
``id_dataset`` (the training set whose classes count as known). Test splits, ID or OOD, also
hold ``test_split=True``. The role is read from the metadata, never guessed from the dataset's
name.
"""
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "DATASETS_README",
    "DEFAULT_OOD_ROLE",
    "OOD_ROLES",
    "check_class_names",
    "get_ood_role",
    "is_test_split",
]

OOD_ROLES = ("id", "ood")
# The role of a dataset whose metadata has no ood_role.
DEFAULT_OOD_ROLE = "id"
# Where the expected folder layout of every dataset is described (named in error messages).
DATASETS_README = "datasets/README.md"


def get_ood_role(dataset_name: str) -> str:
    """The ``ood_role`` ("id" or "ood") in the metadata of a registered dataset.

    A dataset registered without one (e.g. by a user's own ``register_coco_instances``) is
    an ID set: :data:`DEFAULT_OOD_ROLE`.

    Raises:
        KeyError: the dataset is not registered.
        ValueError: its metadata has an ``ood_role`` that is not one of :data:`OOD_ROLES`.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"dataset {dataset_name!r} is not registered")
    role = MetadataCatalog.get(dataset_name).get("ood_role", DEFAULT_OOD_ROLE)
    if role not in OOD_ROLES:
        raise ValueError(
            f"dataset {dataset_name!r} has ood_role {role!r} in its metadata; expected one of "
            f"{OOD_ROLES}"
        )
    return role


def is_test_split(dataset_name: str) -> bool:
    """Whether a registered dataset is a test split: its metadata's ``test_split`` (set by
    :mod:`vos_det.data.builtin` for every ID and OOD test set), else detectron2's VOC
    ``split`` "test". Nothing may be chosen on a test split (thresholds, k, ...).

    Raises:
        KeyError: the dataset is not registered.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"dataset {dataset_name!r} is not registered")
    metadata = MetadataCatalog.get(dataset_name)
    return bool(metadata.get("test_split", metadata.get("split", None) == "test"))


def _class_differences(expected: List[str], actual: List[str]) -> List[str]:
    """Describe how the class list ``actual`` differs from ``expected`` (order matters)."""
    differences = []
    missing = [name for name in expected if name not in actual]
    extra = [name for name in actual if name not in expected]
    if missing:
        differences.append(f"model classes missing from the dataset: {missing}")
    if extra:
        differences.append(f"dataset classes the model does not have: {extra}")
    if len(expected) != len(actual):
        differences.append(f"{len(actual)} dataset classes for {len(expected)} model classes")
    if not differences:
        moved = [
            f"#{index}: dataset {a!r} vs model {e!r}"
            for index, (e, a) in enumerate(zip(expected, actual))
            if e != a
        ]
        differences.append(f"same classes in another order ({', '.join(moved)})")
    return differences


def check_class_names(dataset_name: str, expected_class_names: Sequence[str]) -> None:
    """Check that an ID dataset's ``thing_classes`` are the model's classes, in the same order.

    The contiguous category ids of the dataset index its ``thing_classes``, so they only mean
    the model's classes if both lists are equal. OOD sets (``ood_role`` "ood") may hold any
    classes, or none, and are not checked. A COCO-json dataset whose classes are read from
    its json is loaded once to learn them.

    Args:
        dataset_name: a registered dataset.
        expected_class_names: the model's classes, in the order of its class indices.

    Raises:
        KeyError: the dataset is not registered.
        ValueError: the class names differ; the message lists the differences and both lists.
    """
    if get_ood_role(dataset_name) == "ood":
        return
    metadata = MetadataCatalog.get(dataset_name)
    class_names = metadata.get("thing_classes", None)
    if class_names is None:
        DatasetCatalog.get(dataset_name)  # COCO-json loaders set thing_classes from the json
        class_names = metadata.get("thing_classes", None)
    if class_names is None:
        raise ValueError(
            f"dataset {dataset_name!r} has no thing_classes in its metadata: cannot check its "
            "classes against the model's"
        )
    expected, actual = [str(c) for c in expected_class_names], [str(c) for c in class_names]
    if expected == actual:
        return
    raise ValueError(
        f"the classes of dataset {dataset_name!r} do not match the model's: "
        + "; ".join(_class_differences(expected, actual))
        + f". Dataset: {actual}. Model: {expected}."
    )
