#!/usr/bin/env python
"""Run a VOS detector on images and write detections with their OOD verdicts.

    python tools/predict.py --config digits_vos_tiny.yaml \\
        --weights output/digits_vos_tiny/model_final.pth \\
        --input datasets/digits_det/ood/images --output output/predictions --draw

``--input`` takes image files, folders and glob patterns (quote them). Options and ``KEY
VALUE`` config overrides may come in any order (an upper-case token such as
``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` starts an override, also after ``--input``). The output
folder is checked to be writable before any image runs; it gets ``predictions.json``
(COCO-results style, plus id_score, ood_score and is_ood per box; larger ood_score = more
OOD; ``category_id`` is the training set's own category id when its metadata has one (COCO
json sets), else the 0-based class index, which is always in ``class_index``) and, with
``--draw``, one PNG per image: ID boxes solid green with class and score, OOD boxes dashed red
with "OOD (class?) score". Unreadable files are reported, listed in the JSON under "errors",
and skipped.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, check_writable_dir, run_tool

import glob
import json
import logging
import os

from PIL import Image
from tqdm import tqdm

from vos_det.data.image_io import IMAGE_EXTENSIONS, read_image_file
from vos_det.engine import OODPredictor, instances_to_records
from vos_det.utils.file_io import atomic_open
from vos_det.utils.visualization import draw_ood_detections

logger = logging.getLogger("vos_det.predict")

PREDICTIONS_FILE = "predictions.json"


def find_images(inputs):
    """Expand files, folders (non-recursive, image extensions) and glob patterns, in order.

    Raises:
        FileNotFoundError: an input matches nothing, or no image was found at all.
    """
    found = []
    for spec in inputs:
        if os.path.isdir(spec):
            matches = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not matches:
                raise FileNotFoundError(f"--input folder {spec} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(spec):
            matches = [spec]
        else:
            matches = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"--input {spec!r} is no file or folder and matches no file")
        found.extend(matches)
    return found


def argument_parser():
    parser = ToolParser(description=__doc__)
    parser.add_argument("--weights", required=True, help="model checkpoint (.pth)")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--draw", action="store_true", help="also write one PNG per image with the boxes drawn")
    parser.add_argument(
        "--min-score", type=float, default=0.5, help="keep detections with class score >= this (default 0.5)"
    )
    parser.add_argument(
        "--ood-threshold",
        type=float,
        help="flag boxes with ood_score above this, instead of the checkpoint's calibrated threshold",
    )
    return parser


def main(args):
    images = find_images(args.input)
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.min_score)]
    if args.ood_threshold is not None:
        opts += ["MODEL.VOS.OOD_THRESHOLD", str(args.ood_threshold), "MODEL.VOS.USE_CALIBRATED_THRESHOLD", "False"]
    predictor = OODPredictor.from_config_file(args.config_file, args.weights, opts + args.opts)
    check_writable_dir(args.output, "--output folder")  # before any image runs
    detections, image_entries, errors = [], [], []
    for image_id, path in enumerate(tqdm(images, desc="predict", unit="img")):
        try:
            instances = predictor.predict_file(path)
        except ValueError as e:
            logger.warning("skipping %s", e)
            errors.append({"file_name": path, "error": str(e)})
            continue
        height, width = instances.image_size
        image_entries.append({"id": image_id, "file_name": path, "height": height, "width": width})
        detections.extend(
            instances_to_records(instances, image_id, path, predictor.class_names, predictor.category_ids)
        )
        if args.draw:
            image_rgb = read_image_file(path, format="RGB")
            drawn = draw_ood_detections(image_rgb, instances, predictor.class_names)
            stem = os.path.splitext(os.path.basename(path))[0]
            Image.fromarray(drawn).save(os.path.join(args.output, f"{image_id:06d}_{stem}.png"))
    report = {
        "config": args.config_file,
        "weights": args.weights,
        "ood_score": predictor.box_predictor.ood_score,
        "ood_threshold": predictor.ood_threshold,
        "convention": "ood_score: larger = more OOD; is_ood = ood_score > ood_threshold",
        "class_names": predictor.class_names,
        "category_ids": predictor.category_ids,
        "images": image_entries,
        "detections": detections,
        "errors": errors,
    }
    output_file = os.path.join(args.output, PREDICTIONS_FILE)
    with atomic_open(output_file, "w") as f:
        json.dump(report, f, indent=1)
    num_ood = sum(d["is_ood"] for d in detections)
    print(
        f"{len(image_entries)} images, {len(detections)} detections ({num_ood} OOD), "
        f"{len(errors)} unreadable -> {output_file}"
    )
    return report


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run()
