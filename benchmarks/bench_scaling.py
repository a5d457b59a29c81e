"""How one synthesis step scales with the feature dim D, the classes K and SAMPLE_FROM.

A synthesis step once the statistics are incremental is ``ClassFeatureQueues.gaussian()``
(from the float64 sums) + ``robust_cholesky`` + ``sample_virtual_outliers``. Each axis is
varied with the others at the paper's defaults (D 1024, K 20, SAMPLE_FROM 10000, SELECT 1),
its settings timed interleaved, the parts timed inside each call. The statistics are set
directly (class sums and outer-product sum of a known SPD covariance, one entry per class)
so that the (K, N, D) queues need not exist: at K = 1203 they would be 4.9 GB, and the cost
of gaussian() from the sums does not depend on N. Per setting also:

* the chi2 sampler's peak memory during one call (CPU: VmHWM above the RSS before the call,
  reset via /proc/self/clear_refs; CUDA: max_memory_allocated above the allocated before);
  the sampler draws the SELECT largest chi-square radii directly as order statistics
  (K x SELECT values, whatever SAMPLE_FROM), so it must stay small at K = 1203;
* the gaussian sampler (K x SAMPLE_FROM x D normal draws) where that is under
  ``--gaussian-budget`` values (skipped, and said so, above);
* on the D axis, the enqueue of 512 features with the incremental statistics (B x D^2 work,
  independent of K), on real K = 20, N = 1000 queues.

Finally a stress point: K = 1203 with SAMPLE_FROM = 100000 (what would be 120 M chi2 draws
drawn one by one; the column "unchunked float64 draws MB" is the size of those).

    python benchmarks/bench_scaling.py [--device cuda] [--quick]
"""
import statistics
import time

import torch

import _common as C
from vos_det.modeling import ClassFeatureQueues, robust_cholesky, sample_virtual_outliers

DEFAULTS = {"dim": 1024, "classes": 20, "sample_from": 10000}
AXES = {"dim": [256, 512, 1024, 2048], "classes": [20, 80, 365, 1203], "sample_from": [1000, 10000, 100000]}
QUICK_DEFAULTS = {"dim": 256, "classes": 20, "sample_from": 1000}
QUICK_AXES = {"dim": [128, 256], "classes": [20, 80], "sample_from": [1000, 10000]}
EPS = 1e-4
MB = 1e6


def queues_with_statistics(num_classes, dim, device, generator):
    """ClassFeatureQueues whose valid float64 sums describe means M and a known SPD covariance."""
    queues = ClassFeatureQueues(num_classes, 1, dim, recompute_period=10**9).to(device)
    factor = torch.randn(dim, dim, generator=generator) / dim**0.5
    covariance = (factor @ factor.T).double() + 0.05 * torch.eye(dim, dtype=torch.float64)
    means = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        queues.counts.fill_(1)
        queues.class_sums.copy_(means)
        # One entry per class: sum h h^T = K * Sigma + sum_k mu_k mu_k^T.
        queues.outer_product_sum.copy_((num_classes * covariance + means.T @ means).to(device))
        queues.statistics_valid.fill_(True)
    return queues


def peak_memory_of(function, device):
    """Peak memory (bytes) above the level before ``function()``; None if not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        function()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    C.trim_heap()
    before = C.current_rss_kb()
    if not C.reset_peak_rss():
        return None
    function()
    return (C.peak_rss_kb() - before) * 1000


def run_axis(axis, values, defaults, args, device, generator):
    settings = {value: {**defaults, axis: value} for value in values}
    queues = {v: queues_with_statistics(s["classes"], s["dim"], device, generator) for v, s in settings.items()}
    parts = {v: {"gaussian": [], "robust_cholesky": [], "sample_chi2": []} for v in values}

    def step(value):
        setting = settings[value]

        def run():
            marks = [time.perf_counter()]
            means, covariance = queues[value].gaussian()
            C.synchronize(device)
            marks.append(time.perf_counter())
            scale = robust_cholesky(covariance, EPS)
            C.synchronize(device)
            marks.append(time.perf_counter())
            sample_virtual_outliers(means, scale, setting["sample_from"], 1, seed=len(parts[value]["gaussian"]))
            C.synchronize(device)
            marks.append(time.perf_counter())
            for name, start, stop in zip(parts[value], marks, marks[1:]):
                parts[value][name].append(stop - start)
        return run

    totals = C.interleaved({v: step(v) for v in values}, args.repeats, warmup=args.warmup, device=device)
    for value in values:
        for name in parts[value]:
            parts[value][name] = parts[value][name][args.warmup:]

    # Gaussian sampler where affordable; enqueue cost on the D axis.
    gaussian_sampler, enqueue = {}, {}
    affordable = [v for v in values
                  if settings[v]["classes"] * settings[v]["sample_from"] * settings[v]["dim"] <= args.gaussian_budget]
    prepared = {}
    for value in values:
        means, covariance = queues[value].gaussian()
        prepared[value] = (means, robust_cholesky(covariance, EPS))
    if affordable:
        gaussian_times = C.interleaved(
            {v: (lambda v=v: sample_virtual_outliers(*prepared[v], settings[v]["sample_from"], 1, sampler="gaussian",
                                                      seed=1)) for v in affordable},
            max(1, args.repeats // 3), warmup=0, device=device)
        gaussian_sampler = {v: statistics.median(t) for v, t in gaussian_times.items()}
    if axis == "dim":
        real = {}
        for value in values:
            dim = settings[value]["dim"]
            q = ClassFeatureQueues(defaults["classes"], args.capacity, dim).to(device)
            C.prefill_queues(q, generator)
            q.gaussian()
            real[value] = (q, torch.randn(512, dim, generator=generator).abs().to(device),
                           torch.randint(0, defaults["classes"], (512,), generator=generator).to(device))
        enqueue_times = C.interleaved(
            {v: (lambda v=v: real[v][0].enqueue(real[v][1], real[v][2], gather=False)) for v in values},
            args.repeats, warmup=1, device=device)
        enqueue = {v: statistics.median(t) for v, t in enqueue_times.items()}
        del real

    records = {}
    for value in values:
        records[value] = {
            "setting": settings[value], "total_median_s": statistics.median(totals[value]),
            "parts_median_s": {name: statistics.median(t) for name, t in parts[value].items()},
            "gaussian_sampler_median_s": gaussian_sampler.get(value),
            "enqueue512_median_s": enqueue.get(value),
        }
    return records, prepared


def print_axis(axis, records, defaults, args):
    rows = []
    values = list(records)
    first_total = records[values[0]]["total_median_s"]
    for value in values:
        record = records[value]
        medians, total, memory = record["parts_median_s"], record["total_median_s"], record["chi2_sampler_peak_bytes"]
        gaussian = record["gaussian_sampler_median_s"]
        row = [f"{value:,}", C.ms(medians["gaussian"]), C.ms(medians["robust_cholesky"]),
               C.ms(medians["sample_chi2"]), C.ms(total), f"{total / first_total:.2f}x",
               C.ms(gaussian) if gaussian is not None else "skipped (over budget)",
               f"{memory / MB:.1f}" if memory is not None else "n/a"]
        if axis == "dim":
            row.append(C.ms(record["enqueue512_median_s"]))
        rows.append(row)
    headers = [axis, "gaussian() ms", "cholesky ms", "chi2 sample ms", "total ms", "vs first",
               "gaussian sampler ms", "chi2 sampler peak MB"]
    if axis == "dim":
        headers.append("enqueue 512 + stats ms")
    others = ", ".join(f"{k}={v}" for k, v in defaults.items() if k != axis)
    C.table(rows, headers, title=f"Axis {axis} ({others}, SELECT=1); {args.repeats} interleaved repeats, medians")


def main():
    parser = C.argument_parser("bench_scaling", __doc__.splitlines()[0], repeats=7, quick_repeats=3)
    parser.add_argument("--axes", nargs="+", choices=list(AXES), default=list(AXES), help="axes to run")
    parser.add_argument("--capacity", type=int, default=1000, help="N of the real queues of the enqueue column")
    parser.add_argument("--gaussian-budget", type=float, default=4.2e8,
                        help="largest K x SAMPLE_FROM x D for which the gaussian sampler is timed")
    parser.add_argument("--no-stress", action="store_true", help="skip the K=1203, SAMPLE_FROM=100000 point")
    args = C.finish_args(parser.parse_args())
    defaults, axes = (QUICK_DEFAULTS, QUICK_AXES) if args.quick else (DEFAULTS, AXES)
    if args.quick:
        args.capacity = min(args.capacity, 100)
        args.gaussian_budget = min(args.gaussian_budget, 3e7)
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_scaling: synthesis cost vs D, K, SAMPLE_FROM", info, args)
    generator = torch.Generator().manual_seed(args.seed)
    results, prepared = {}, {}
    for axis in args.axes:
        results[axis], prepared[axis] = run_axis(axis, axes[axis], defaults, args, device, generator)

    stress_setting = {"classes": 80 if args.quick else 1203, "sample_from": 10000 if args.quick else 100000,
                      "dim": defaults["dim"]}
    stress_timings = []
    if not args.no_stress:
        queues = queues_with_statistics(stress_setting["classes"], stress_setting["dim"], device, generator)
        means, covariance = queues.gaussian()
        stress_inputs = (means, robust_cholesky(covariance, EPS))
        for seed in (3, 4):
            start = time.perf_counter()
            sample_virtual_outliers(*stress_inputs, stress_setting["sample_from"], 1, seed=seed)
            C.synchronize(device)
            stress_timings.append(time.perf_counter() - start)

    # Memory last: on the CPU, freed memory is then returned to the OS at once (slower) and
    # the free heap is trimmed before each call, so the peak RSS of one call measures the
    # sampler's live allocations.
    unmapping = device.type == "cuda" or C.return_freed_memory_to_os()
    for axis in args.axes:
        for value, record in results[axis].items():
            record["chi2_sampler_peak_bytes"] = peak_memory_of(
                lambda: sample_virtual_outliers(*prepared[axis][value], record["setting"]["sample_from"], 1, seed=2),
                device)
        print_axis(axis, results[axis], defaults, args)
        results[axis] = list(results[axis].values())
    stress = None
    if not args.no_stress:
        peak = peak_memory_of(
            lambda: sample_virtual_outliers(*stress_inputs, stress_setting["sample_from"], 1, seed=5), device)
        draws = stress_setting["classes"] * stress_setting["sample_from"]
        stress = {**stress_setting, "chi2_sampler_median_s": statistics.median(stress_timings),
                  "chi2_sampler_all_s": stress_timings, "chi2_sampler_peak_bytes": peak,
                  "unchunked_draws_bytes": draws * 8}
        C.table([[f"{stress_setting['classes']}", f"{stress_setting['sample_from']:,}", f"{stress_setting['dim']}",
                  C.ms(stress["chi2_sampler_median_s"]), f"{peak / MB:.1f}" if peak is not None else "n/a",
                  f"{draws * 8 / MB:.0f}"]],
                ["K", "SAMPLE_FROM", "D", "chi2 sample ms (median of 2)", "peak MB", "unchunked float64 draws MB"],
                title="Stress point (chi2 sampler)")
    print(f"peak memory: {'CUDA max_memory_allocated' if device.type == 'cuda' else 'CPU VmHWM delta'} "
          f"above the level before the call{'' if unmapping else ' (glibc mallopt unavailable: RSS may hide reuse)'}")
    C.write_json(args.output, {
        "benchmark": "bench_scaling",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "defaults": defaults,
        "axes": results,
        "stress": stress,
        "memory_method": "cuda max_memory_allocated" if device.type == "cuda" else
                         f"VmHWM delta, glibc mmap threshold fixed at 64 KiB: {unmapping}",
    })


if __name__ == "__main__":
    main()
