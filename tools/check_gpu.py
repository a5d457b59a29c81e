#!/usr/bin/env python
"""Check a GPU machine: train, resume, evaluate, export and benchmark vos_det on one GPU.

    python tools/check_gpu.py --output output/gpu_check

runs, in under 10 minutes on one GPU, the VOC R-50-FPN recipe with AMP on generated
VOC-like data (digits-det) for 300 iterations with outlier synthesis, interrupted half-way
and resumed; fits every post-hoc OOD score and runs the OOD evaluation with all of them;
exports the detector to TorchScript and checks the reloaded file; runs
``benchmarks/run_all.py --device cuda --quick``. One JSON report, ``gpu_check.json`` in
--output, says which steps passed (and why one failed), the iterations per second, the peak
GPU memory and the VOS overhead ratio. ``--device cpu --tiny`` checks the same plumbing on
any machine in a minute (the tiny digits recipe, a few iterations, no AMP).
"""
# vos_det first: it quiets known third-party warnings before torch and detectron2 load.
from vos_det.cli import ToolParser, UserError, check_writable_dir, run_tool

import json

import torch
from detectron2.utils.logger import setup_logger

from vos_det.engine.gpu_check import REPORT_FILE, run_gpu_check


def main(args):
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: torch sees no CUDA device (torch.cuda.is_available() is False)")
    check_writable_dir(args.output, "--output")
    setup_logger(name="vos_det")
    report = run_gpu_check(
        args.output,
        device=args.device,
        tiny=args.tiny,
        iterations=args.iterations,
        opts=args.opts,
        benchmark_command=[] if args.skip_benchmarks else None,
    )
    print(json.dumps({name: step["status"] for name, step in report["steps"].items()}, indent=2))
    print(f"{'PASSED' if report['passed'] else 'FAILED'}: report in {args.output}/{REPORT_FILE}")
    return report


def argument_parser():
    parser = ToolParser(description=__doc__, config=False)
    parser.add_argument("--output", required=True, metavar="DIR", help=f"folder for the runs and {REPORT_FILE}")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny")
    parser.add_argument("--tiny", action="store_true", help="the tiny digits recipe, a few iterations (plumbing)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (default 300, --tiny 8)")
    parser.add_argument("--skip-benchmarks", action="store_true", help="leave out benchmarks/run_all.py")
    return parser


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    report = run_tool(main, argument_parser(), argv)
    return report


if __name__ == "__main__":
    raise SystemExit(0 if run()["passed"] else 1)
