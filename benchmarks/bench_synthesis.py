"""Outlier synthesis step: vos_det vs a straightforward per-class MultivariateNormal reference.

Every variant holds its own copy of the same full queues (K x N x D) and, at each call,
first enqueues the same batch of new features (``--batch``, 512), then fits the Gaussians and
draws the outliers:

* reference (written from the paper): class means and the shared covariance computed from
  the queue contents (float32, as the official code), + eps I; then for each class one
  ``torch.distributions.MultivariateNormal(mu_k, covariance_matrix=Sigma)``, ``rsample``
  SAMPLE_FROM, ``log_prob``, keep the SELECT lowest. Its queue update is our plain
  vectorised write (so the reference is not charged the per-box loop of bench_enqueue).
* ours, incremental: ``enqueue`` (maintaining the float64 sums) + ``gaussian()`` +
  ``robust_cholesky`` + ``sample_virtual_outliers``, with the chi2 (default) and the
  gaussian sampler.
* ours, cold: the statistics invalidated before each call, so ``gaussian()`` recomputes
  them exactly from the queues (what happens once every COVARIANCE_RECOMPUTE_PERIOD steps).

MultivariateNormal.rsample multiplies the (D, D) factor by each sample separately (a batched
matrix-vector product), about 3 ms per sample at D = 1024 on 2 CPU cores, so the full
reference (20 x 10000 samples) would take ~10 minutes per call. By default on the CPU the
reference therefore draws ``--ref-sample-from`` (500) samples per class for all K classes,
and its per-class sampling time (rsample + log_prob + topk) is scaled linearly to SAMPLE_FROM;
the statistics and the MultivariateNormal construction are not scaled. A one-class check of
the linearity is printed. ``--ref-sample-from 0`` times it at full size.

Target: reference / ours (incremental, chi2) >= 20x.

    python benchmarks/bench_synthesis.py [--device cuda] [--quick] [--ref-sample-from 0]
"""
import math
import statistics
import time

import torch

import _common as C
from vos_det.modeling import ClassFeatureQueues, robust_cholesky, sample_virtual_outliers
from vos_det.modeling.vos.synthesis import largest_chi2_order_statistics

TARGET_SPEEDUP = 20.0


def reference_synthesis(queue_features, eps, sample_from, select, timings):
    """The paper's rule, straightforwardly: K MultivariateNormals, rsample, log_prob, topk.

    Appends to ``timings`` the seconds spent in the statistics, the K constructions and the
    K sample + log_prob + topk parts. Returns (K * select, D) outliers.
    """
    # Each part is timed between device synchronisations: on a GPU, kernels run after the
    # Python call returns, so an unsynchronised clock would bill one part's work to the next.
    device = queue_features.device
    C.synchronize(device)
    start = time.perf_counter()
    num_classes, _, dim = queue_features.shape
    means = queue_features.mean(dim=1)
    centered = (queue_features - means[:, None, :]).reshape(-1, dim)
    covariance = centered.T @ centered / centered.shape[0]
    covariance = covariance + eps * torch.eye(dim, device=covariance.device, dtype=covariance.dtype)
    C.synchronize(device)
    statistics_done = time.perf_counter()
    construct, sample = 0.0, 0.0
    outliers = []
    for k in range(num_classes):
        t0 = time.perf_counter()
        distribution = torch.distributions.MultivariateNormal(means[k], covariance_matrix=covariance)
        C.synchronize(device)
        t1 = time.perf_counter()
        draws = distribution.rsample((sample_from,))
        log_likelihood = distribution.log_prob(draws)
        lowest = torch.topk(-log_likelihood, select).indices
        outliers.append(draws[lowest])
        C.synchronize(device)
        t2 = time.perf_counter()
        construct += t1 - t0
        sample += t2 - t1
    timings.append({"statistics": statistics_done - start, "construct": construct, "sample": sample})
    return torch.cat(outliers), means, covariance


def brute_force_chi2_radii(num_classes, num_samples, num_select, dim):
    """The previous chi2 sampler's radii: SAMPLE_FROM chi2(dim) draws per class, then topk.

    O(K * SAMPLE_FROM), for comparison with vos_det's largest_chi2_order_statistics (same
    law, O(K * SELECT)). Chunked at 2^24 draws as that sampler was; global random stream.
    """
    chi2 = torch.distributions.Chi2(torch.tensor(float(dim), dtype=torch.float64))
    per_chunk = max(1, (1 << 24) // num_samples)
    selected = []
    for start in range(0, num_classes, per_chunk):
        draws = chi2.sample((min(per_chunk, num_classes - start), num_samples))
        selected.append(torch.topk(draws, num_select, dim=1).values)
    return torch.cat(selected)


def mahalanobis_squared(outliers, means, scale, select):
    """||L^-1 (v - mu_k)||^2 of each outlier under the fitted Gaussian of its class."""
    centred = outliers.double() - means.double().repeat_interleave(select, dim=0)
    solved = torch.linalg.solve_triangular(scale.double(), centred.T, upper=False)
    return solved.square().sum(dim=0)


def main():
    parser = C.argument_parser("bench_synthesis", __doc__.splitlines()[0], repeats=15, quick_repeats=5)
    parser.add_argument("--classes", type=int, default=20, help="K")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension D")
    parser.add_argument("--capacity", type=int, default=1000, help="queue length N (SAMPLE_NUMBER)")
    parser.add_argument("--sample-from", type=int, default=10000, help="SAMPLE_FROM")
    parser.add_argument("--select", type=int, default=1, help="SELECT")
    parser.add_argument("--batch", type=int, default=512, help="features enqueued before each synthesis")
    parser.add_argument("--eps", type=float, default=1e-4, help="COVARIANCE_EPS")
    parser.add_argument(
        "--ref-sample-from", type=int, default=None,
        help="draws per class of the reference, scaled to SAMPLE_FROM (0 = full size; "
             "default 500 on cpu, full on cuda)",
    )
    parser.add_argument("--ref-every", type=int, default=5, help="the reference runs in every n-th round")
    parser.add_argument("--gaussian-every", type=int, default=3,
                        help="the (slow) gaussian-sampler variants run in every n-th round")
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.dim, args.capacity, args.sample_from, args.batch = 128, 100, 1000, 128
        args.ref_every, args.gaussian_every = 2, 1
    if args.ref_sample_from is None:
        args.ref_sample_from = 500 if args.device == "cpu" and not args.quick else 0
    ref_sample_from = args.ref_sample_from or args.sample_from
    ref_sample_from = min(ref_sample_from, args.sample_from)
    ref_scale = args.sample_from / ref_sample_from
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_synthesis: synthesis step vs per-class MultivariateNormal reference", info, args)
    print(f"K={args.classes}, D={args.dim}, N={args.capacity}, SAMPLE_FROM={args.sample_from}, "
          f"SELECT={args.select}, {args.batch} features enqueued per step; reference draws "
          f"{ref_sample_from} per class, sampling time x{ref_scale:g}")

    generator = torch.Generator().manual_seed(args.seed)
    source = ClassFeatureQueues(args.classes, args.capacity, args.dim, recompute_period=10**9).to(device)
    C.prefill_queues(source, generator)
    names = ["reference", "chi2_incremental", "gaussian_incremental", "chi2_cold", "gaussian_cold"]
    queues = {}
    for name in names:
        queues[name] = ClassFeatureQueues(args.classes, args.capacity, args.dim, recompute_period=10**9).to(device)
        queues[name].load_state_dict(source.state_dict())
    for name in ("chi2_incremental", "gaussian_incremental"):
        queues[name].gaussian()  # statistics valid from here on: the incremental path
    batches = [
        (torch.randn(args.batch, args.dim, generator=generator).abs().to(device),
         torch.randint(0, args.classes, (args.batch,), generator=generator).to(device))
        for _ in range(4)
    ]
    calls, reference_timings, distances = {}, [], {name: [] for name in names}
    last = {}

    def enqueue_next(name):
        calls[name] = calls.get(name, -1) + 1
        queues[name].enqueue(*batches[calls[name] % len(batches)], gather=False)

    def ours(name, sampler):
        def run():
            enqueue_next(name)
            means, covariance = queues[name].gaussian()
            scale = robust_cholesky(covariance, args.eps)
            outliers, _ = sample_virtual_outliers(
                means, scale, args.sample_from, args.select, sampler=sampler, seed=calls[name])
            last[name] = (outliers, means, scale)
        return run

    def reference():
        enqueue_next("reference")
        outliers, means, covariance = reference_synthesis(
            queues["reference"].features, args.eps, ref_sample_from, args.select, reference_timings)
        last["reference"] = (outliers, means, covariance)

    def invalidate(name):
        if name.endswith("_cold"):
            queues[name].statistics_valid.fill_(False)

    def record_distances(name):
        # Mahalanobis^2 of the outliers under the exact Gaussian of the current queue.
        outliers = last[name][0]
        means, covariance = queues[name].gaussian() if name != "reference" else (None, None)
        if name == "reference":
            means, covariance = last["reference"][1].double(), last["reference"][2].double()
            scale = torch.linalg.cholesky(covariance)
        else:
            scale = robust_cholesky(covariance, args.eps)
        distances[name] += mahalanobis_squared(outliers, means, scale, args.select).tolist()

    variants = {
        "reference": reference,
        "chi2_incremental": ours("chi2_incremental", "chi2"),
        "gaussian_incremental": ours("gaussian_incremental", "gaussian"),
        "chi2_cold": ours("chi2_cold", "chi2"),
        "gaussian_cold": ours("gaussian_cold", "gaussian"),
    }
    times = C.interleaved(variants, args.repeats, warmup=args.warmup, device=device, setup=invalidate,
                          every={"reference": args.ref_every, "gaussian_incremental": args.gaussian_every,
                                 "gaussian_cold": args.gaussian_every}, progress="synthesis")
    reference_timings = reference_timings[args.warmup:]
    for name in names:
        record_distances(name)

    # Reference time at full SAMPLE_FROM: statistics + constructions + scaled sampling.
    reference_full = [t["statistics"] + t["construct"] + t["sample"] * ref_scale for t in reference_timings]
    # Linearity of the reference's sampling in SAMPLE_FROM, on one class.
    linearity = None
    if ref_scale > 1:
        one_class = queues["reference"].features[:1]
        small, double = [], []
        reference_synthesis(one_class, args.eps, ref_sample_from, args.select, small)
        reference_synthesis(one_class, args.eps, 2 * ref_sample_from, args.select, double)
        linearity = double[0]["sample"] / small[0]["sample"]

    # Statistics: incremental vs exact from the same queue contents, and vs the reference's.
    check = queues["chi2_incremental"]
    incremental_means, incremental_cov = check.gaussian()
    exact = ClassFeatureQueues(args.classes, args.capacity, args.dim).to(device)
    exact.load_state_dict(check.state_dict())
    exact.statistics_valid.fill_(False)
    exact_means, exact_cov = exact.gaussian()
    features = check.features
    ref_means = features.double().mean(dim=1)
    centred = (features.double() - ref_means[:, None]).reshape(-1, args.dim)
    ref_cov = centred.T @ centred / centred.shape[0]
    cov_scale = float(ref_cov.abs().max())
    stats_check = {
        "incremental_vs_exact_cov_max_abs_rel": float((incremental_cov - exact_cov).abs().max()) / cov_scale,
        "exact_vs_reference_cov_max_abs_rel": float((exact_cov - ref_cov).abs().max()) / cov_scale,
        "exact_vs_reference_means_max_abs": float((exact_means - ref_means).abs().max()),
        "incremental_vs_exact_means_max_abs": float((incremental_means - exact_means).abs().max()),
    }

    # Sampler alone: ours (chi2, gaussian), and the chi2 radii alone: vos_det's order
    # statistics vs the previous brute-force draws (SAMPLE_FROM chi2 variates + topk).
    means, covariance = check.gaussian()
    scale = robust_cholesky(covariance, args.eps)
    radii_generator = torch.Generator().manual_seed(args.seed)
    sampler_times = C.interleaved(
        {
            "chi2": lambda: sample_virtual_outliers(means, scale, args.sample_from, args.select, seed=1),
            "gaussian": lambda: sample_virtual_outliers(
                means, scale, args.sample_from, args.select, sampler="gaussian", seed=1),
            "chi2 radii only: order statistics (vos_det)": lambda: largest_chi2_order_statistics(
                args.classes, args.sample_from, args.select, args.dim, generator=radii_generator),
            "chi2 radii only: brute force (previous sampler)": lambda: brute_force_chi2_radii(
                args.classes, args.sample_from, args.select, args.dim),
        },
        max(3, args.repeats // 3), warmup=1, device=device,
    )

    results = {name: C.summary(values) for name, values in times.items()}
    results["reference_scaled_to_full"] = C.summary(reference_full)
    ref_median = results["reference_scaled_to_full"]["median_s"]
    speedups = {name: ref_median / results[name]["median_s"] for name in names[1:]}
    parts = {part: statistics.median(t[part] for t in reference_timings)
             for part in ("statistics", "construct", "sample")}
    labels = {
        "chi2_incremental": "ours, incremental stats, chi2 sampler (default)",
        "gaussian_incremental": "ours, incremental stats, gaussian sampler",
        "chi2_cold": "ours, exact recompute (cold), chi2 sampler",
        "gaussian_cold": "ours, exact recompute (cold), gaussian sampler",
    }
    ref_label = ("reference, per-class MultivariateNormal" if ref_scale == 1 else
                 f"reference, per-class MultivariateNormal: measured at {ref_sample_from}/class, "
                 f"sampling scaled x{ref_scale:g}")
    rows = [[ref_label, C.ms(ref_median), C.ms(results['reference_scaled_to_full']['min_s']),
             str(results["reference"]["n"]), "1.0x",
             f"{statistics.mean(distances['reference']):.1f}"]]
    if ref_scale != 1:
        rows.append(["  (as measured, unscaled)", C.ms(results["reference"]["median_s"]),
                     C.ms(results["reference"]["min_s"]), str(results["reference"]["n"]), "", ""])
    for name in names[1:]:
        rows.append([labels[name], C.ms(results[name]["median_s"]), C.ms(results[name]["min_s"]),
                     str(results[name]["n"]), f"{speedups[name]:.0f}x",
                     f"{statistics.mean(distances[name]):.1f}"])
    C.table(rows, ["synthesis step (enqueue + fit + sample)", "median ms", "min ms", "calls", "speedup",
                   "mean Mahalanobis^2 of outliers"],
            title=f"Synthesis step, K={args.classes} D={args.dim} N={args.capacity} "
                  f"SAMPLE_FROM={args.sample_from} SELECT={args.select}")
    print(f"reference parts (median s): statistics {parts['statistics']:.3f}, {args.classes} constructions "
          f"{parts['construct']:.3f}, sampling {parts['sample']:.3f} at {ref_sample_from}/class"
          + (f" (x{ref_scale:g} -> {parts['sample'] * ref_scale:.1f})" if ref_scale != 1 else ""))
    if linearity is not None:
        print(f"linearity check (1 class): sampling {2 * ref_sample_from} draws took {linearity:.2f}x "
              f"the time of {ref_sample_from} (linear = 2.00)")
    expected = None
    if args.select == 1:
        # E[largest of n chi2(D)] (Monte Carlo), for reading the last column.
        chi2 = torch.distributions.Chi2(torch.tensor(float(args.dim), dtype=torch.float64))
        expected = {n: float(torch.topk(chi2.sample((100, n)), 1, dim=1).values.mean())
                    for n in sorted({ref_sample_from, args.sample_from})}
        print("expected mean Mahalanobis^2 of the least likely of n draws: "
              + ", ".join(f"n={n}: {v:.1f}" for n, v in expected.items())
              + f" (reference draws {ref_sample_from}, ours {args.sample_from}; one call's outliers averaged)")
    print("statistics: " + ", ".join(f"{k} {v:.2e}" for k, v in stats_check.items()))
    sampler_medians = {k: statistics.median(v) for k, v in sampler_times.items()}
    C.table([[k, C.ms(v)] for k, v in sampler_medians.items()], ["sample_virtual_outliers alone", "median ms"],
            title="Sampler alone (chi2: radii as order statistics, O(K * SELECT); the radii rows time "
                  "that part alone against the previous O(K * SAMPLE_FROM) draws)")
    print(f"target >= {TARGET_SPEEDUP:g}x (incremental, chi2): "
          f"{C.verdict(speedups['chi2_incremental'], TARGET_SPEEDUP, higher_is_better=True)}")
    C.write_json(args.output, {
        "benchmark": "bench_synthesis",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "reference_sample_from_measured": ref_sample_from,
        "reference_sampling_scale": ref_scale,
        "reference_linearity_2x": linearity,
        "reference_parts_median_s": parts,
        "results": results,
        "speedup_vs_reference": speedups,
        "mean_mahalanobis_squared": {k: statistics.mean(v) for k, v in distances.items()},
        "expected_max_chi2_reference": expected,
        "statistics_check": stats_check,
        "sampler_alone_median_s": sampler_medians,
        "target_speedup_min": TARGET_SPEEDUP,
        "target_met": speedups["chi2_incremental"] >= TARGET_SPEEDUP,
    })


if __name__ == "__main__":
    main()
