"""Enqueue of one step's ROI features: vectorised ClassFeatureQueues vs a per-box Python loop.

The reference is the official VOS code's update, written from its description: for each box,
if its class queue is not full write the row at the fill count, else shift the queue by one
(``torch.cat((queue[1:], row))``) and append. All queues start full (the steady state of
training), as do ours. Ours is timed twice: the plain FIFO write (before synthesis starts,
when the Gaussian statistics are not maintained) and with the incremental float64 class
sums / outer-product sum that synthesis uses (the extra B x D^2 work replaces the full
covariance recomputation of the reference's synthesis step, see bench_synthesis).

Target: reference / ours (plain) >= 50x.

    python benchmarks/bench_enqueue.py [--device cuda] [--batch 512] [--quick]
"""
import torch

import _common as C
from vos_det.modeling import ClassFeatureQueues

TARGET_SPEEDUP = 50.0


class OfficialStyleQueues:
    """Per-class tensors updated box by box, as the official VOS code does."""

    def __init__(self, features, counts):
        self.capacity = features.shape[1]
        self.queues = [features[k].clone() for k in range(features.shape[0])]
        self.counts = [int(c) for c in counts]

    def enqueue(self, features, labels):
        features = features.detach()
        for index, label in enumerate(labels.tolist()):
            if self.counts[label] < self.capacity:
                self.queues[label][self.counts[label]] = features[index]
                self.counts[label] += 1
            else:
                self.queues[label] = torch.cat((self.queues[label][1:], features[index : index + 1]), 0)


def main():
    parser = C.argument_parser("bench_enqueue", __doc__.splitlines()[0], repeats=30, quick_repeats=5)
    parser.add_argument("--batch", type=int, default=512, help="ROI features per step (B)")
    parser.add_argument("--classes", type=int, default=20, help="K")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension D")
    parser.add_argument("--capacity", type=int, default=1000, help="queue length N (SAMPLE_NUMBER)")
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.batch, args.dim, args.capacity = min(args.batch, 128), min(args.dim, 256), min(args.capacity, 200)
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_enqueue: vectorised enqueue vs per-box loop", info, args)
    print(f"B={args.batch} features, K={args.classes} classes, D={args.dim}, N={args.capacity} per queue (all full)")

    generator = torch.Generator().manual_seed(args.seed)
    plain = ClassFeatureQueues(args.classes, args.capacity, args.dim).to(device)
    C.prefill_queues(plain, generator)
    with_statistics = ClassFeatureQueues(args.classes, args.capacity, args.dim).to(device)
    with_statistics.load_state_dict(plain.state_dict())
    with_statistics.gaussian()  # from now on enqueue maintains the float64 sums
    reference = OfficialStyleQueues(plain.features, plain.counts)

    batches = [
        (torch.randn(args.batch, args.dim, generator=generator).abs().to(device),
         torch.randint(0, args.classes, (args.batch,), generator=generator).to(device))
        for _ in range(4)
    ]
    calls = {}

    def next_batch(name):
        # The n-th call of every variant gets the same batch, so all queues see the same stream.
        calls[name] = calls.get(name, -1) + 1
        return batches[calls[name] % len(batches)]

    variants = {
        "reference": lambda: reference.enqueue(*next_batch("reference")),
        "ours_plain": lambda: plain.enqueue(*next_batch("ours_plain"), gather=False),
        "ours_statistics": lambda: with_statistics.enqueue(*next_batch("ours_statistics"), gather=False),
    }
    times = C.interleaved(variants, args.repeats, warmup=args.warmup, device=device)

    # Same queues afterwards? Ours in age order = slots from the write position on (all full).
    same_content = all(
        torch.equal(reference.queues[k], torch.roll(plain.features[k], -int(plain.write_positions[k]), 0))
        and torch.equal(plain.features[k], with_statistics.features[k])
        for k in range(args.classes)
    )

    results = {name: C.summary(values) for name, values in times.items()}
    ref = results["reference"]["median_s"]
    speedups = {name: ref / r["median_s"] for name, r in results.items()}
    labels = {
        "reference": "per-box loop, official style (shift + append)",
        "ours_plain": "ClassFeatureQueues.enqueue, plain FIFO write",
        "ours_statistics": "ClassFeatureQueues.enqueue + incremental float64 statistics",
    }
    C.table(
        [[labels[n], C.ms(r["median_s"]), C.ms(r["min_s"]), C.ms(r["max_s"]), f"{speedups[n]:.1f}x"]
         for n, r in results.items()],
        ["enqueue of one step", "median ms", "min ms", "max ms", "speedup vs reference"],
        title=f"Enqueue of {args.batch} features, {args.repeats} interleaved repeats",
    )
    print(f"all queues identical (age order) in reference and both of ours after the run: {same_content}")
    print(f"plain enqueue target >= {TARGET_SPEEDUP:g}x: "
          f"{C.verdict(speedups['ours_plain'], TARGET_SPEEDUP, higher_is_better=True)}")
    print(f"with statistics (synthesis-time path): {speedups['ours_statistics']:.1f}x "
          f"(its extra work is 2 float64 GEMMs of {args.dim}x{args.batch}x{args.dim})")
    C.write_json(args.output, {
        "benchmark": "bench_enqueue",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "results": results,
        "speedup_vs_reference": speedups,
        "target_speedup_min": TARGET_SPEEDUP,
        "target_met": speedups["ours_plain"] >= TARGET_SPEEDUP,
        "same_queues": same_content,
    })


if __name__ == "__main__":
    main()
