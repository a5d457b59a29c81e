"""The shared command line (vos_det.cli), config validation, early input checks, checkpoint
errors, drawings and predictions.json ids: each bad input gets a message naming it."""
import errno
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import vos_det.engine.checkpoint as checkpoint_module
from vos_det.cli import ToolParser, merge_overrides, run_tool, split_overrides
from vos_det.config import CONFIGS_DIR, load_config
from vos_det.config.validation import RULES, validate_config
from vos_det.data.availability import check_dataset_files
from vos_det.engine import OODPredictor, instances_to_records
from vos_det.engine.checkpoint import AtomicWritePathManager
from vos_det.engine.trained_model import check_checkpoint_matches_model
from vos_det.errors import ConfigError, UserError
from vos_det.utils.log_noise import filter_known_warnings, strip_ansi
from vos_det.utils.visualization import ID_COLOR, OOD_COLOR, _place_label, draw_ood_detections, label_text

REPO = CONFIGS_DIR.parent
CONFIG = "digits_vos_tiny.yaml"


# ---------------------------------------------------------------- options anywhere


def _parser():
    parser = ToolParser(description="test")
    parser.add_argument("--calibrate", nargs="?", const="", default=None)
    parser.add_argument("--input", nargs="+")
    parser.add_argument("--num-gpus", type=int, default=1)
    return parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", CONFIG, "--calibrate", "val", "--num-gpus", "2", "SOLVER.MAX_ITER", "3", "MODEL.WEIGHTS", "m.pth"],
        ["--config", CONFIG, "SOLVER.MAX_ITER", "3", "MODEL.WEIGHTS", "m.pth", "--calibrate", "val", "--num-gpus", "2"],
        ["SOLVER.MAX_ITER", "3", "--calibrate", "val", "MODEL.WEIGHTS", "m.pth", "--config", CONFIG, "--num-gpus", "2"],
        ["--config", CONFIG, "SOLVER.MAX_ITER", "3", "--", "MODEL.WEIGHTS", "m.pth", "--calibrate", "val", "--num-gpus", "2"],
    ],
)
def test_options_are_read_before_between_and_after_overrides(argv):
    args = _parser().parse_args(argv)
    assert args.config_file == CONFIG and args.calibrate == "val" and args.num_gpus == 2
    assert args.opts == ["SOLVER.MAX_ITER", "3", "MODEL.WEIGHTS", "m.pth"]


def test_overrides_after_a_list_option_are_not_file_names():
    args = _parser().parse_args(["--config", CONFIG, "--input", "a.png", "b/", "MODEL.VOS.SELECT", "2", "--debug"])
    assert args.input == ["a.png", "b/"] and args.opts == ["MODEL.VOS.SELECT", "2"] and args.debug


def test_an_override_value_may_look_like_an_option():
    _, overrides = split_overrides(["MODEL.VOS.LOSS_WEIGHT", "-1.0", "--resume"])
    assert overrides == ["MODEL.VOS.LOSS_WEIGHT", "-1.0"]


def test_a_key_without_value_is_a_parser_error(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--config", CONFIG, "SOLVER.MAX_ITER"])
    assert "config override SOLVER.MAX_ITER has no value" in capsys.readouterr().err


# ---------------------------------------------------------------- keys and values


def test_unknown_key_names_it_with_the_closest_keys():
    with pytest.raises(ConfigError, match=r"unknown config key MODEL\.VOS\.SELCT; did you mean MODEL\.VOS\.SELECT\?"):
        load_config(CONFIG, ["MODEL.VOS.SELCT", "3"])
    with pytest.raises(ConfigError, match=r"unknown config key MODLE\.VOS\.SELECT; did you mean MODEL\.VOS\.SELECT"):
        load_config(CONFIG, ["MODLE.VOS.SELECT", "3"])


def test_unknown_key_in_the_config_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f'_BASE_: "{CONFIGS_DIR / "Digits-Detection" / CONFIG}"\nMODEL:\n  VOS:\n    SAMPLE_NUMBR: 3\n')
    with pytest.raises(ConfigError, match=rf"{path}: unknown config key MODEL\.VOS\.SAMPLE_NUMBR; did you mean MODEL\.VOS\.SAMPLE_NUMBER"):
        load_config(str(path))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MODEL.VOS.SELECT", "abc", r"config key MODEL\.VOS\.SELECT: value 'abc' is not allowed, it must be an integer \(the config has 1\)"),
        ("MODEL.VOS.ENABLED", "yes", r"MODEL\.VOS\.ENABLED: value 'yes' is not allowed, it must be True or False"),
        ("MODEL.VOS.SAMPLE_NUMBER", "2.5", r"MODEL\.VOS\.SAMPLE_NUMBER: value '2\.5' is not allowed, it must be an integer"),
        ("MODEL.VOS", "1", r"config key MODEL\.VOS is a group of keys, set one of them: MODEL\.VOS\.ENABLED"),
    ],
)
def test_wrong_type_names_key_value_and_what_is_allowed(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [key, value])


def test_int_for_float_and_one_name_for_a_list_are_accepted():
    cfg = load_config(CONFIG, ["SOLVER.BASE_LR", "1", "DATASETS.TEST", "digits_det_val"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.DATASETS.TEST == ("digits_det_val",)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["MODEL.VOS.SELECT", "0"], r"MODEL\.VOS\.SELECT=0: must be >= 1"),
        (["MODEL.VOS.SELECT", "20000"], r"MODEL\.VOS\.SELECT=20000 must be <= MODEL\.VOS\.SAMPLE_FROM=10000"),
        (["MODEL.VOS.LOSS_WEIGHT", "-1.0"], r"MODEL\.VOS\.LOSS_WEIGHT=-1\.0: must be >= 0\.0"),
        (["MODEL.VOS.STARTING_ITER", "-5"], r"MODEL\.VOS\.STARTING_ITER=-5: must be >= 0"),
        (["MODEL.VOS.SAMPLE_NUMBER", "0"], r"MODEL\.VOS\.SAMPLE_NUMBER=0: must be >= 1"),
        (["MODEL.OOD.SCORE", "foo"], r"MODEL\.OOD\.SCORE='foo': must be one of vos, energy"),
        (["MODEL.VOS.SAMPLER", "uniform"], r"MODEL\.VOS\.SAMPLER='uniform': must be one of chi2, gaussian"),
        (["TEST.OOD.CALIBRATION_ID_KEEP", "1.5"], r"TEST\.OOD\.CALIBRATION_ID_KEEP=1\.5: must be in \(0\.0, 1\.0\)"),
        (["TEST.OOD.BOX_SELECTION", "best"], r"TEST\.OOD\.BOX_SELECTION='best': must be one of optimal_f1, fixed"),
        (["MODEL.VOS.ENABLED", "False"], r"MODEL\.OOD\.SCORE='vos' needs MODEL\.VOS\.ENABLED True"),
    ],
)
def test_values_out_of_range_fail_when_the_config_is_loaded(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, overrides)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as error:
        load_config(CONFIG, ["MODEL.VOS.SELECT", "0", "MODEL.VOS.LOSS_WEIGHT", "-1.0"])
    assert "MODEL.VOS.SELECT=0" in str(error.value) and "MODEL.VOS.LOSS_WEIGHT=-1.0" in str(error.value)


def test_every_rule_names_an_existing_key():
    cfg = load_config(CONFIG)
    for key in RULES:
        node = cfg
        for name in key.split("."):
            assert name in node, f"RULES has {key}, which the config lacks"
            node = node[name]


def test_synthesis_that_cannot_start_is_a_warning_for_training(caplog):
    with caplog.at_level(logging.WARNING, logger="vos_det.config.validation"):
        load_config(CONFIG, ["SOLVER.MAX_ITER", "100"])
        assert not caplog.records
        load_config(CONFIG, ["SOLVER.MAX_ITER", "100"], training=True)
    assert "MODEL.VOS.STARTING_ITER=800 >= SOLVER.MAX_ITER=100" in caplog.text


def test_the_model_build_checks_its_own_options(tmp_path, tiny_cfg):
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.VOS.SELECT = cfg.MODEL.VOS.SAMPLE_FROM + 1
    with pytest.raises(ValueError, match="must be <= MODEL.VOS.SAMPLE_FROM"):
        build_model(cfg)
    cfg.MODEL.VOS.SELECT = 0
    with pytest.raises(ValueError, match=r"MODEL\.VOS\.SELECT=0: must be >= 1"):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.EMBEDDING.CLASSIFIER", "Cosface", r"MODEL\.EMBEDDING\.CLASSIFIER='Cosface': must be one of .*CosFaceClassifier"),
        ("MODEL.EMBEDDING.LOSSES", ["Center"], r"MODEL\.EMBEDDING\.LOSSES='Center': must be one of CIDERLoss, CenterLoss, SIRENLoss$"),
        ("MODEL.VOS.BOX_PREDICTOR", "VOSOutput", r"MODEL\.VOS\.BOX_PREDICTOR='VOSOutput': must be one of VOSOutputLayers$"),
    ],
)
def test_registry_names_are_checked_when_the_model_is_built(tmp_path, tiny_cfg, key, value, message):
    cfg = tiny_cfg(tmp_path)
    cfg.merge_from_list([key, value])
    validate_config(cfg)  # the config knows no registry, as detectron2's
    with pytest.raises(ConfigError, match=message):
        build_model(cfg)


# ---------------------------------------------------------------- no traceback


def test_run_tool_reports_a_user_error_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("VOS_DET_DEBUG", raising=False)

    def main(args):
        load_config(args.config_file, args.opts)

    with pytest.raises(SystemExit) as exit_info:
        run_tool(main, ToolParser(), ["--config", CONFIG, "MODEL.VOS.SELCT", "3"])
    assert str(exit_info.value) == "error: unknown config key MODEL.VOS.SELCT; did you mean MODEL.VOS.SELECT?"
    with pytest.raises(ConfigError):  # --debug: the exception itself
        run_tool(main, ToolParser(), ["--config", CONFIG, "MODEL.VOS.SELCT", "3", "--debug"])
    monkeypatch.setenv("VOS_DET_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_tool(main, ToolParser(), ["--config", CONFIG, "MODEL.VOS.SELCT", "3"])


def test_command_line_error_has_no_traceback_and_help_no_warning():
    env = dict(os.environ)
    env.pop("VOS_DET_DEBUG", None)
    tool = str(REPO / "tools" / "train_net.py")
    result = subprocess.run(
        [sys.executable, tool, "--config", CONFIG, "MODEL.VOS.SELECT", "0", "--eval-only"],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: invalid config value: MODEL.VOS.SELECT=0: must be >= 1"
    help_result = subprocess.run([sys.executable, tool, "--help"], capture_output=True, text=True, env=env, cwd=REPO)
    assert help_result.returncode == 0 and "KEY VALUE" in help_result.stdout
    assert "Warning" not in help_result.stderr, help_result.stderr


def test_known_third_party_warnings_are_filtered():
    filter_known_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        filter_known_warnings()
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
        warnings.warn("another deprecation", FutureWarning)
    assert [str(w.message) for w in caught] == ["another deprecation"]
    assert strip_ansi("\x1b[32mgreen\x1b[0m text") == "green text"


# ---------------------------------------------------------------- inputs and outputs


def test_missing_dataset_root_points_to_the_datasets_readme(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    MetadataCatalog.get("voc_2007_test")  # registered by detectron2 under ./datasets
    with pytest.raises(FileNotFoundError, match=r"dataset voc_2007_test: .*VOC2007/Annotations not found .*datasets/README\.md"):
        check_dataset_files(["voc_2007_test"])
    with pytest.raises(KeyError, match=r"dataset 'digits_det_tset' is not registered; did you mean digits_det_test"):
        check_dataset_files(["digits_det_tset"])


def test_missing_and_truncated_weights_name_the_file(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"weights file {tmp_path}/nothere\.pth \(MODEL\.WEIGHTS\) not found"):
        check_checkpoint_matches_model(str(tmp_path / "nothere.pth"), model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_good")
    data = (tmp_path / "model_good.pth").read_bytes()
    (tmp_path / "model_cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"weights file {tmp_path}/model_cut\.pth \(MODEL\.WEIGHTS, \d+ bytes\) is truncated"):
        check_checkpoint_matches_model(str(tmp_path / "model_cut.pth"), model)
    (tmp_path / "model_bad.pth").write_bytes(b"\x80" + data[1:1000])  # a broken legacy pickle
    with pytest.raises(UserError, match=rf"weights file {tmp_path}/model_bad\.pth \(\d+ bytes\) cannot be read as a checkpoint"):
        check_checkpoint_matches_model(str(tmp_path / "model_bad.pth"), model)


class _FullDiskFile:
    """An atomic file whose writes fail with ENOSPC after ``limit`` bytes."""

    def __init__(self, file, limit):
        self._file, self._written, self._limit = file, 0, limit

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def write(self, data):
        self._written += len(data)
        if self._written > self._limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._file.write(data)


def test_full_disk_names_the_disk_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, tiny_cfg):
    model = build_model(tiny_cfg(tmp_path))
    checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.path_manager = AtomicWritePathManager(checkpointer.path_manager)
    checkpointer.save("model_0000001")
    before = {name: (tmp_path / name).read_bytes() for name in ("model_0000001.pth", "last_checkpoint")}

    real_atomic_open = checkpoint_module.atomic_open
    monkeypatch.setattr(checkpoint_module, "atomic_open", lambda path, mode: _FullDiskFile(real_atomic_open(path, mode), 1000))
    with pytest.raises(OSError, match=r"no space left on the disk /\S* \(\d+\.\d MiB free\) while writing .*model_0000002\.pth; .*previous checkpoint and last_checkpoint are unchanged") as error:
        checkpointer.save("model_0000002")
    assert error.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no temporary file left
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


# ---------------------------------------------------------------- predictions and drawings


def _instances(size, boxes, is_ood, classes=None):
    n = len(boxes)
    instances = Instances((size, size))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.full((n,), 0.9)
    instances.pred_classes = torch.tensor(classes or [0] * n)
    instances.ood_scores = torch.full((n,), 0.17)
    instances.id_scores = torch.full((n,), 0.83)
    instances.is_ood = torch.tensor(is_ood)
    return instances


def _label_pixels(image, color):
    return np.all(image == np.array(color, dtype=np.uint8), axis=-1)


def test_ood_label_keeps_the_class():
    assert label_text("zero", 0.9, 0.17, True) == "OOD (zero?) 0.17"
    assert label_text("zero", 0.9, 0.17, False) == "zero 0.90"


@pytest.mark.parametrize("size", [64, 640, 5000])
def test_labels_are_inside_the_image_and_scale_with_it(size):
    # A box touching the top-right corner: its label must not run off the image.
    boxes = [[size * 0.8, 0, size - 1, size * 0.2]]
    drawn = draw_ood_detections(np.zeros((size, size, 3), np.uint8), _instances(size, boxes, [True]), ["zero"])
    text_rows, text_cols = np.nonzero(drawn.min(axis=-1) > 150)  # white text, antialiased
    label_rows, label_cols = np.nonzero(_label_pixels(drawn, OOD_COLOR))
    # The white text lies within the label's red background, which ends inside the image.
    assert text_cols.max() < label_cols.max() < size and text_rows.min() > 0
    assert label_cols.min() < size * 0.8  # moved left to fit
    # Text height grows with the image (about a 40th of its side); on a 64-px image the label
    # is shrunk to fit its width, still a few pixels high.
    height = text_rows.max() - text_rows.min() + 1
    assert height >= max(4, size / 80), f"text {height} px high on a {size}-px image"


def test_a_label_never_leaves_the_image():
    for box in ([0, 0, 10, 10], [90, 90, 99, 99], [95, 0, 99, 5], [-5, -5, 120, 120]):
        x, y = _place_label(box, (30, 12), (100, 100), [])
        assert 0 <= x <= 70 and 0 <= y <= 88


def test_labels_of_overlapping_boxes_do_not_overlap():
    size = 400
    boxes = [[100, 100, 200, 200], [105, 105, 205, 205]]
    instances = _instances(size, boxes, [False, False], classes=[0, 1])
    drawn = draw_ood_detections(np.zeros((size, size, 3), np.uint8), instances, ["zero", "one"])
    filled = _label_pixels(drawn, ID_COLOR)
    # Two separate label rectangles: rows where green covers most of a label width, in two bands.
    wide_rows = np.nonzero(filled.sum(axis=1) > 40)[0]
    bands = np.split(wide_rows, np.nonzero(np.diff(wide_rows) > 1)[0] + 1)
    assert len(bands) >= 2


def test_predictions_use_the_dataset_category_ids():
    instances = _instances(100, [[0, 0, 10, 10], [5, 5, 20, 30]], [False, True], classes=[0, 2])
    records = instances_to_records(instances, 7, "a.jpg", ["a", "b", "c"], category_ids=[1, 3, 90])
    assert [(r["category_id"], r["class_index"], r["category_name"]) for r in records] == [(1, 0, "a"), (90, 2, "c")]
    assert records[1]["bbox"] == [5.0, 5.0, 15.0, 25.0] and records[1]["is_ood"] is True
    plain = instances_to_records(instances, 7, "a.jpg", ["a", "b", "c"])
    assert [r["category_id"] for r in plain] == [0, 2]


def test_predictor_warns_once_without_a_calibrated_threshold(tmp_path, caplog, tiny_cfg):
    cfg = tiny_cfg(tmp_path)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("uncalibrated")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "uncalibrated.pth")
    with caplog.at_level(logging.WARNING, logger="vos_det.engine.predictor"):
        OODPredictor(cfg)
    assert caplog.text.count("holds no calibrated OOD threshold") == 1 and "--calibrate" in caplog.text
    caplog.clear()
    cfg.MODEL.OOD.USE_CALIBRATED_THRESHOLD = False  # an explicit threshold: no warning
    with caplog.at_level(logging.WARNING, logger="vos_det.engine.predictor"):
        OODPredictor(cfg)
    assert "calibrated" not in caplog.text


def test_missing_weights_are_named_before_the_model_is_built(tmp_path, tiny_cfg):
    cfg = tiny_cfg(tmp_path)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"weights file .*missing\.pth \(MODEL\.WEIGHTS\) not found"):
        OODPredictor(cfg)


def test_merge_overrides_on_a_plain_config():
    cfg = load_config(CONFIG, freeze=False)
    merge_overrides(cfg, ["SEED", "3", "OUTPUT_DIR", "x"])
    assert cfg.SEED == 3 and cfg.OUTPUT_DIR == "x"
    validate_config(cfg)
