"""The benchmarks measure the GPU honestly: part-timings between device synchronisations,
and GPU memory (not the host's RSS) in the summary of a ``--device cuda`` run."""
import torch

import bench_synthesis  # benchmarks/ is on sys.path (tests/conftest.py)
import run_all


def test_reference_part_timings_read_the_clock_only_after_a_synchronisation(monkeypatch):
    """On a GPU the reference's statistics and constructions ran asynchronously: without a
    synchronisation before reading the clock, their time was billed to the next part."""
    events = []
    clock = iter(range(10**6))
    monkeypatch.setattr(bench_synthesis.C, "synchronize", lambda device: events.append("sync"))
    monkeypatch.setattr(bench_synthesis.time, "perf_counter", lambda: events.append("clock") or next(clock))
    timings = []
    num_classes = 3
    queues = torch.randn(num_classes, 20, 4, generator=torch.Generator().manual_seed(0))
    bench_synthesis.reference_synthesis(queues, 1e-4, 50, 1, timings)
    # The clock is read at the start, after the statistics, and per class before the
    # construction, after it and after the sampling: each read that closes a part follows a
    # synchronisation, and the first follows one too (the queues' own work is done).
    clock_reads = [i for i, event in enumerate(events) if event == "clock"]
    assert len(clock_reads) == 2 + 3 * num_classes
    per_class_starts = set(clock_reads[2::3])
    for i in clock_reads:
        if i not in per_class_starts:
            assert i > 0 and events[i - 1] == "sync", events
    assert set(timings[0]) == {"statistics", "construct", "sample"}


def test_the_memory_summary_of_a_cuda_run_is_gpu_memory():
    payload = {
        "vos_buffers_total_bytes": 2e6,
        "summary": {
            "rss_peak_steady_kb": {"difference_MB": 111.0},
            "cuda_peak_steady_bytes": {"difference_MB": 7.5},
        },
    }
    assert "GPU memory" in run_all.target_line("bench_memory", payload, "cuda")
    assert "+7.5 MB" in run_all.target_line("bench_memory", payload, "cuda")
    assert "RSS +111.0 MB" in run_all.target_line("bench_memory", payload, "cpu")
