"""Seven inputs that passed silently or ended in a long traceback now fail in the
first seconds with one line naming the key, file or split and what to do; nothing is written
and nothing is lost.

Each test runs the tool as a user would (its ``run``, in this process: ``error: ...`` is the
SystemExit message) and checks the files around it.
"""
import importlib.util
import logging
import os
import re
import warnings

import pytest
import torch
from detectron2.modeling import build_model

from vos_det.config import CONFIGS_DIR
from vos_det.engine.trained_model import check_checkpoint_matches_model
from vos_det.engine.post_hoc_fitting import check_validation_sets, fit_post_hoc_scores
from vos_det.engine.trained_model import WEIGHTS_HASH_KEY, weights_fingerprint
from vos_det.engine.trainer import divergence_message
from vos_det.errors import TrainingDivergedError
from vos_det.modeling.ood_scores import save_post_hoc_state
from vos_det.utils.log_noise import filter_known_warnings

TOOLS = CONFIGS_DIR.parent / "tools"
CONFIG = "digits_vos_tiny.yaml"
# tiny_cfg's schedule as command-line overrides: a few CPU iterations of 4 images.
TINY = [
    "SOLVER.MAX_ITER", "8", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()",
    "MODEL.VOS.STARTING_ITER", "4", "MODEL.VOS.SAMPLE_NUMBER", "4", "MODEL.VOS.SAMPLE_FROM", "500",
    "DATALOADER.NUM_WORKERS", "0", "TEST.OOD.PLOTS", "False",
]


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error(tool, argv, monkeypatch):
    """The one line a tool exits with (``error: ...``)."""
    monkeypatch.delenv("VOS_DET_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        _tool(tool).run(argv)
    message = str(exit_info.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _files(folder):
    """name -> bytes of every file under ``folder``."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


@pytest.fixture(scope="module")
def fitted_state(tmp_path_factory, tiny_digits_root, random_weights, tiny_cfg):
    """A post-hoc state (k-NN only) of random_weights, k chosen on a test split, allowed."""
    output = str(tmp_path_factory.mktemp("state") / "post_hoc_scores.pth")
    fit_post_hoc_scores(
        tiny_cfg(tmp_path_factory.mktemp("fit")),
        random_weights,
        output=output,
        val_id="digits_det_test",
        val_ood="digits_det_ood_val",
        scores=["knn"],
        allow_test_split=True,
    )
    return output


# ---------------------------------------------------------------- (a) a test split to choose k


@pytest.mark.parametrize(
    "option, name", [("--val-id", "digits_det_test"), ("--val-ood", "digits_det_ood"), ("--val-ood", "digits_det_far_ood"),
     ("--val-ood", "digits_det_far_ood_matched")]
)
def test_the_fit_tool_refuses_a_test_split_to_choose_k(option, name, tiny_digits_root, random_weights, tmp_path, monkeypatch):
    output = tmp_path / "state.pth"
    argv = ["--config", CONFIG, "--weights", random_weights, "--val-id", "digits_det_val", "--val-ood", "digits_det_ood_val"]
    argv[argv.index(option) + 1] = name
    message = _error("fit_ood_scores", argv + ["--output", str(output)], monkeypatch)
    assert message.startswith(f"error: {option} {name} is a test split (test_split in its metadata)")
    assert "--val-id digits_det_val --val-ood digits_det_ood_val" in message and "--allow-test-split" in message
    assert not output.exists()


def test_validation_splits_pass_and_an_allowed_test_split_is_recorded(tiny_digits_root, fitted_state):
    assert check_validation_sets("digits_det_val", "digits_det_ood_val") == []
    assert check_validation_sets("digits_det_test", "digits_det_ood", allow_test_split=True) == [
        "digits_det_test", "digits_det_ood"
    ]
    info = torch.load(fitted_state, weights_only=True)["info"]
    assert info["test_splits_allowed"] == ["digits_det_test"]


# ---------------------------------------------------------------- (b) a state of other weights


def test_a_state_records_the_hash_of_its_weights_which_ignores_calibration(fitted_state, random_weights, tmp_path):
    checkpoint = torch.load(random_weights, weights_only=True)
    info = torch.load(fitted_state, weights_only=True)["info"]
    assert info["weights"] == os.path.abspath(random_weights)
    assert info[WEIGHTS_HASH_KEY] == weights_fingerprint(checkpoint["model"])
    calibrated = {**checkpoint["model"], "roi_heads.box_predictor.calibrated_ood_threshold": torch.tensor(0.3)}
    assert weights_fingerprint(calibrated) == info[WEIGHTS_HASH_KEY]
    trained = dict(checkpoint["model"])
    name = next(k for k, v in trained.items() if k.startswith("backbone.") and v.is_floating_point())
    trained[name] = trained[name] + 1e-3
    assert weights_fingerprint(trained) != info[WEIGHTS_HASH_KEY]


def test_a_state_used_with_other_weights_is_refused(fitted_state, random_weights, tiny_digits_root, tmp_path, monkeypatch):
    checkpoint = torch.load(random_weights, weights_only=True)
    name = next(k for k, v in checkpoint["model"].items() if k.startswith("backbone.") and v.is_floating_point())
    checkpoint["model"][name] = checkpoint["model"][name] + 1e-3  # a checkpoint of another iteration
    other = tmp_path / "model_0000399.pth"
    torch.save(checkpoint, other)
    output = tmp_path / "eval"
    before = {path: open(path, "rb").read() for path in (fitted_state, random_weights, str(other))}
    message = _error(
        "train_net",
        ["--config", CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", str(other),
         "MODEL.OOD.POST_HOC.STATE", fitted_state, "OUTPUT_DIR", str(output)],
        monkeypatch,
    )
    recorded = torch.load(fitted_state, weights_only=True)["info"][WEIGHTS_HASH_KEY]
    assert message.startswith(
        f"error: MODEL.OOD.POST_HOC.STATE {fitted_state} belongs to other weights: it was fitted on "
        f"{os.path.abspath(random_weights)} (sha256 {recorded[:12]}), not on MODEL.WEIGHTS {other} (sha256 "
    )
    assert f"tools/fit_ood_scores.py --weights {other}" in message
    assert not (output / "ood_results.json").exists()
    assert all(open(path, "rb").read() == data for path, data in before.items())


def test_a_state_without_a_weights_hash_is_loaded_with_a_warning(random_weights, tiny_cfg, tmp_path, caplog):
    model = build_model(tiny_cfg(tmp_path))
    predictor = model.roi_heads.box_predictor
    state = str(tmp_path / "old_state.pth")
    # As tools/fit_ood_scores.py wrote it before the hash was recorded.
    save_post_hoc_state({}, state, predictor.cls_score.in_features, predictor.num_classes, weights="model_final.pth")
    model = build_model(tiny_cfg(tmp_path, "MODEL.OOD.POST_HOC.STATE", state))
    with caplog.at_level(logging.WARNING, logger="vos_det.engine.trained_model"):
        check_checkpoint_matches_model(random_weights, model)
    assert f"MODEL.OOD.POST_HOC.STATE {state} records no hash of the weights it was fitted on (model_final.pth)" in caplog.text


# ---------------------------------------------------------------- (c) a truncated or foreign state


@pytest.mark.parametrize("kind", ["truncated", "foreign"])
def test_a_broken_state_file_is_named_with_its_key(kind, fitted_state, random_weights, tiny_digits_root, tmp_path, monkeypatch):
    if kind == "truncated":
        state = tmp_path / "post_hoc_scores.pth"
        data = open(fitted_state, "rb").read()
        state.write_bytes(data[: len(data) // 2])
        problem = "truncated or not a torch file (no zip directory at its end)"
    else:
        state, problem = random_weights, "a torch file, but not a post-hoc OOD score state"
    before = open(state, "rb").read()
    output = tmp_path / "eval"
    message = _error(
        "train_net",
        ["--config", CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", random_weights,
         "MODEL.OOD.POST_HOC.STATE", str(state), "OUTPUT_DIR", str(output)],
        monkeypatch,
    )
    assert message.startswith(f"error: MODEL.OOD.POST_HOC.STATE {state} ({len(before)} bytes) cannot be read: {problem}")
    assert "write it again with tools/fit_ood_scores.py" in message
    assert open(state, "rb").read() == before and not (output / "ood_results.json").exists()


# ---------------------------------------------------------------- (d) detectron2's own keys


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH=0: must be >= 1"),
        ("INPUT.MIN_SIZE_TRAIN", "(-128,)", "INPUT.MIN_SIZE_TRAIN=(-128,): item -128 must be an integer >= 1 (an image side in pixels)"),
        ("INPUT.MAX_SIZE_TRAIN", "0", "INPUT.MAX_SIZE_TRAIN=0: must be >= 1"),
        ("INPUT.MIN_SIZE_TEST", "-1", "INPUT.MIN_SIZE_TEST=-1: must be >= 0"),
        ("INPUT.MAX_SIZE_TEST", "0", "INPUT.MAX_SIZE_TEST=0: must be >= 1"),
        ("SOLVER.BASE_LR", "0", "SOLVER.BASE_LR=0.0: must be a number > 0.0"),
        ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER=0: must be >= 1"),
        ("SOLVER.STEPS", "(100, 50)", "SOLVER.STEPS=(100, 50): must be strictly increasing"),
        ("SOLVER.WARMUP_ITERS", "-1", "SOLVER.WARMUP_ITERS=-1: must be >= 0"),
    ],
)
def test_detectron2_solver_and_input_keys_are_checked_before_anything_runs(key, value, problem, tmp_path, monkeypatch):
    output = tmp_path / "out"
    message = _error("train_net", ["--config", CONFIG, key, value, "OUTPUT_DIR", str(output)], monkeypatch)
    assert message == f"error: invalid config value: {problem}"
    assert not output.exists()


def test_steps_and_warmup_beyond_max_iter_are_warnings_for_training(caplog):
    from vos_det.config import load_config

    with caplog.at_level(logging.WARNING, logger="vos_det.config.validation"):
        load_config(CONFIG, ["SOLVER.MAX_ITER", "300"], training=True)
    assert "SOLVER.STEPS [1000, 1150] >= SOLVER.MAX_ITER=300: the learning rate never drops there" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vos_det.config.validation"):
        load_config(CONFIG, ["SOLVER.MAX_ITER", "50", "SOLVER.STEPS", "()"], training=True)
    assert "SOLVER.WARMUP_ITERS=100 >= SOLVER.MAX_ITER=50" in caplog.text and "SOLVER.STEPS" not in caplog.text


# ---------------------------------------------------------------- (e) divergence


class _Records(logging.Handler):
    """Collects the records a logger passes to its handlers (after its filters)."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_divergence_ends_in_one_line_and_keeps_the_checkpoints(tiny_digits_root, tmp_path, monkeypatch):
    output = tmp_path / "out"
    argv = ["--config", CONFIG, *TINY, "SOLVER.BASE_LR", "1e6", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(output)]
    train_loop_log, records = logging.getLogger("detectron2.engine.train_loop"), _Records()
    train_loop_log.addHandler(records)
    try:
        message = _error("train_net", argv, monkeypatch)
    finally:
        train_loop_log.removeHandler(records)
    match = re.match(
        r"error: training diverged at iteration (\d+): (.+); the last checkpoint, (\S+), is kept \(rerun with "
        r"--resume to continue from it\); try a lower SOLVER\.BASE_LR \(now 1e\+06\) or a longer "
        r"SOLVER\.WARMUP_ITERS \(now 0\) \(--debug",
        message,
    )
    assert match, message
    iteration, checkpoint = int(match.group(1)), match.group(3)
    assert checkpoint == str(output / f"model_{iteration - 1:07d}.pth")
    assert (output / "last_checkpoint").read_text() == os.path.basename(checkpoint)
    assert "model" in torch.load(checkpoint, weights_only=True)
    assert not [r for r in records.records if r.exc_info], "detectron2 logged the traceback"
    with pytest.raises(TrainingDivergedError):  # --debug: the exception, with its traceback
        _tool("train_net").run(argv + ["--debug", "OUTPUT_DIR", str(tmp_path / "debug")])


def test_divergence_message_names_the_non_finite_losses():
    from vos_det.config import load_config

    cfg = load_config(CONFIG, [])
    for value in ("nan", "np.float64(nan)"):  # NumPy 1 and NumPy 2 reprs in detectron2's message
        error = FloatingPointError(
            f"Loss became infinite or NaN at iteration=7!\nloss_dict = {{'loss_cls': {value}, 'loss_box_reg': 0.5, "
            "'loss_rpn_cls': inf}"
        )
        assert divergence_message(error, 7, "", cfg, last_loss=(6, 12.5)) == (
            "training diverged at iteration 7: loss_cls = nan, loss_rpn_cls = inf; last finite total_loss 12.5 at "
            f"iteration 6; no checkpoint was written before it (SOLVER.CHECKPOINT_PERIOD {cfg.SOLVER.CHECKPOINT_PERIOD}); "
            "try a lower SOLVER.BASE_LR (now 0.02) or a longer SOLVER.WARMUP_ITERS (now 100)"
        )


# ---------------------------------------------------------------- (f) export without weights


def test_export_without_weights_is_refused_unless_random_init(tiny_digits_root, tmp_path, monkeypatch):
    output = tmp_path / "export"
    message = _error("export_model", ["--config", CONFIG, "--output", str(output)], monkeypatch)
    assert message == (
        "error: MODEL.WEIGHTS is not set: give the trained weights (MODEL.WEIGHTS "
        "output/digits_vos_tiny/model_final.pth), or --random-init to export a randomly initialised model "
        "(--debug or VOS_DET_DEBUG=1 for the traceback)"
    )
    assert not output.exists()
    message = _error(
        "export_model", ["--config", CONFIG, "--output", str(output), "--random-init", "MODEL.WEIGHTS", "m.pth"], monkeypatch
    )
    assert message.startswith("error: --random-init exports random weights, but MODEL.WEIGHTS is m.pth")
    assert not output.exists()
    checks = _tool("export_model").run(["--config", CONFIG, "--output", str(output), "--random-init", "--num-check-images", "1"])
    assert len(checks) == 1 and (output / "model.ts").is_file()


def test_torchscript_deprecations_of_the_export_are_filtered(tmp_path):
    path = str(tmp_path / "m.ts")
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), path)

    def deprecations(filtered):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if filtered:
                filter_known_warnings()
            torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), path)
            torch.jit.load(path)
        return [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "torch.jit" in str(w.message)]

    assert any("`torch.jit.load` is deprecated" in m for m in deprecations(filtered=False))  # what users saw
    assert deprecations(filtered=True) == []
