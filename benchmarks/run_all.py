"""Run every vos_det benchmark, one after the other, and print a summary of the targets.

    python benchmarks/run_all.py                 # full sizes on the CPU (about 12 minutes on 2 idle cores)
    python benchmarks/run_all.py --quick         # smoke run (about 2 minutes)
    python benchmarks/run_all.py --device cuda
    python benchmarks/run_all.py --only bench_enqueue bench_synthesis

Arguments after ``--`` go to every benchmark (e.g. ``-- --threads 2``). Each benchmark
writes its JSON to benchmarks/results/<name>[_quick].json (``--results-dir`` to change).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
BENCHMARKS = ["bench_enqueue", "bench_synthesis", "bench_train_step", "bench_inference", "bench_memory",
              "bench_scaling"]


def target_line(name, payload, device="cpu"):
    """One line per benchmark: the headline number and whether its target was met (memory:
    GPU memory with ``device`` "cuda", the host's RSS otherwise)."""
    if name == "bench_enqueue":
        return f"plain enqueue speedup {payload['speedup_vs_reference']['ours_plain']:.1f}x (target >= 50x)"
    if name == "bench_synthesis":
        return f"synthesis speedup {payload['speedup_vs_reference']['chi2_incremental']:.0f}x (target >= 20x)"
    if name == "bench_train_step":
        return f"train step ratio {payload['ratio']:.3f} (target <= 1.05)"
    if name == "bench_inference":
        worst = max(r["model_ratio"] for r in payload["results_by_threshold"].values())
        return f"whole-model inference ratio {worst:.3f} (target <= 1.02)"
    if name == "bench_memory":
        state = f"VOS state {payload['vos_buffers_total_bytes'] / 1e6:.1f} MB"
        if device == "cuda":
            steady = payload["summary"]["cuda_peak_steady_bytes"]["difference_MB"]
            return f"{state}; steady peak GPU memory (max_memory_allocated) +{steady:.1f} MB"
        steady = payload["summary"]["rss_peak_steady_kb"]["difference_MB"]
        return f"{state}; steady peak RSS +{steady:.1f} MB"
    if name == "bench_scaling":
        stress = payload.get("stress") or {}
        return f"stress K={stress.get('classes')} SAMPLE_FROM={stress.get('sample_from')}: " \
               f"{stress.get('chi2_sampler_median_s', float('nan')):.2f} s"
    return ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--results-dir", default=str(BENCHMARKS_DIR / "results"))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for every benchmark")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    summary, failed = [], []
    for name in args.only:
        output = Path(args.results_dir) / f"{name}{'_quick' if args.quick else ''}.json"
        command = [sys.executable, str(BENCHMARKS_DIR / f"{name}.py"), "--device", args.device,
                   "--output", str(output), *(["--quick"] if args.quick else []), *extra]
        print(f"\n### {' '.join(command)}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.call(command)
        elapsed = time.perf_counter() - start
        if returncode != 0:
            failed.append(name)
            summary.append(f"{name}: FAILED (rc {returncode}) after {elapsed:.0f} s")
            continue
        payload = json.loads(output.read_text())
        met = payload.get("target_met")
        verdict = "" if met is None else (" -> MET" if met else " -> NOT MET")
        summary.append(f"{name}: {target_line(name, payload, args.device)}{verdict} [{elapsed:.0f} s]")
    print("\n## Summary")
    for line in summary:
        print(line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
