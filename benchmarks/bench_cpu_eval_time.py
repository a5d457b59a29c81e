"""Seconds per image of R-50-FPN inference at the VOC test size on this CPU: the cost of
checking a released checkpoint without a GPU.

The models of ``VOC-Detection/vos_rcnn.yaml`` (VOS, MLP uncertainty head, score
"vos_release", protocol "vos_official": what ``ood_eval`` runs on a converted release
checkpoint) and ``vanilla_rcnn.yaml``, random weights (``MODEL.WEIGHTS ""``), eval mode, one
image per forward as ``ood_eval``'s test loader gives them. The input is a typical VOC image
(500 x 375) already resized by the test transform (shorter side ``INPUT.MIN_SIZE_TEST`` 800,
longer side 1067 <= 1333); the data loading and JPEG decoding of a real run are not timed.
Two layers of the random-init model are set so that it does a trained model's work: the
RPN's and the box predictor's box deltas are zeroed (the random-init net's features are
large, its deltas collapse almost every box; this way the ``POST_NMS_TOPK_TEST`` = 1000
proposals, anchors ranked by random objectness, all reach the box head and the detections
are boxes of the image, as with a trained model), and the class layer is re-drawn
so that the logits have a std of ``--logit-std`` (2, as in bench_inference.py), so that up to
100 boxes per image are kept and get their OOD scores.

The table gives the median seconds per image of each model and the CPU hours of one
evaluation: 4,952 VOC2007 test images plus ``--ood-images`` OOD images (the COCO and
OpenImages OOD sets of your download: count their image files).

    python benchmarks/bench_cpu_eval_time.py [--repeats 5] [--ood-images N] [--quick]
"""
import torch

import _common as C
from detectron2.modeling import build_model

VOC_TEST_IMAGES = 4952
# A typical VOC image (width x height) and its size after the VOC test transform.
VOC_IMAGE = (500, 375)


def _resized(shorter, longest, width, height):
    """detectron2's ResizeShortestEdge size (height, width) for a (width, height) image."""
    scale = shorter / min(width, height)
    if max(width, height) * scale > longest:
        scale = longest / max(width, height)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _act_trained(model, image, logit_std, seed):
    """Zero the box deltas of the RPN and the box predictor, and re-draw cls_score so that the
    logits of ``image``'s proposals have std ~ logit_std. Returns the number of proposals."""
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        for layer in (model.proposal_generator.rpn_head.anchor_deltas, predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
    captured = {}
    hook = predictor.cls_score.register_forward_hook(
        lambda module, inputs, output: captured.update(x=inputs[0], proposals=len(inputs[0]))
    )
    with torch.no_grad():
        model([image])
        hook.remove()
        rms_norm = captured["x"].double().square().sum(dim=1).mean().sqrt().item()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(predictor.cls_score.weight.shape, generator=generator)
        predictor.cls_score.weight.copy_(weight * logit_std / rms_norm)
        predictor.cls_score.bias.zero_()
    return captured["proposals"]


def main():
    parser = C.argument_parser("bench_cpu_eval_time", __doc__.splitlines()[0], repeats=5, quick_repeats=1)
    parser.add_argument("--ood-images", type=int, default=0,
                        help="OOD test images to add to the 4,952 VOC test images in the estimate")
    parser.add_argument("--logit-std", type=float, default=2.0, help="std of the class logits after re-drawing")
    args = C.finish_args(parser.parse_args())
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_cpu_eval_time: R-50-FPN inference at the VOC test size", info, args)

    models, detections, proposals = {}, {}, {}
    image = None
    for name, config in (("vos", "VOC-Detection/vos_rcnn.yaml"), ("vanilla", "VOC-Detection/vanilla_rcnn.yaml")):
        overrides = {"MODEL.VOS.ENABLED": True} if name == "vos" else {}
        if args.quick:
            overrides.update({"INPUT.MIN_SIZE_TEST": 400, "INPUT.MAX_SIZE_TEST": 667})
        cfg = C.load_config(config, overrides, device, vos_enabled=name == "vos")
        torch.manual_seed(args.seed)
        model = build_model(cfg).eval()
        if image is None:
            height, width = _resized(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, *VOC_IMAGE)
            generator = torch.Generator().manual_seed(args.seed)
            pixels = (torch.rand(3, height, width, generator=generator) * 255).round().to(device)
            image = {"image": pixels, "height": VOC_IMAGE[1], "width": VOC_IMAGE[0]}
        proposals[name] = _act_trained(model, image, args.logit_std, args.seed + 1)
        with torch.no_grad():
            detections[name] = len(model([image])[0]["instances"])
        models[name] = model
    print(f"input {tuple(image['image'].shape[1:])} (height, width) for a {VOC_IMAGE[0]} x {VOC_IMAGE[1]} image; "
          "proposals per image: " + ", ".join(f"{n} {p}" for n, p in proposals.items())
          + "; detections per image: " + ", ".join(f"{n} {d}" for n, d in detections.items()))

    def forward(model):
        def run():
            with torch.no_grad():
                model([image])
        return run

    times = C.interleaved({name: forward(model) for name, model in models.items()}, args.repeats,
                          warmup=args.warmup, device=device, progress="bench_cpu_eval_time")
    summaries = {name: C.summary(values) for name, values in times.items()}
    total_images = VOC_TEST_IMAGES + args.ood_images
    rows = []
    for name, s in summaries.items():
        per_image = s["median_s"]
        rows.append([name, f"{per_image:.2f}", f"{s['min_s']:.2f}-{s['max_s']:.2f}", str(detections[name]),
                     f"{per_image * total_images / 3600:.1f}", f"{per_image * 1000 / 3600:.2f}"])
    C.table(rows, ["model", "s / image (median)", "range", "detections", f"CPU hours, {total_images} images",
                   "CPU hours per 1,000 OOD images"],
            title=f"R-50-FPN, one image per forward, {VOC_TEST_IMAGES} VOC test + {args.ood_images} OOD images")
    C.write_json(args.output, {
        "info": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "input_size": list(image["image"].shape[1:]),
        "proposals_per_image": proposals,
        "detections_per_image": detections,
        "voc_test_images": VOC_TEST_IMAGES,
        "ood_images": args.ood_images,
        "seconds_per_image": summaries,
        "cpu_hours": {name: s["median_s"] * total_images / 3600 for name, s in summaries.items()},
    })


if __name__ == "__main__":
    main()
