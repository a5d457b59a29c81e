"""Every command shown in README.md, datasets/README.md and the pages of docs/ works as written.

The commands are read from the files themselves (indented and ``bash``/``sh`` fenced code
blocks, and inline code spans starting with ``python`` or ``bash``; ``\\`` continuations
joined), so a command added to the docs is picked up without editing this test. Each one is
first *parsed*: its script exists, its options are accepted by the tool's own parser and its
config with its ``KEY VALUE`` overrides loads and validates. Then it is *run* in a scratch
folder on a tiny digits-det (16 training images), with tiny overrides appended (:data:`TINY`,
per tool), in README order, one trained model shared by the commands that use it
(``output/digits_vos_r18/model_final.pth``, as after the main job) — unless a rule of
:data:`PARSE_ONLY` says why it can only be parsed here (GPUs, other machines, datasets that
are not here, a 35-minute benchmark).

A new command whose tool has neither tiny overrides nor a parse-only rule fails, with a
message saying where to add one. Tools with a ``run(argv)`` function are run in this process
(fast); others as a subprocess. Marked ``slow`` where a run trains (about 10-30 s each on
2 cores).
"""
import importlib.util
import json
import math
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vos_det.cli import ToolParser, load_config, split_overrides
from vos_det.lazyconfig import load_lazy_config

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "datasets/README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")))

# Appended to a command of each tool so that it runs in seconds on the tiny data.
_TINY_TRAINING = [
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL.VOS.STARTING_ITER", "1", "MODEL.VOS.SAMPLE_NUMBER", "2",
    "MODEL.VOS.SAMPLE_FROM", "100", "DATALOADER.NUM_WORKERS", "0",
]
_TINY_EVALUATION = [
    "DATALOADER.NUM_WORKERS", "0", "TEST.OOD.PLOTS", "False", "TEST.OOD.BOX_SELECTION", "fixed",
    "TEST.OOD.SCORE_THRESHOLD", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]
TINY = {
    "tools/train_net.py": _TINY_TRAINING + _TINY_EVALUATION,
    "tools/ood_eval.py": _TINY_EVALUATION,
    "tools/predict.py": ["--min-score", "0.0"],
    "tools/fit_mahalanobis.py": ["DATALOADER.NUM_WORKERS", "0"],
    "datasets/prepare_coco_ood.py": [],
    "-m vos_det.data.digits_det": ["--num-train", "16", "--num-val", "2", "--num-test", "4", "--num-ood", "4"],
    "-m vos_det.classification.digits_cls": [],
    # A model of 3 iterations keeps no box at the default score threshold; SAFE fits on the
    # boxes the detector predicts on its training images (the ResNet main job has shortcuts).
    "tools/fit_ood_scores.py": ["DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
    "tools/export_model.py": ["--num-check-images", "1"],
    # LazyConfig overrides (key=value, after the options).
    "tools/lazyconfig_train_net.py": [
        "train.max_iter=3", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0", "model.roi_heads.box_predictor.starting_iter=1",
        "model.roi_heads.box_predictor.sample_number=2", "model.roi_heads.box_predictor.sample_from=100",
        "model.roi_heads.box_predictor.test_score_thresh=0.0", "ood_evaluation.box_selection=fixed",
        "ood_evaluation.score_threshold=0.0", "ood_evaluation.plots=False",
    ],
}

# (regex on the command line, reason): commands that are only parsed here.
PARSE_ONLY = [
    (r"-m bdd100k\.", "the external bdd100k toolkit, not a vos_det command"),
    (r"tools/(install|run_tests)\.sh", "installs the environment / runs the whole test suite (this test is part of it)"),
    (r"tools/run_digits_det\.sh", "the whole main job (install, full data, 1200 iterations); its steps are the commands run here"),
    (r"--num-machines", "several machines"),
    (r"digits_vos_tiny\.yaml --num-gpus [2-9]", "several CPU processes (gloo): tests/test_cpu_multiprocess.py trains and resumes that way"),
    (r"--num-gpus [2-9]|--num-gpus \d\d", "several GPUs"),
    (r"vos_rcnn\.yaml|vanilla_rcnn\.yaml|regnetx|bdd|coco_ood_val|openimages_ood_val",
     "PASCAL VOC / COCO / OpenImages / BDD100k and an R-50 on GPUs: not available here"),
    (r"tools/vos_diagnostics\.py", "needs a model trained past the start of synthesis (full VOS queues), which the "
     "3-iteration model is not; tests/test_vos_diagnostics.py runs the tool's library call end to end"),
    (r"benchmarks/ood_leaderboard\.py", "trains every method for 5 seeds on the full digits-det (hours on 2 cores), "
     "or 3 classifiers on the full digits-cls (~35 min); tests/test_ood_leaderboard.py tests its tables and statistics"),
    (r"benchmarks/run_all\.py", "every speed benchmark at the paper's sizes (minutes); benchmarks/ has its own smoke runs"),
    (r"tools/check_gpu\.py", "needs a GPU (or runs every step of --tiny for minutes); tests/test_gpu_check.py runs "
     "its library call with --device cpu --tiny"),
    (r"/data/|my_ood=", "an example path of the user's own data"),
    (r"tools/make_docs\.py", "rewrites the generated pages of docs/; tests/test_docs.py checks they are current"),
    (r"benchmarks/leaderboard_plots\.py", "redraws the committed forest plot; tests/test_docs_pictures.py draws one"),
]


# prepare_coco_ood.py checks that its input has COCO's names of the VOC classes.
_COCO_NAMES_OF_VOC_CLASSES = [
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "couch", "cow",
    "dining table", "dog", "horse", "motorcycle", "potted plant", "sheep", "train", "tv",
]


@dataclass
class Command:
    """A command of the docs: its file and line, and its words."""

    source: str
    line: int
    words: list

    @property
    def text(self):
        return " ".join(self.words)

    @property
    def tool(self):
        """The script (``tools/x.py``), ``-m module`` or ``bash`` script it runs."""
        words = self.words
        if words[0] == "bash":
            return words[1]
        if len(words) > 2 and words[1] == "-m":
            return f"-m {words[2]}"
        return words[1]

    @property
    def args(self):
        return self.words[3:] if self.tool.startswith("-m ") else self.words[2:]


_COMMAND_START = re.compile(r"^(python3?|\.venv/bin/python|bash)\s")


def _words(text):
    text = re.sub(r"\s+#.*$", "", text.strip())  # a trailing comment
    text = re.sub(r"\s\[[^\]]*\]", "", text)  # [--optional ARGS] of the usage notation
    words = shlex.split(text)
    if words and words[0] in ("python3", ".venv/bin/python"):
        words[0] = "python"
    return words


def read_commands(doc):
    """The commands of one markdown file, in order."""
    commands, lines = [], (REPO / doc).read_text().splitlines()
    fence, i = None, 0
    while i < len(lines):
        line, number = lines[i], i + 1
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            i += 1
            continue
        in_shell_block = (fence in ("", "bash", "sh", "shell", "console")) or (fence is None and line.startswith("    "))
        if in_shell_block and _COMMAND_START.match(stripped):
            text = stripped
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            commands.append(Command(doc, number, _words(text)))
        elif fence is None:
            for span in re.findall(r"`([^`]+)`", line):
                if _COMMAND_START.match(span + " ") and len(span.split()) > 1:
                    commands.append(Command(doc, number, _words(span)))
        i += 1
    return commands


COMMANDS = [command for doc in DOCS for command in read_commands(doc)]


def parse_only_reason(command):
    for pattern, reason in PARSE_ONLY:
        if re.search(pattern, command.text):
            return reason
    return None


def _tool_namespace(script):
    """The names a script defines (``argument_parser``, ``run``...), its ``__main__`` block not run."""
    sys.path.insert(0, str((REPO / script).parent))
    try:
        return runpy.run_path(str(REPO / script), run_name=f"readme_{Path(script).stem}")
    finally:
        sys.path.pop(0)


def check_parses(command):
    """The script exists, the tool's parser accepts the options, the config and overrides load."""
    tool = command.tool
    if tool.startswith("-m "):
        module = tool[3:]
        if module.startswith("vos_det"):
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
        return
    script = REPO / tool
    assert script.is_file(), f"{command.source}:{command.line}: {tool} does not exist"
    if command.words[0] == "bash":
        subprocess.run(["bash", "-n", str(script)], check=True)
        return
    namespace = _tool_namespace(tool)
    parser_factory = namespace.get("argument_parser")
    if parser_factory is None:
        return
    parser = parser_factory()
    args = parser.parse_args(command.args)
    if "load_lazy_config" in namespace:  # a LazyConfig (.py) tool: key=value overrides
        load_lazy_config(args.config_file, args.overrides)
    elif isinstance(parser, ToolParser) and getattr(args, "config_file", None):
        load_config(args.config_file, args.opts)
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, registered_tiny_digits):
    """A scratch folder, made the working directory, with a tiny digits-det under datasets/
    and a tiny COCO json where datasets/README.md reads one."""
    root = tmp_path_factory.mktemp("readme")
    coco = root / "datasets" / "coco" / "annotations"
    coco.mkdir(parents=True)
    names = ["person", "kite", *_COCO_NAMES_OF_VOC_CLASSES]
    (coco / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10},
                   {"id": 2, "file_name": "b.jpg", "height": 10, "width": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
    }))
    previous = os.getcwd()
    os.chdir(root)
    try:
        with registered_tiny_digits(str(root / "datasets"), num_val=2):
            yield root
    finally:
        os.chdir(previous)


# Command lines already run in this session (the main job's training is shared).
_ALREADY_RUN = set()


def _run(command, workspace):
    if tuple(command.words) in _ALREADY_RUN:
        return
    _ALREADY_RUN.add(tuple(command.words))
    tiny = TINY.get(command.tool)
    assert tiny is not None, (
        f"{command.source}:{command.line}: `{command.text}`: add tiny arguments for {command.tool} to TINY, "
        "or a rule with the reason it can only be parsed to PARSE_ONLY, in tests/test_readme_commands.py"
    )
    argv = command.args + tiny
    if command.tool.startswith("tools/") or command.tool.startswith("benchmarks/"):
        namespace = _tool_namespace(command.tool)
        if "run" in namespace:
            namespace["run"](argv)
            return
    if command.tool.startswith("-m vos_det."):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", [command.tool[3:], *argv])
            runpy.run_module(command.tool[3:], run_name="__main__", alter_sys=False)
        return
    env = dict(os.environ, DETECTRON2_DATASETS=str(workspace / "datasets"), PYTHONPATH=str(REPO))
    program = ["-m", command.tool[3:]] if command.tool.startswith("-m ") else [str(REPO / command.tool)]
    result = subprocess.run([sys.executable, *program, *argv], cwd=workspace, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"`{command.text}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_the_docs_show_commands():
    tools = {command.tool for command in COMMANDS}
    assert {"tools/train_net.py", "tools/ood_eval.py", "tools/predict.py", "tools/fit_mahalanobis.py"} <= tools


@pytest.fixture(scope="module")
def main_job_model(workspace):
    """The main job's model, a few iterations on the tiny data: what
    `python tools/train_net.py --config digits_vos_r18.yaml` leaves."""
    _run(Command("README.md", 0, ["python", "tools/train_net.py", "--config", "digits_vos_r18.yaml"]), workspace)
    weights = workspace / "output" / "digits_vos_r18" / "model_final.pth"
    # The OOD flag works out of the box: the threshold calibrated on digits_det_val at the end
    # of training is in model_final.pth itself.
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    assert math.isfinite(float(state["roi_heads.box_predictor.calibrated_ood_threshold"]))
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.source}:{c.line}:{c.tool}" for c in COMMANDS])
def test_readme_command(command, workspace, main_job_model):
    check_parses(command)
    reason = parse_only_reason(command)
    if reason is not None:
        print(f"parsed only ({reason}): {command.text}")
        return
    _run(command, workspace)


def test_options_after_overrides_are_options():
    """The failure that started it all: README's ood_eval command with --calibrate at the end."""
    options, overrides = split_overrides(
        ["--config", "x.yaml", "MODEL.WEIGHTS", "m.pth", "--calibrate", "digits_det_val", "--", "--num-gpus", "1"]
    )
    assert options == ["--config", "x.yaml", "--calibrate", "digits_det_val", "--num-gpus", "1"]
    assert overrides == ["MODEL.WEIGHTS", "m.pth"]
