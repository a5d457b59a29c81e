"""Cost of the two digits-det benchmark detectors: the tiny conv-FPN against ResNet-18-FPN.

Both are built from their configs (``digits_vos_tiny.yaml``, ``digits_vos_r18.yaml``: same data
sizes, box head and VOS options, only the backbone differs) and trained on the same synthetic
batches of digits-det size (8 images of 128^2, 5 classes) with SGD at the config's learning
rate. Timing: one training step (forward, backward, SGD) of each model, interleaved in this
process, median and ratio. The storage's iteration is 0, so VOS synthesis is off in both (its
cost does not depend on the backbone: both heads have FC_DIM 128). Memory: each model trains
``--memory-steps`` steps in a child process of its own, which reports its peak resident set
size (VmHWM) and the RSS before the model was built.

    python benchmarks/bench_detectors.py [--quick] [--repeats 20] [--threads 2]
"""
import argparse
import json
import sys

import torch

import _common as C

DETECTORS = {"tiny": "digits_vos_tiny.yaml", "r18": "digits_vos_r18.yaml"}
NUM_CLASSES = 5
MB = 1e3  # kB per MB


def build_trainable(name, device, seed):
    """The model of detector ``name`` in train mode and an SGD optimizer at the config's LR."""
    from detectron2.modeling import build_model

    cfg = C.load_config(DETECTORS[name], {}, device)
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    return model, optimizer


def train_step(model, optimizer, batch):
    """One forward, backward and SGD step; returns nothing (the losses are not needed)."""
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


def child(args):
    """Run in a subprocess: train one detector a few steps and print its peak RSS as JSON."""
    from detectron2.utils.events import EventStorage

    generator = torch.Generator().manual_seed(args.seed)
    batch = C.synthetic_batch(args.images, args.image_size, NUM_CLASSES, generator, args.device)
    C.trim_heap()
    base = C.current_rss_kb()
    model, optimizer = build_trainable(args.child, args.device, args.seed)
    with EventStorage(0):
        for _ in range(args.memory_steps):
            train_step(model, optimizer, batch)
    print("RESULT " + json.dumps({"rss_before_build_kb": base, "peak_rss_kb": C.peak_rss_kb()}))


def memory_run(name, args):
    """Peak RSS of detector ``name`` measured in a child process (dict of kB)."""
    command = [sys.executable, __file__, "--child", name, "--device", args.device, "--seed", str(args.seed),
               "--images", str(args.images), "--image-size", str(args.image_size),
               "--memory-steps", str(args.memory_steps)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return C.run_child(command, name)


def main():
    parser = C.argument_parser("bench_detectors", __doc__.splitlines()[0], repeats=20, quick_repeats=2)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--memory-steps", type=int, default=5, help="training steps of each memory child")
    parser.add_argument("--child", choices=list(DETECTORS), default=None, help=argparse.SUPPRESS)
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.images, args.memory_steps = 2, 1
    if args.child:
        child(args)
        return
    from detectron2.utils.events import EventStorage

    info = C.machine_info(args.device)
    C.print_header("bench_detectors: digits-det training step, tiny conv-FPN vs ResNet-18-FPN", info, args)
    generator = torch.Generator().manual_seed(args.seed)
    batch = C.synthetic_batch(args.images, args.image_size, NUM_CLASSES, generator, args.device)
    models = {name: build_trainable(name, args.device, args.seed) for name in DETECTORS}
    with EventStorage(0):
        times = C.interleaved(
            {name: (lambda m=model, o=optimizer: train_step(m, o, batch)) for name, (model, optimizer) in models.items()},
            args.repeats, args.warmup, args.device,
        )
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in models.items()}
    memory = {name: memory_run(name, args) for name in DETECTORS}
    summary = {name: C.summary(seconds) for name, seconds in times.items()}
    rows = [
        [name, DETECTORS[name], f"{parameters[name] / 1e6:.2f}", f"{summary[name]['median_s']:.3f}",
         f"{summary[name]['median_s'] / summary['tiny']['median_s']:.2f}",
         f"{memory[name]['peak_rss_kb'] / MB:.0f}"]
        for name in DETECTORS
    ]
    C.table(rows, ["detector", "config", "parameters (M)", "s / step (median)", "ratio to tiny", "peak RSS MB"],
            title=f"Training step, {args.images} images of {args.image_size}^2, {args.repeats} interleaved repeats; "
                  f"peak RSS of a child process training {args.memory_steps} steps")
    C.write_json(args.output, {
        "benchmark": "bench_detectors",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "configs": DETECTORS,
        "parameters": parameters,
        "step_seconds": summary,
        "ratio_r18_to_tiny": summary["r18"]["median_s"] / summary["tiny"]["median_s"],
        "memory_kb": memory,
    })


if __name__ == "__main__":
    main()
