#!/usr/bin/env python
"""Convert a checkpoint released with the VOS paper into a vos_det checkpoint.

    python tools/convert_released_checkpoint.py --config VOC-Detection/vos_rcnn.yaml \\
        --source downloads/vos_voc_resnet/model_final.pth --output output/released/voc_vos_r50.pth
    python tools/ood_eval.py --config VOC-Detection/vos_rcnn.yaml MODEL.WEIGHTS output/released/voc_vos_r50.pth

The authors' models (github.com/deeplearning-wisc/vos, branch main-MLP, README "Pretrained
models": VOC and BDD100k, vanilla and VOS, R-50-FPN) are detectron2 ``model_final.pth`` files
of their own ROI heads. Every tensor is mapped onto the model of ``--config`` (the VOS
uncertainty head and energy weights renamed, the VOC classes reordered, shapes checked) or
dropped with a reason; the key map is printed. A checkpoint that does not fit the config is
one error listing every key that does not fit. Use vos_rcnn.yaml (MLP head, branch main-MLP)
for the VOS models, vanilla_rcnn.yaml for the vanilla ones, and for the VOS-RegNet model of
branch main vos_regnetx.yaml with MODEL.VOS.UNCERTAINTY_HEAD logistic.
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, load_config, run_tool

from vos_det.engine.released_checkpoint import RELEASED_CLASS_ORDERS, convert_released_for_config


def argument_parser():
    parser = ToolParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, metavar="FILE", help="the released model_final.pth")
    parser.add_argument("--output", required=True, metavar="FILE", help="the converted checkpoint to write")
    parser.add_argument(
        "--classes", default="", choices=["", *sorted(RELEASED_CLASS_ORDERS)],
        help="the checkpoint's benchmark (default: the one with MODEL.ROI_HEADS.NUM_CLASSES classes)",
    )
    return parser


def main(args):
    cfg = load_config(args.config_file, args.opts)
    conversion = convert_released_for_config(cfg, args.source, args.output, classes=args.classes)
    print(conversion.format_key_map())
    print(f"saved {args.output}; evaluate it with MODEL.WEIGHTS {args.output}")
    return conversion


if __name__ == "__main__":
    run_tool(main, argument_parser())
