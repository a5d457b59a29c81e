"""Peak memory of training with VOS vs without, at the paper's sizes.

Each measurement runs in a fresh child process (the parent alternates VOS / vanilla children,
``--repeats`` of each), so that one model's allocations cannot hide the other's. A child
builds the model from the digits tiny config with the paper's VOS sizes (20 classes, FC 1024,
queues of 1000, SAMPLE_FROM 10000), pre-fills the VOS queues, runs ``--warmup-steps``
training steps (the first VOS step computes the Gaussian statistics exactly from the queues:
the "cold" path) and then ``--steps`` steady-state steps (incremental statistics).

Reported:
* VOS buffer sizes, computed from the model's registered buffers and parameters (exact);
* CPU: peak resident set size (VmHWM) above the RSS measured just before the model was
  built, for the whole run (build + prefill + cold step) and for the steady steps alone (peak
  reset via /proc/self/clear_refs). To make RSS follow the live tensors, each child fixes
  glibc's mmap threshold at 64 KiB (large blocks are unmapped when freed) and trims the heap
  before each baseline; RSS still counts everything the process maps (libraries' arenas,
  autograd buffers), so read the VOS - vanilla difference (median of the children);
* CUDA (``--device cuda``): torch.cuda.max_memory_allocated, the same two phases.

Expected VOS extra at the paper's sizes: queues 20 x 1000 x 1024 float32 = 81.9 MB, float64
statistics 20 x 1024 + 1024^2 = 8.5 MB, plus transients (D x D float64 temporaries, the
enqueue's float64 copies, and for the exact recompute one class queue at a time in float64,
N x D x 8 = 8.2 MB).

    python benchmarks/bench_memory.py [--device cuda] [--quick]
"""
import json
import statistics
import sys

import torch

import _common as C

MB = 1e6


def child(args):
    """Run in a subprocess: build one model, train a few steps, print one JSON line."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    device = torch.device(args.device)
    vos = args.child == "vos"
    unmapping = C.return_freed_memory_to_os()
    pairs = dict(C.PAPER_VOS)
    cfg = C.load_config(args.config, pairs, device, vos_enabled=vos)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [C.synthetic_batch(args.images, args.image_size, 20, generator, device, start_class=i) for i in range(2)]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    C.trim_heap()
    rss_base = C.current_rss_kb()
    C.reset_peak_rss()
    torch.manual_seed(args.seed)
    model = build_model(cfg).train()
    buffers = {}
    if vos:
        queues = model.roi_heads.box_predictor.feature_queues
        C.prefill_queues(queues, generator)
        buffers = {f"feature_queues.{n}": b.numel() * b.element_size() for n, b in queues.named_buffers()}
        predictor = model.roi_heads.box_predictor
        buffers["energy_weights + uncertainty_classifier (params)"] = sum(
            p.numel() * p.element_size()
            for p in [predictor.energy_weights, *predictor.uncertainty_classifier.parameters()])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    active = []

    def step(storage, index):
        losses = model(batches[index % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        storage.iter += 1
        latest = storage.latest().get("vos/synthesis_active")
        active.append(bool(latest and latest[0] > 0))

    with EventStorage(cfg.MODEL.VOS.STARTING_ITER + 10) as storage:
        for index in range(args.warmup_steps):
            step(storage, index)
        if cuda:
            torch.cuda.synchronize()
            cuda_peak_all = torch.cuda.max_memory_allocated() - cuda_base
            torch.cuda.reset_peak_memory_stats()
            cuda_steady_base = torch.cuda.memory_allocated() - cuda_base
        peak_all = C.peak_rss_kb() - rss_base
        C.trim_heap()
        rss_after_warmup = C.current_rss_kb() - rss_base
        reset = C.reset_peak_rss()
        for index in range(args.steps):
            step(storage, args.warmup_steps + index)
        peak_steady = C.peak_rss_kb() - rss_base if reset else float("nan")
        if cuda:
            torch.cuda.synchronize()
            cuda_peak_steady = torch.cuda.max_memory_allocated() - cuda_base
    result = {
        "mode": args.child,
        "rss_peak_all_kb": peak_all,
        "rss_peak_steady_kb": peak_steady,
        "rss_after_warmup_kb": rss_after_warmup,
        "peak_reset_supported": reset,
        "glibc_mmap_threshold_fixed": unmapping,
        "buffers_bytes": buffers,
        "synthesis_active": active,
    }
    if cuda:
        result.update({"cuda_peak_all_bytes": cuda_peak_all, "cuda_peak_steady_bytes": cuda_peak_steady,
                       "cuda_allocated_after_warmup_bytes": cuda_steady_base})
    print("RESULT " + json.dumps(result))


def main():
    parser = C.argument_parser("bench_memory", __doc__.splitlines()[0], repeats=3, quick_repeats=1)
    parser.add_argument("--config", default="configs/Digits-Detection/digits_vos_tiny.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps before the steady phase")
    parser.add_argument("--steps", type=int, default=3, help="steady-state steps")
    parser.add_argument("--child", choices=("vos", "vanilla"), default=None, help=argparse_hidden())
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.images, args.warmup_steps, args.steps = 2, 1, 1
    if args.child:
        child(args)
        return
    device = torch.device(args.device)
    info = C.machine_info(device)
    C.print_header("bench_memory: peak training memory, VOS vs vanilla", info, args)
    runs = {"vos": [], "vanilla": []}
    order = ["vanilla", "vos"]
    for round_index in range(args.repeats):
        for mode in (order if round_index % 2 == 0 else order[::-1]):
            command = [sys.executable, __file__, "--child", mode, "--device", args.device, "--seed", str(args.seed),
                       "--config", args.config, "--images", str(args.images), "--image-size", str(args.image_size),
                       "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            runs[mode].append(C.run_child(command, mode))

    buffers = runs["vos"][0]["buffers_bytes"]
    total_buffers = sum(buffers.values())
    C.table([[name, f"{size / MB:.3f}"] for name, size in buffers.items()] + [["total", f"{total_buffers / MB:.1f}"]],
            ["VOS state (exact, from the model's buffers)", "MB"],
            title="VOS buffers and parameters at K=20, N=1000, D=1024")

    def median(mode, key, scale):
        values = [r[key] for r in runs[mode] if r.get(key) is not None]
        return statistics.median(values) * scale if values else float("nan")

    rows, summary = [], {}
    metrics = [("rss_peak_all_kb", "CPU peak RSS delta, whole run (build, prefill, cold step)", 1e3 / MB),
               ("rss_peak_steady_kb", "CPU peak RSS delta, steady steps (incremental stats)", 1e3 / MB),
               ("rss_after_warmup_kb", "CPU RSS delta after warmup (resident)", 1e3 / MB)]
    if device.type == "cuda":
        metrics += [("cuda_peak_all_bytes", "CUDA max_memory_allocated, whole run", 1 / MB),
                    ("cuda_peak_steady_bytes", "CUDA max_memory_allocated, steady steps", 1 / MB),
                    ("cuda_allocated_after_warmup_bytes", "CUDA memory_allocated after warmup", 1 / MB)]
    for key, label, scale in metrics:
        vanilla, vos = median("vanilla", key, scale), median("vos", key, scale)
        summary[key] = {"vanilla_MB": vanilla, "vos_MB": vos, "difference_MB": vos - vanilla,
                        "ratio": vos / vanilla if vanilla else float("nan")}
        rows.append([label, f"{vanilla:.1f}", f"{vos:.1f}", f"{vos - vanilla:+.1f}",
                     f"{vos / vanilla:.2f}" if vanilla else "-"])
    C.table(rows, ["measure (median of children)", "vanilla MB", "VOS MB", "VOS - vanilla MB", "ratio"],
            title=f"Training memory, {args.images} images of {args.image_size}^2, {args.warmup_steps} warmup + "
                  f"{args.steps} steady steps, {args.repeats} child process(es) per model")
    active = [a for r in runs["vos"] for a in r["synthesis_active"]]
    print(f"synthesis active in {sum(active)}/{len(active)} VOS steps; peak reset supported: "
          f"{runs['vos'][0]['peak_reset_supported']}; glibc mmap threshold fixed: "
          f"{runs['vos'][0]['glibc_mmap_threshold_fixed']}")
    C.write_json(args.output, {
        "benchmark": "bench_memory",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "vos_buffers_bytes": buffers,
        "vos_buffers_total_bytes": total_buffers,
        "summary": summary,
        "runs": runs,
    })


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
