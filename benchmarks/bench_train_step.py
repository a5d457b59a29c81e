"""Training step of the VOS detector vs the same detector without VOS, synthesis running.

Both models are built from the same config (paper's VOS sizes: 20 classes, box-head FC 1024,
queues of 1000, 10000 draws per class, 1 kept) with the same seed, and the vanilla one gets
the VOS model's weights. The VOS queues are pre-filled so that outlier synthesis runs at every
timed step (the storage iteration is past STARTING_ITER). A step = forward + backward +
optimizer step on a synthetic batch; the two models are timed interleaved on the same
batches. Then the VOS overhead is broken down by timing its parts inside real steps
(enqueue, gaussian(), robust_cholesky, sample_virtual_outliers, the rest of the loss) and
directly on the same sizes.

Target: median(VOS step) / median(vanilla step) <= 1.05.

    python benchmarks/bench_train_step.py                      # digits tiny config, CPU
    python benchmarks/bench_train_step.py --config vos_rcnn.yaml --images 2 --image-size 256 --repeats 5
    python benchmarks/bench_train_step.py --device cuda --config vos_rcnn.yaml --image-size 800
"""
import contextlib
import statistics
import time

import torch

import _common as C

TARGET_RATIO = 1.05


def parse_args():
    parser = C.argument_parser(
        "bench_train_step", __doc__.splitlines()[0], repeats=20, quick_repeats=3
    )
    parser.add_argument(
        "--config", default="configs/Digits-Detection/digits_vos_tiny.yaml",
        help="config file or bare name under configs/ (e.g. vos_rcnn.yaml, R-50: slow on CPU)",
    )
    parser.add_argument("--images", type=int, default=None, help="images per batch (default: 8 tiny, 2 R-50)")
    parser.add_argument("--image-size", type=int, default=None, help="square image side (default: 128 tiny, 256 R-50)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (momentum 0.9, wd 1e-4)")
    parser.add_argument("--sampler", choices=("chi2", "gaussian"), default="chi2", help="MODEL.VOS.SAMPLER")
    parser.add_argument("--batches", type=int, default=4, help="distinct synthetic batches cycled through")
    parser.add_argument(
        "--opt", nargs="*", default=[], metavar="KEY VALUE",
        help="extra config overrides (KEY VALUE ...), applied to both models",
    )
    args = C.finish_args(parser.parse_args())
    is_tiny = "digits" in args.config or "tiny" in args.config
    if args.images is None:
        args.images = 8 if is_tiny else 2
    if args.image_size is None:
        args.image_size = 128 if is_tiny else 256
    if args.quick:
        args.images = min(args.images, 2)
        args.image_size = min(args.image_size, 128)
        args.batches = min(args.batches, 2)
    return args


def overrides(args):
    pairs = dict(C.PAPER_VOS)
    pairs["MODEL.VOS.SAMPLER"] = args.sampler
    if len(args.opt) % 2:
        raise SystemExit("--opt needs KEY VALUE pairs")
    pairs.update(dict(zip(args.opt[::2], args.opt[1::2])))
    if args.quick:
        # A smoke run: the same code paths at reduced sizes.
        pairs.update({"MODEL.VOS.SAMPLE_NUMBER": 50, "MODEL.VOS.SAMPLE_FROM": 1000})
    return pairs


class Trainee:
    """One model with its optimizer and event storage, stepping on given batches."""

    def __init__(self, model, lr, first_iter):
        from detectron2.utils.events import EventStorage

        self.model = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
        self.storage = EventStorage(first_iter)
        self.last_losses = None

    def step(self, batch):
        with self.storage:
            losses = self.model(batch)
            total = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.storage.iter += 1
        self.last_losses = losses

    def synthesis_active(self) -> bool:
        latest = self.storage.latest().get("vos/synthesis_active")
        return bool(latest and latest[0] > 0)


@contextlib.contextmanager
def instrument(predictor, device):
    """Time enqueue / gaussian / robust_cholesky / sample_virtual_outliers / uncertainty_loss.

    Wraps them in place for the duration of the block (restoring the originals after);
    yields {part: [seconds per call]} and {"foreground": [enqueued rows per call]}.
    robust_cholesky and sample_virtual_outliers are patched in the module that calls them
    (the synthesis code shared by the box predictor and the classification head).
    """
    from vos_det.modeling.vos import virtual_outliers as synthesis_caller

    records = {name: [] for name in ("enqueue", "gaussian", "robust_cholesky", "sample_virtual_outliers",
                                     "uncertainty_loss")}
    sizes = {"foreground": []}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            C.synchronize(device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            C.synchronize(device)
            records[name].append(time.perf_counter() - start)
            return result
        return wrapper

    queues = predictor.feature_queues
    original_enqueue, original_gaussian = queues.enqueue, queues.gaussian
    original_loss = predictor.uncertainty_loss
    original_cholesky = synthesis_caller.robust_cholesky
    original_sample = synthesis_caller.sample_virtual_outliers

    def counting_enqueue(features, labels, gather=True):
        sizes["foreground"].append(int(features.shape[0]))
        return original_enqueue(features, labels, gather=gather)

    queues.enqueue = timed("enqueue", counting_enqueue)
    queues.gaussian = timed("gaussian", original_gaussian)
    predictor.uncertainty_loss = timed("uncertainty_loss", original_loss)
    synthesis_caller.robust_cholesky = timed("robust_cholesky", original_cholesky)
    synthesis_caller.sample_virtual_outliers = timed("sample_virtual_outliers", original_sample)
    try:
        yield records, sizes
    finally:
        del queues.enqueue, queues.gaussian, predictor.uncertainty_loss
        synthesis_caller.robust_cholesky = original_cholesky
        synthesis_caller.sample_virtual_outliers = original_sample


def direct_parts(predictor, num_foreground, num_rois, repeats, device):
    """Each VOS part timed alone on a copy of the model's queues, at the step's sizes."""
    from vos_det.modeling import ClassFeatureQueues, robust_cholesky, sample_virtual_outliers
    from vos_det.modeling.ood_scores.energy import weighted_logsumexp

    source = predictor.feature_queues
    queues = ClassFeatureQueues(source.num_classes, source.capacity, source.feature_dim,
                                source.recompute_period).to(device)
    queues.load_state_dict(source.state_dict())
    queues.gaussian()  # statistics valid: the incremental (synthesis-time) path
    num_classes, dim = source.num_classes, source.feature_dim
    features = torch.randn(num_foreground, dim, device=device).abs()
    labels = torch.randint(0, num_classes, (num_foreground,), device=device)
    means, covariance = queues.gaussian()
    scale = robust_cholesky(covariance, predictor.covariance_eps)
    logits = torch.randn(num_rois, num_classes + 1, device=device, requires_grad=True)
    fg = torch.randint(0, num_rois, (num_foreground,), device=device)

    def loss_part():
        weights = predictor.energy_class_weights()
        outliers = torch.randn(num_classes * predictor.select, dim, device=device, dtype=torch.float64)
        out_logits = predictor.cls_score(outliers.float())[:, :num_classes]
        negative = torch.cat([weighted_logsumexp(logits[fg, :num_classes], weights),
                              weighted_logsumexp(out_logits, weights)])
        target = torch.cat([torch.ones(len(fg), dtype=torch.long, device=device),
                            torch.zeros(len(out_logits), dtype=torch.long, device=device)])
        loss = torch.nn.functional.cross_entropy(predictor.uncertainty_classifier(negative[:, None]), target)
        loss.backward()

    variants = {
        "enqueue": lambda: queues.enqueue(features, labels, gather=False),
        "gaussian": queues.gaussian,
        "robust_cholesky": lambda: robust_cholesky(covariance, predictor.covariance_eps),
        "sample_virtual_outliers": lambda: sample_virtual_outliers(
            means, scale, predictor.sample_from, predictor.select, sampler=predictor.sampler, seed=1),
        "loss (fwd+bwd)": loss_part,
    }
    times = C.interleaved(variants, repeats, warmup=1, device=device)
    # The exact recompute (cold path) runs once every recompute_period calls of gaussian().
    cold = C.interleaved({"cold": queues.recompute_statistics}, max(1, min(3, repeats)), warmup=0, device=device)
    with torch.no_grad():
        predictor.zero_grad(set_to_none=True)
    return times, cold["cold"]


def main():
    args = parse_args()
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_train_step: VOS training step vs vanilla (synthesis active)", info, args)
    pairs = overrides(args)
    cfg_vos = C.load_config(args.config, pairs, device)
    cfg_vanilla = C.load_config(args.config, pairs, device, vos_enabled=False)
    vos_model, vanilla_model, vos_only = C.build_pair(cfg_vos, cfg_vanilla, args.seed)
    predictor = vos_model.roi_heads.box_predictor
    generator = torch.Generator().manual_seed(args.seed)
    C.prefill_queues(predictor.feature_queues, generator)
    num_classes = cfg_vos.MODEL.ROI_HEADS.NUM_CLASSES
    batches = [
        C.synthetic_batch(args.images, args.image_size, num_classes, generator, device, start_class=i)
        for i in range(args.batches)
    ]
    first_iter = cfg_vos.MODEL.VOS.STARTING_ITER + 10
    trainees = {"vanilla": Trainee(vanilla_model, args.lr, first_iter), "vos": Trainee(vos_model, args.lr, first_iter)}
    calls = {"vanilla": 0, "vos": 0}
    active = []

    def make_step(name):
        def run():
            # The n-th step of each model uses the same batch.
            trainees[name].step(batches[calls[name] % len(batches)])
            calls[name] += 1
            if name == "vos":
                active.append(trainees["vos"].synthesis_active())
        return run

    print(f"config {args.config}: {num_classes} classes, FC_DIM {cfg_vos.MODEL.ROI_BOX_HEAD.FC_DIM}, "
          f"queue {cfg_vos.MODEL.VOS.SAMPLE_NUMBER}, SAMPLE_FROM {cfg_vos.MODEL.VOS.SAMPLE_FROM}, "
          f"SELECT {cfg_vos.MODEL.VOS.SELECT}, sampler {args.sampler}; batch {args.images} x "
          f"{args.image_size}^2, ROIs/image {cfg_vos.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE}; "
          f"VOS-only state: {', '.join(vos_only)}")
    times = C.interleaved({"vanilla": make_step("vanilla"), "vos": make_step("vos")}, args.repeats,
                          warmup=args.warmup, device=device, progress="train step")
    synthesis_fraction = sum(active) / max(1, len(active))
    losses = {name: {k: float(v.detach()) for k, v in t.last_losses.items()} for name, t in trainees.items()}
    vanilla, vos = C.summary(times["vanilla"]), C.summary(times["vos"])
    ratio = vos["median_s"] / vanilla["median_s"]
    overhead = vos["median_s"] - vanilla["median_s"]
    C.table(
        [
            ["vanilla (VOS disabled)", C.ms(vanilla["median_s"]), C.ms(vanilla["min_s"]),
             C.ms(vanilla["max_s"]), "1.000"],
            ["VOS (synthesis every step)", C.ms(vos["median_s"]), C.ms(vos["min_s"]),
             C.ms(vos["max_s"]), f"{ratio:.3f}"],
        ],
        ["train step (fwd+bwd+SGD)", "median ms", "min ms", "max ms", "ratio"],
        title=f"Training step, {args.repeats} interleaved repeats",
    )
    print(f"synthesis active in {synthesis_fraction:.0%} of VOS steps; last loss_vos = "
          f"{losses['vos'].get('loss_vos', float('nan')):.4f}")
    print(f"ratio target <= {TARGET_RATIO}: {C.verdict(ratio, TARGET_RATIO, higher_is_better=False)}; "
          f"overhead {C.ms(overhead)} ms per step")

    # --- breakdown inside real steps ------------------------------------------------------
    breakdown_steps = max(2, args.repeats // 2)
    with instrument(predictor, device) as (records, sizes):
        for _ in range(breakdown_steps):
            make_step("vos")()
    medians = {name: statistics.median(values) for name, values in records.items() if values}
    loss_rest = medians["uncertainty_loss"] - sum(
        medians.get(n, 0.0) for n in ("enqueue", "gaussian", "robust_cholesky", "sample_virtual_outliers"))
    num_foreground = int(statistics.median(sizes["foreground"]))
    num_rois = args.images * cfg_vos.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    direct, cold = direct_parts(predictor, num_foreground, num_rois, max(3, args.repeats // 2), device)
    recompute_period = predictor.feature_queues.recompute_period
    rows, in_situ_sum = [], 0.0
    part_names = ["enqueue", "gaussian", "robust_cholesky", "sample_virtual_outliers"]
    for name in part_names:
        in_situ_sum += medians[name]
        rows.append([name, C.ms(medians[name]), C.ms(statistics.median(direct[name])),
                     f"{medians[name] / overhead:.0%}" if overhead > 0 else "-"])
    in_situ_sum += loss_rest
    rows.append(["rest of uncertainty_loss (energy, classifier, CE fwd)", C.ms(loss_rest),
                 C.ms(statistics.median(direct["loss (fwd+bwd)"])) + " (fwd+bwd)",
                 f"{loss_rest / overhead:.0%}" if overhead > 0 else "-"])
    rows.append(["sum of the parts above", C.ms(in_situ_sum), "",
                 f"{in_situ_sum / overhead:.0%}" if overhead > 0 else "-"])
    rows.append(["unattributed (loss backward, extra params, noise)", C.ms(overhead - in_situ_sum), "", ""])
    rows.append([f"exact recompute (cold gaussian), every {recompute_period} steps", "",
                 f"{C.ms(statistics.median(cold))} ({C.ms(statistics.median(cold) / recompute_period)} amortised)", ""])
    C.table(rows, ["VOS overhead part", "in-step median ms", "alone, same sizes ms", "share of overhead"],
            title=f"Breakdown of the {C.ms(overhead)} ms overhead ({breakdown_steps} instrumented steps, "
                  f"{num_foreground} foreground features enqueued per step (median))")

    C.write_json(args.output, {
        "benchmark": "bench_train_step",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "config": args.config,
        "overrides": pairs,
        "sizes": {"num_classes": num_classes, "fc_dim": cfg_vos.MODEL.ROI_BOX_HEAD.FC_DIM,
                  "images": args.images, "image_size": args.image_size, "rois": num_rois,
                  "foreground_enqueued_median": num_foreground},
        "vanilla": vanilla, "vos": vos, "ratio": ratio, "target_ratio_max": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO, "overhead_s": overhead,
        "synthesis_active_fraction": synthesis_fraction, "last_losses": losses,
        "breakdown_in_step_median_s": {**medians, "rest_of_uncertainty_loss": loss_rest},
        "breakdown_direct_median_s": {k: statistics.median(v) for k, v in direct.items()},
        "cold_recompute_median_s": statistics.median(cold), "recompute_period": recompute_period,
    })


if __name__ == "__main__":
    main()
