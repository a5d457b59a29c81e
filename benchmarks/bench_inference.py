"""Inference with the OOD fields vs plain detectron2 inference of the same weights.

The VOS model (VOSROIHeads + VOSOutputLayers, 20 classes, FC 1024, digits tiny config) and a
plain detectron2 model of the same config with StandardROIHeads (FastRCNNOutputLayers) share
every weight; both run in eval mode under no_grad on the same synthetic images. Timed
interleaved: (1) the whole model forward; (2) the box predictor's ``inference`` alone, on
predictions and proposals captured from the VOS model (the plain predictor gets the same
(scores, deltas)). The VOS model computes the score behind ``is_ood`` alone, as any inference
does; "all scores" rows time it computing every OOD score it has, as the evaluation does
(``computing_all_ood_scores``). Done at two score thresholds: the config's (0.05; here every
image keeps its 100 top detections, the most OOD-field work) and 0.5 (a few tens). The
class-score layer of the
random-init model is re-drawn (shared by both) so that its logits have a std of
``--logit-std`` (2): the init's logits are nearly uniform (no box passes 0.05), while a
naive re-scale gives logits so wide that softmax returns denormal floats, which are very
slow on CPUs and distort every timing.

Target: whole-model ratio (VOS / plain, of the medians) <= 1.02; the median of the ratios
within each round is printed and written too.

Post-hoc OOD scores (vos_det/modeling/ood_scores/), all computed: fitted on the boxes of another
synthetic batch (SAFE with one FGSM step, only on a backbone with residual shortcuts; the fused
score's scale on the energy and k-NN scores of those boxes), the k-NN bank then
replaced by ``--knn-bank-sizes`` unit vectors (training features resampled with jitter), the
whole VOS model forward is timed with no post-hoc score vs all of them, the k-NN search exact (one matrix product) and chunked
(``--knn-chunk`` bank rows at a time), at the config's score threshold; then each score
alone on the detections of the batch (``--post-hoc-repeats`` interleaved repeats).

    python benchmarks/bench_inference.py [--device cuda] [--quick] [--images 8]
"""
import statistics

import torch
from torch import nn
from torch.nn import functional as F

import _common as C
from vos_det.evaluation.records import computing_all_ood_scores

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
    parser.add_argument("--knn-bank-sizes", type=int, nargs="+", default=[10000, 100000],
                        help="training boxes in the k-NN memory bank for the post-hoc timing")
    parser.add_argument("--knn-chunk", type=int, default=8192, help="bank rows per chunk of the chunked k-NN")
    parser.add_argument("--post-hoc-repeats", type=int, default=5,
                        help="interleaved repeats of the post-hoc timing (2 with --quick)")
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.images = min(args.images, 2)
        args.post_hoc_repeats = min(args.post_hoc_repeats, 2)
        args.knn_bank_sizes = [min(n, 10000) for n in args.knn_bank_sizes]
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
    # Images with boxes on which the post-hoc scores are fitted.
    fit_batch = C.synthetic_batch(args.images, args.image_size, cfg_vos.MODEL.ROI_HEADS.NUM_CLASSES, generator, device)
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
        results[str(threshold)], threshold_rows = time_threshold(
            args, threshold, (vos_model, plain_model), batch, predictions, proposals, device
        )
        rows += threshold_rows
    C.table(rows, ["what", "score thresh", "dets/image", "plain ms", "VOS ms", "overhead ms/image",
                   "ratio", "same boxes"],
            title=f"Inference, {args.images} images, {args.repeats} interleaved repeats (medians)")
    worst = max(r["model_ratio"] for r in results.values())
    print(f"whole-model target <= {TARGET_RATIO} (score behind is_ood, worst threshold): "
          f"{C.verdict(worst, TARGET_RATIO, higher_is_better=False)}")
    print("whole-model ratio within a round (median over rounds): "
          + ", ".join(f"{r['model_ratio_paired']:.3f} at {t}" for t, r in results.items()))
    vos_predictor.test_score_thresh = cfg_vos.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    post_hoc = post_hoc_costs(args, vos_model, batch, fit_batch, device)
    C.write_json(args.output, {
        "benchmark": "bench_inference",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "results_by_threshold": results,
        "target_ratio_max": TARGET_RATIO,
        "target_met": worst <= TARGET_RATIO,
        "post_hoc_scores": post_hoc,
    })


def time_threshold(args, threshold, models, batch, predictions, proposals, device):
    """Whole model and box predictor, VOS (the score behind is_ood; all scores) vs plain.

    Returns:
        tuple[dict, list]: the results at this score threshold and the rows of the table.
    """
    vos_model, plain_model = models
    vos_predictor = vos_model.roi_heads.box_predictor
    plain_predictor = plain_model.roi_heads.box_predictor
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

    def all_scores(function):
        def timed():
            with computing_all_ood_scores(vos_predictor):
                function()
        return timed

    variants = {
        "model_plain": run(lambda: plain_model(batch)),
        "model_vos": run(lambda: vos_model(batch)),
        "model_vos_all": all_scores(run(lambda: vos_model(batch))),
        "predictor_plain": run(lambda: plain_predictor.inference(predictions[:2], proposals)),
        "predictor_vos": run(lambda: vos_predictor.inference(predictions, proposals)),
        "predictor_vos_all": all_scores(run(lambda: vos_predictor.inference(predictions, proposals))),
    }
    times = C.interleaved(variants, args.repeats, warmup=args.warmup, device=device)
    summaries = {name: C.summary(values) for name, values in times.items()}
    median = {name: summary["median_s"] for name, summary in summaries.items()}
    ratios = {
        f"{kind}{scores}_ratio": median[f"{kind}_vos{scores}"] / median[f"{kind}_plain"]
        for kind in ("model", "predictor") for scores in ("", "_all")
    }
    # VOS / plain within each round (back to back, under the same load), median over the
    # rounds: steadier than the ratio of the medians on a machine whose load changes.
    paired = statistics.median(v / p for p, v in zip(times["model_plain"], times["model_vos"]))
    result = {
        "summaries": summaries, **ratios, "model_ratio_paired": paired,
        "detections_per_image": detections, "same_detections_as_plain": same,
        "model_overhead_s": median["model_vos"] - median["model_plain"],
        "target_met": ratios["model_ratio"] <= TARGET_RATIO,
    }
    rows = []
    for kind in ("model", "predictor"):
        for scores in ("", "_all"):
            plain_s, vos_s = median[f"{kind}_plain"], median[f"{kind}_vos{scores}"]
            what = "whole model forward" if kind == "model" else "box predictor inference()"
            rows.append([
                what + (", all scores" if scores else ""),
                f"{threshold:g}", f"{detections:.1f}", C.ms(plain_s), C.ms(vos_s),
                f"{1e3 * (vos_s - plain_s) / args.images:.3f}", f"{ratios[f'{kind}{scores}_ratio']:.3f}", str(same),
            ])
    return result, rows


def fit_every_score(model, fit_batch):
    """Fit every post-hoc score of ``model`` on the boxes of ``fit_batch``.

    Returns:
        BoxFitData: the boxes they were fitted on.
    """
    from vos_det.engine.post_hoc_fitting import extract_box_fit_data
    from vos_det.engine.safe_fitting import extract_safe_features
    from vos_det.modeling.ood_scores import attach_post_hoc_hooks
    from vos_det.modeling.ood_scores.fused import logit_part_score
    from vos_det.modeling.ood_scores.safe import matching_layers

    fitted = model.roi_heads.box_predictor.post_hoc.scores
    data = extract_box_fit_data(model, [fit_batch], description="fit boxes")
    for name, score in fitted.items():
        # SAFE and fused are fitted below; the embedding scores need an embedding loss.
        fittable = not (score.reads_embedding and data.embeddings is None)
        if score.needs_fit and name not in ("safe", "fused") and fittable:
            score.fit(data)
    # The fused score is scaled on ID validation boxes: the fit boxes stand in for them.
    knn_of_fit_boxes = fitted["knn"](data.features, data.logits)
    fitted["fused"].fit(id_parts={"energy": logit_part_score("energy", data.logits), "knn": knn_of_fit_boxes})
    safe = fitted["safe"]
    safe_layers = matching_layers(model, safe.layer_patterns)
    if safe_layers:
        eps = safe.fgsm_epsilon
        safe.fit(extract_safe_features(model, [fit_batch], safe_layers, (eps,), description="SAFE fit"), eps)
        attach_post_hoc_hooks(model)
    else:
        # SAFE reads residual projection shortcuts; the tiny backbone has none.
        del fitted["safe"]
    return data


def post_hoc_costs(args, model, batch, fit_batch, device):
    """Added inference cost of the post-hoc OOD scores, all together and one by one."""
    predictor = model.roi_heads.box_predictor
    # Every score, as the evaluation computes them.
    predictor.compute_all_ood_scores = True
    scoring = predictor.post_hoc
    fitted = scoring.scores
    data = fit_every_score(model, fit_batch)
    knn = fitted["knn"]
    k = knn.fitted_config["k"] = 50
    generator = torch.Generator().manual_seed(args.seed + 2)
    banks = {}
    for size in args.knn_bank_sizes:
        rows = torch.randint(len(data.features), (size,), generator=generator)
        jitter = 0.1 * data.features.std() * torch.randn(size, data.features.shape[1], generator=generator)
        banks[size] = F.normalize(data.features[rows] + jitter, dim=1).to(device)
    knn.bank = banks[args.knn_bank_sizes[0]]
    none = nn.ModuleDict()

    captured = {}
    original = predictor.add_ood_fields

    def capture(instances, logits, features=None, boxes=None):
        captured.update(logits=logits, features=features, boxes=boxes)
        return original(instances, logits, features, boxes)

    predictor.add_ood_fields = capture
    with torch.no_grad():
        outputs = model(batch)
    del predictor.add_ood_fields
    detections = sum(len(o["instances"]) for o in outputs)

    def forward(scores, bank=None, chunk=0):
        def timed():
            scoring.scores = scores
            if bank is not None:
                knn.bank, knn.chunk_size = bank, chunk
            with torch.no_grad():
                model(batch)
        return timed

    variants = {"model_no_post_hoc": forward(none)}
    for size, bank in banks.items():
        variants[f"model_all_bank{size}_exact"] = forward(fitted, bank, 0)
        variants[f"model_all_bank{size}_chunked"] = forward(fitted, bank, args.knn_chunk)
    times = C.interleaved(variants, args.post_hoc_repeats, warmup=1, device=device, progress="post-hoc model")
    scoring.scores = fitted
    summaries = {name: C.summary(values) for name, values in times.items()}
    base = summaries["model_no_post_hoc"]["median_s"]
    rows = []
    for name, summary in summaries.items():
        rows.append([name, C.ms(summary["median_s"]), f"{1e3 * (summary['median_s'] - base) / args.images:.2f}",
                     f"{summary['median_s'] / base:.3f}"])
    C.table(rows, ["variant", "ms / forward", "added ms / image", "ratio"],
            title=f"Post-hoc scores in the model forward ({args.images} images, {detections} detections, "
                  f"k = {k}, {args.post_hoc_repeats} repeats, medians)")

    score_summaries = each_score_alone(args, model, batch, captured, banks, device)
    return {
        "detections": detections,
        "knn_k": k,
        "knn_chunk": args.knn_chunk,
        "feature_dim": int(captured["features"].shape[1]),
        "model": summaries,
        "added_ms_per_image": {name: 1e3 * (s["median_s"] - base) / args.images for name, s in summaries.items()},
        "per_score": score_summaries,
    }


def each_score_alone(args, model, batch, captured, banks, device):
    """Each post-hoc score alone on the captured detections (k-NN with each bank, exact and
    chunked), and the pooling of their boxes.

    Returns:
        dict: variant -> summary of its times.
    """
    from vos_det.modeling.ood_scores import pool_box_layers

    predictor = model.roi_heads.box_predictor
    scoring = predictor.post_hoc
    fitted, knn = scoring.scores, scoring.scores["knn"]
    detections = len(captured["logits"])
    features, logits = captured["features"], captured["logits"]
    strides = model.roi_heads.feature_strides
    with torch.no_grad():
        maps = model.backbone(model.preprocess_image(batch).tensor)
    layers = pool_box_layers(maps, strides, scoring.layer_names(), captured["boxes"])
    # A score that combines others (fused) is timed on their values, computed once here.
    with torch.no_grad():
        part_scores = {
            part: fitted[part](features, logits, layer_features=layers, logits_of=predictor.foreground_logits)
            for score in fitted.values() for part in score.part_names()
        }

    def alone(name, bank=None, chunk=0):
        parts = {part: part_scores[part] for part in fitted[name].part_names()}
        extra = {"part_scores": parts} if parts else {}

        def timed():
            if bank is not None:
                knn.bank, knn.chunk_size = bank, chunk
            with torch.no_grad():
                if getattr(fitted[name], "reads_module_outputs", False):
                    fitted[name](features, logits, boxes=captured["boxes"])
                else:
                    fitted[name](features, logits, layer_features=layers, logits_of=predictor.foreground_logits, **extra)
        return timed

    score_variants = {"pool_box_layers": lambda: pool_box_layers(maps, strides, scoring.layer_names(), captured["boxes"])}
    for name in scoring.available():  # the embedding scores stay unfitted on this model
        if name != "knn":
            score_variants[name] = alone(name)
    for size, bank in banks.items():
        score_variants[f"knn_bank{size}_exact"] = alone("knn", bank, 0)
        score_variants[f"knn_bank{size}_chunked"] = alone("knn", bank, args.knn_chunk)
    score_times = C.interleaved(score_variants, args.post_hoc_repeats, warmup=1, device=device)
    score_summaries = {name: C.summary(values) for name, values in score_times.items()}
    C.table([[name, C.ms(s["median_s"]), f"{1e3 * s['median_s'] / max(detections, 1):.4f}"]
             for name, s in score_summaries.items()],
            ["score", "ms (all detections)", "ms / detection"],
            title=f"Each post-hoc score alone on the {detections} detections of the batch")
    return score_summaries


if __name__ == "__main__":
    main()
