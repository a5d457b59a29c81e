"""tools/check_gpu.py's plumbing on the CPU: the tiny recipe through every step, one JSON report."""
import json
import sys
from pathlib import Path

import pytest
import torch

from vos_det.engine.gpu_check import GPU_CHECK_STEPS, REPORT_FILE, run_gpu_check
from vos_det.modeling.ood_scores import EMBEDDING_POST_HOC_SCORES, POST_HOC_SCORES

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    """The tiny check on the CPU; its benchmark step runs a command that fails, so that the
    report of a failed step is checked too (the real benchmarks take minutes)."""
    output = tmp_path_factory.mktemp("gpu_check")
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    return output, run_gpu_check(str(output), device="cpu", tiny=True, benchmark_command=failing)


@pytest.mark.slow
def test_every_step_runs_and_the_report_says_how_each_went(tiny_check):
    output, report = tiny_check
    assert json.loads((output / REPORT_FILE).read_text()) == report
    assert list(report["steps"]) == list(GPU_CHECK_STEPS)
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    assert statuses == {**{name: "passed" for name in GPU_CHECK_STEPS}, "benchmarks": "failed"}, report["steps"]
    assert "exited with 3" in report["steps"]["benchmarks"]["error"]
    assert report["passed"] is False


@pytest.mark.slow
def test_training_resumes_half_way_with_synthesis_and_reports_its_speed(tiny_check):
    _, report = tiny_check
    train, resume = report["steps"]["train"], report["steps"]["resume"]
    half = report["iterations"] // 2
    assert (train["start_iteration"], train["iterations"]) == (0, half)
    assert (resume["start_iteration"], resume["iterations"]) == (half, report["iterations"] - half)
    assert resume["synthesis_active_iterations"] > 0
    assert report["iterations_per_second"] > 0
    assert train["amp"] is False  # detectron2's AMPTrainer needs CUDA


@pytest.mark.slow
def test_the_evaluation_has_every_post_hoc_score_and_the_export_reloads(tiny_check):
    _, report = tiny_check
    # SAFE reads residual shortcuts, which the tiny backbone lacks, the embedding scores a model
    # trained with an embedding loss; every other score is there.
    expected = set(POST_HOC_SCORES) - {"safe", *EMBEDDING_POST_HOC_SCORES}
    assert expected <= set(report["steps"]["ood_eval"]["scores"])
    export = report["steps"]["export"]
    assert export["traced_on"] == "cpu" and export["max_abs_diff"] < 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_the_tool_refuses_cuda_without_a_gpu(tmp_path):
    sys.path.insert(0, str(TOOLS_DIR))
    try:
        import check_gpu
    finally:
        sys.path.remove(str(TOOLS_DIR))
    with pytest.raises(SystemExit, match="torch sees no CUDA device"):
        check_gpu.run(["--output", str(tmp_path), "--device", "cuda"])
