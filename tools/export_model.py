#!/usr/bin/env python
"""Export a trained VOS detector to TorchScript, with the OOD verdicts in its outputs.

    python tools/export_model.py --config digits_vos_r18.yaml \\
        MODEL.WEIGHTS output/digits_vos_r18/model_final.pth --output output/digits_vos_r18/export

writes ``model.ts``: called on one (3, H, W) image in the model's input format (BGR for the
shipped configs, values 0-255, resized as at test time), it returns the tuple (boxes,
classes, scores, id_scores, ood_scores, is_ood), with the model's OOD threshold (the
calibrated one when the checkpoint holds it) baked in. Load it with ``torch.jit.load``;
neither detectron2 nor vos_det is needed. Without MODEL.WEIGHTS the tool refuses, unless
``--random-init`` asks for a randomly initialised model. The model is traced on the first test-set image
(or ``--images``), then the saved file is checked against the eager model on
``--num-check-images`` images: same detections, classes and is_ood, and the largest
absolute difference of boxes and scores is logged and written to ``export_info.json``.

Only TorchScript: ONNX needs the ``onnx`` package, whose current release needs numpy >= 2,
which detectron2 here does not allow (and torch's ONNX exporter also needs ``onnxscript``).
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, UserError, check_writable_dir, load_config, run_tool

import json
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from vos_det.data.mapper import ImageNamingDatasetMapper
from vos_det.engine import load_trained_model
from vos_det.engine.trained_model import check_weights_file
from vos_det.export import compare_detections, export_torchscript, load_exported, ood_detections

logger = logging.getLogger("vos_det.export")

EXPORTED_FILE = "model.ts"
INFO_FILE = "export_info.json"


def sample_images(cfg, files, count):
    """Up to ``count`` images mapped as at test time: (3, H, W) float tensors.

    Args:
        cfg (CfgNode): the config (input format, test-time resize, DATASETS.TEST).
        files (list[str]): image files; when empty, the first images of DATASETS.TEST[0].
        count (int): how many.
    """
    if files:
        dataset = [{"file_name": path} for path in files]
    elif cfg.DATASETS.TEST:
        dataset = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    else:
        raise UserError("no images to trace the model on: give --images FILE ... or set DATASETS.TEST")
    mapper = ImageNamingDatasetMapper(cfg, is_train=False)
    return [mapper(dict(record))["image"].float() for record in dataset[:count]]


def check_weights_choice(weights, random_init, output_dir):
    """Refuse to export without MODEL.WEIGHTS unless --random-init asks for random weights,
    and refuse both together.

    Args:
        weights (str): MODEL.WEIGHTS of the config.
        random_init (bool): whether --random-init was given.
        output_dir (str): the config's OUTPUT_DIR, where its training writes ``model_final.pth``
            (named in the error as the usual weights).

    Raises:
        UserError: naming MODEL.WEIGHTS and --random-init.
    """
    if not weights and not random_init:
        raise UserError(
            "MODEL.WEIGHTS is not set: give the trained weights (MODEL.WEIGHTS "
            f"{output_dir}/model_final.pth), or --random-init to export a randomly initialised model"
        )
    if weights and random_init:
        raise UserError(f"--random-init exports random weights, but MODEL.WEIGHTS is {weights}: give one of them")


def main(args):
    cfg = load_config(args.config_file, [*args.opts, "MODEL.DEVICE", args.device])
    check_weights_choice(cfg.MODEL.WEIGHTS, args.random_init, cfg.OUTPUT_DIR)
    check_weights_file(cfg.MODEL.WEIGHTS)
    check_writable_dir(args.output, "--output")
    setup_logger(name="vos_det")

    if cfg.MODEL.WEIGHTS:
        model = load_trained_model(cfg)
    else:
        logger.warning("--random-init: exporting a randomly initialised model")
        model = build_model(cfg).eval()
    try:
        images = sample_images(cfg, args.images, max(1, args.num_check_images))
    except ValueError as e:  # an unreadable image, named by the mapper
        raise UserError(str(e)) from e

    path = os.path.join(args.output, EXPORTED_FILE)
    dataset_names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
    class_names = MetadataCatalog.get(dataset_names[0]).get("thing_classes", None) if dataset_names else None
    try:
        metadata = export_torchscript(
            model,
            images[0],
            path,
            {
                "input": "one (3, H, W) float32 image, values 0-255, channels " + cfg.INPUT.FORMAT
                + f", resized so that its shorter side is {cfg.INPUT.MIN_SIZE_TEST} "
                f"(longer side at most {cfg.INPUT.MAX_SIZE_TEST})",
                "input_format": cfg.INPUT.FORMAT,
                "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
                "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
                "class_names": list(class_names) if class_names else None,
                "weights": cfg.MODEL.WEIGHTS,
            },
        )
    except TypeError as e:  # not a VOS detector
        raise UserError(f"{args.config_file}: {e}") from e
    logger.info("Exported to %s (OOD score %r, threshold %.6g)", path, metadata["ood_score"], metadata["ood_threshold"])

    exported = load_exported(path, args.device)
    checks = []
    for image in images:
        with torch.no_grad():
            expected, actual = ood_detections(model, image), exported(image)
        checks.append({"num_detections": len(expected[0]), "max_abs_diff": compare_detections(expected, actual)})
    logger.info(
        "Check of the exported file on %d image(s): same detections, classes and is_ood; max |difference| "
        "of boxes and scores %.3g (detections per image: %s)",
        len(checks), max(c["max_abs_diff"] for c in checks), [c["num_detections"] for c in checks],
    )
    with open(os.path.join(args.output, INFO_FILE), "w") as f:
        json.dump({**metadata, "file": EXPORTED_FILE, "check": checks}, f, indent=2)
    return checks


def argument_parser():
    parser = ToolParser(description=__doc__)
    parser.add_argument("--output", required=True, metavar="DIR", help=f"folder for {EXPORTED_FILE} and {INFO_FILE}")
    parser.add_argument(
        "--format", default="torchscript", choices=("torchscript",),
        help="export format (TorchScript only: see the description)",
    )
    parser.add_argument("--device", default="cpu", help="device the exported model runs on (default cpu)")
    parser.add_argument(
        "--random-init", action="store_true",
        help="export a randomly initialised model (no MODEL.WEIGHTS; e.g. to test a deployment)",
    )
    parser.add_argument(
        "--images", nargs="+", default=[], metavar="FILE",
        help="images to trace and check on (default: the first images of DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--num-check-images", type=int, default=3, help="images the exported file is checked on (default 3)"
    )
    return parser


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    run()
