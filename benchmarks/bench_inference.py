"""Inference with the OOD fields vs plain detectron2 inference of the same weights.

The VOS model (VOSROIHeads + VOSOutputLayers, 20 classes, FC 1024, digits tiny config) and a
plain detectron2 model of the same config with StandardROIHeads (FastRCNNOutputLayers) share
every weight; both run in eval mode under no_grad on the same synthetic images. Timed
interleaved: (1) the whole model forward; (2) the box predictor's ``inference`` alone, on
predictions and proposals captured from the VOS model (the plain predictor gets the same
(scores, deltas)). Done at two score thresholds: the config's (0.05; here every image keeps
its 100 top detections, the most OOD-field work) and 0.5 (a few tens). The class-score layer of the
random-init model is re-drawn (shared by both) so that its logits have a std of
``--logit-std`` (2): the init's logits are nearly uniform (no box passes 0.05), while a
naive re-scale gives logits so wide that softmax returns denormal floats, which are very
slow on CPUs and distort every timing.

Target: whole-model ratio (VOS / plain) <= 1.02.

    python benchmarks/bench_inference.py [--device cuda] [--quick] [--images 8]
"""
import statistics

import torch

import _common as C

TARGET_RATIO = 1.02


def main():
    parser = C.argument_parser("bench_inference", __doc__.splitlines()[0], repeats=30, quick_repeats=5)
    parser.add_argument("--config", default="configs/Digits-Detection/digits_vos_tiny.yaml",
                        help="config file or bare name under configs/")
    parser.add_argument("--images", type=int, default=8, help="images per forward")
    parser.add_argument("--image-size", type=int, default=128, help="square image side")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.5],
                        help="ROI_HEADS.SCORE_THRESH_TEST values to time")
    parser.add_argument("--logit-std", type=float, default=2.0,
                        help="std of the class logits after re-drawing cls_score (0 keeps the init)")
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.images = min(args.images, 2)
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_inference: OOD fields vs plain detectron2 inference", info, args)

    pairs = dict(C.PAPER_VOS)
    cfg_vos = C.load_config(args.config, pairs, device)
    cfg_plain = C.load_config(args.config, {**pairs, "MODEL.ROI_HEADS.NAME": "StandardROIHeads"}, device,
                              vos_enabled=False)
    vos_model, plain_model, vos_only = C.build_pair(cfg_vos, cfg_plain, args.seed)
    vos_predictor = vos_model.roi_heads.box_predictor
    plain_predictor = plain_model.roi_heads.box_predictor
    vos_model.eval()
    plain_model.eval()
    print(f"VOS predictor {type(vos_predictor).__name__} vs plain {type(plain_predictor).__name__}; "
          f"{args.images} images of {args.image_size}^2; VOS-only state: {len(vos_only)} tensors")

    generator = torch.Generator().manual_seed(args.seed)
    batch = C.synthetic_batch(args.images, args.image_size, cfg_vos.MODEL.ROI_HEADS.NUM_CLASSES, generator, device)
    for image in batch:
        del image["instances"]

    captured = {}
    original_inference = vos_predictor.inference

    def capture(predictions, proposals):
        captured["predictions"], captured["proposals"] = predictions, proposals
        return original_inference(predictions, proposals)

    vos_predictor.inference = capture
    with torch.no_grad():
        vos_model(batch)
        if args.logit_std > 0:
            # Class-score weights re-drawn (shared) so the logits have std ~ --logit-std, as
            # in a trained detector: the random-init net's features are large in eval mode
            # (BN running stats at their init), and wide logits give denormal
            # probabilities, which are very slow on CPUs and would distort the timing.
            features = captured["predictions"][2]
            rms_norm = features.double().square().sum(dim=1).mean().sqrt().item()
            generator = torch.Generator().manual_seed(args.seed + 1)
            weight = torch.randn(vos_predictor.cls_score.weight.shape, generator=generator)
            weight = (weight * args.logit_std / rms_norm).to(device)
            for predictor in (vos_predictor, plain_predictor):
                predictor.cls_score.weight.copy_(weight)
                predictor.cls_score.bias.zero_()
            vos_model(batch)
    del vos_predictor.inference
    predictions, proposals = captured["predictions"], captured["proposals"]
    logits = predictions[0]
    print(f"logits std {logits.std().item():.2f}, max |logit| {logits.abs().max().item():.1f}, "
          f"smallest probability {torch.softmax(logits, dim=1).min().item():.2e}")

    rows, results = [], {}
    for threshold in args.thresholds:
        vos_predictor.test_score_thresh = threshold
        plain_predictor.test_score_thresh = threshold
        with torch.no_grad():
            vos_out = vos_model(batch)
            plain_out = plain_model(batch)
        same = all(
            torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
            and torch.equal(a["instances"].scores, b["instances"].scores)
            and torch.equal(a["instances"].pred_classes, b["instances"].pred_classes)
            for a, b in zip(vos_out, plain_out)
        )
        detections = statistics.mean(len(o["instances"]) for o in vos_out)

        def run(function):
            def timed():
                with torch.no_grad():
                    function()
            return timed

        variants = {
            "model_plain": run(lambda: plain_model(batch)),
            "model_vos": run(lambda: vos_model(batch)),
            "predictor_plain": run(lambda: plain_predictor.inference(predictions[:2], proposals)),
            "predictor_vos": run(lambda: vos_predictor.inference(predictions, proposals)),
        }
        times = C.interleaved(variants, args.repeats, warmup=args.warmup, device=device)
        summaries = {name: C.summary(values) for name, values in times.items()}
        model_ratio = summaries["model_vos"]["median_s"] / summaries["model_plain"]["median_s"]
        predictor_ratio = summaries["predictor_vos"]["median_s"] / summaries["predictor_plain"]["median_s"]
        results[str(threshold)] = {
            "summaries": summaries, "model_ratio": model_ratio, "predictor_ratio": predictor_ratio,
            "detections_per_image": detections, "same_detections_as_plain": same,
            "model_overhead_s": summaries["model_vos"]["median_s"] - summaries["model_plain"]["median_s"],
            "target_met": model_ratio <= TARGET_RATIO,
        }
        for kind, ratio in (("model", model_ratio), ("predictor", predictor_ratio)):
            plain_s, vos_s = summaries[f"{kind}_plain"]["median_s"], summaries[f"{kind}_vos"]["median_s"]
            rows.append([
                "whole model forward" if kind == "model" else "box predictor inference()",
                f"{threshold:g}", f"{detections:.1f}", C.ms(plain_s), C.ms(vos_s),
                f"{1e3 * (vos_s - plain_s) / args.images:.3f}", f"{ratio:.3f}", str(same),
            ])
    C.table(rows, ["what", "score thresh", "dets/image", "plain ms", "VOS ms", "overhead ms/image",
                   "ratio", "same boxes"],
            title=f"Inference, {args.images} images, {args.repeats} interleaved repeats (medians)")
    worst = max(r["model_ratio"] for r in results.values())
    print(f"whole-model target <= {TARGET_RATIO} (worst threshold): "
          f"{C.verdict(worst, TARGET_RATIO, higher_is_better=False)}")
    C.write_json(args.output, {
        "benchmark": "bench_inference",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "results_by_threshold": results,
        "target_ratio_max": TARGET_RATIO,
        "target_met": worst <= TARGET_RATIO,
    })


if __name__ == "__main__":
    main()
