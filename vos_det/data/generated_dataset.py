"""What the generated datasets (digits-det, digits-cls) share: the ``meta.json`` that marks a
complete dataset, and the options of their command lines."""
import argparse
import json
import os
from typing import Dict

__all__ = ["generator_argument_parser", "read_meta"]


def read_meta(meta_json: str) -> Dict:
    """Return the parameters of a complete dataset, or an empty dict if there is none."""
    if not os.path.isfile(meta_json):
        return {}
    with open(meta_json) as f:
        return json.load(f)


def generator_argument_parser(description: str, dataset_folder: str, default_image_size: int):
    """The options every generator takes: ``--root``, ``--seed``, ``--image-size``,
    ``--overwrite``; their names are those of the generator's keyword arguments.

    Args:
        description: the command's description.
        dataset_folder: the folder the dataset goes to under the root (e.g. "digits_det").
        default_image_size: the generator's default image side.

    Returns:
        argparse.ArgumentParser: to which a generator adds its own options.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help=f"datasets root; the dataset goes to <root>/{dataset_folder} (default: "
        "$DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=default_image_size)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if it exists")
    return parser
