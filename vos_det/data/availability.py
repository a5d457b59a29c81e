"""Checks, before any work, that the files of the datasets a run names are where they should be."""
import difflib
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog import DATASETS_README
from .coco_json_registration import CLI_SPEC_FORMAT

__all__ = ["check_dataset_files", "load_datasets_now"]

# How to make a generated dataset that is missing, by the folder name under the root.
_GENERATE = {
    "digits_det": "python -m vos_det.data.digits_det --root {root}",
}


def _expected_paths(metadata):
    """The files and folders a registered dataset reads, from its metadata (VOC or COCO json)."""
    paths = []
    dirname = metadata.get("dirname", None)
    if dirname:
        split = metadata.get("split", None)
        paths += [os.path.join(dirname, "Annotations"), os.path.join(dirname, "JPEGImages")]
        if split:
            paths.append(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"))
    json_file = metadata.get("json_file", None)
    if json_file:
        paths += [json_file, metadata.get("image_root", None)]
    return [p for p in paths if p]


def _hint(path):
    root = os.getenv("DETECTRON2_DATASETS")
    where = f"DETECTRON2_DATASETS={root}" if root else "DETECTRON2_DATASETS is not set, so the root is ./datasets"
    for folder, command in _GENERATE.items():
        parts = os.path.normpath(path).split(os.sep)
        if folder in parts:
            generated_root = os.sep.join(parts[: parts.index(folder)]) or "."
            return f"{where}; generate it with `{command.format(root=generated_root)}`"
    return f"{where}; {DATASETS_README} gives the expected layout"


def check_dataset_files(dataset_names):
    """Raise if a registered dataset's files are not on disk, naming the expected path.

    Only datasets whose metadata names their files (PASCAL VOC ``dirname``, COCO json
    ``json_file`` / ``image_root``) are checked; generated-on-use sets are not.

    Args:
        dataset_names (Iterable[str]): registered dataset names ("" skipped).

    Raises:
        KeyError: a name that is not registered (with the registered ones).
        FileNotFoundError: the first missing path of a dataset, with the root in use and a
            pointer to datasets/README.md (or the command that generates it).
    """
    registered = set(DatasetCatalog.list())
    for name in dataset_names:
        if not name:
            continue
        if name not in registered:
            close = difflib.get_close_matches(name, sorted(registered), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise KeyError(
                f"dataset {name!r} is not registered{hint} (an OOD set on the command line may also be "
                f"{CLI_SPEC_FORMAT}; {DATASETS_README} lists the built-in ones)"
            )
        for path in _expected_paths(MetadataCatalog.get(name)):
            if not os.path.exists(path):
                raise FileNotFoundError(f"dataset {name}: {path} not found ({_hint(path)})")


def load_datasets_now(dataset_names):
    """Load the dataset dicts of ``dataset_names`` once, so that a broken annotation file
    fails before any inference (not after the ID sets have run). Returns their sizes."""
    check_dataset_files(dataset_names)
    return {name: len(DatasetCatalog.get(name)) for name in dataset_names if name}
