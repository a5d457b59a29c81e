"""The seed studies train each (method, seed) through one helper (benchmarks/_common.train_in_child)."""
import os
import sys

import pytest

import _common  # benchmarks/ is on sys.path (tests/conftest.py)


def test_trains_once_with_seed_and_folder_after_the_methods_keys(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(_common, "run_logged", lambda command, log, env: calls.append((command, log, env)))
    output = tmp_path / "vos" / "seed3"
    env = {"OMP_NUM_THREADS": "1"}
    assert _common.train_in_child("digits_vos_tiny.yaml", ["SEED", "9", "MODEL.VOS.SELECT", "20"], 3, str(output), env)
    (command, log, given_env), = calls
    assert command == [
        sys.executable, "tools/train_net.py", "--config", "digits_vos_tiny.yaml", "SEED", "9", "MODEL.VOS.SELECT", "20",
        "SEED", "3", "OUTPUT_DIR", str(output),
    ]  # the study's SEED comes last, so it wins over a method's own
    assert log == str(output / "train.log") and given_env is env and output.is_dir()
    # Done: its file is there, nothing runs.
    (output / "ood_results.json").write_text("{}")
    assert not _common.train_in_child("x.yaml", [], 3, str(output), env, done_file="ood_results.json")
    assert len(calls) == 1


def test_a_failed_training_shows_the_end_of_its_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"tools/train_net.py failed \(exit [1-9]\d*\), log .*leaderboard.log"):
        _common.train_in_child("no_such.yaml", [], 0, str(tmp_path), dict(os.environ), log_name="leaderboard.log")
    assert "no_such.yaml" in (tmp_path / "leaderboard.log").read_text()
