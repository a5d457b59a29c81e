"""bench_inference's smoke run: every post-hoc score the tiny detector can have is fitted and
timed, and a score it cannot have (an embedding score, without an embedding loss) is left out."""
import json
import subprocess
import sys
from pathlib import Path

from vos_det.modeling.ood_scores import EMBEDDING_POST_HOC_SCORES, POST_HOC_SCORES

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_times_every_post_hoc_score_the_model_can_have(tmp_path):
    output = tmp_path / "bench_inference.json"
    subprocess.run(
        [sys.executable, "benchmarks/bench_inference.py", "--quick", "--images", "2", "--output", str(output)],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True,
    )
    timed = json.loads(output.read_text())["post_hoc_scores"]["per_score"]
    # SAFE needs residual shortcuts, which the tiny backbone lacks; k-NN is timed per bank.
    expected = set(POST_HOC_SCORES) - {"safe", "knn", *EMBEDDING_POST_HOC_SCORES}
    assert expected <= set(timed)
    assert not set(EMBEDDING_POST_HOC_SCORES) & set(timed)
    assert any(name.startswith("knn_bank") for name in timed)
