"""The commands of docs/paper.md ("Reproducing the paper") run end to end, as written, on
tiny generated PASCAL VOC 2007 / 2012, COCO, OpenImages and BDD100k folders.

The commands are read from the page itself (up to its first "##" section). Each one runs with tiny overrides
appended (:data:`TINY_TRAINING`, :data:`TINY`; ``--num-gpus N`` dropped: one CPU process) in
one subprocess whose working directory holds the generated ``datasets/`` (the default
``DETECTRON2_DATASETS``), so the built-in dataset names, the ``datasets/...`` paths of the
commands and the ``output/...`` folders of the configs resolve as they would for a user.
"""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from PIL import Image

from vos_det.data.builtin import BDD100K_CLASSES

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "paper.md"
SECTION = "# Reproducing the paper"
SIDE = 64

# Appended to every command: a CPU run on 64-pixel images, every detection kept.
TINY = [
    "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.OOD.PLOTS", "False",
]
# Appended to the training commands: two iterations from random weights (the ImageNet
# weights the recipes name cannot be downloaded here).
TINY_TRAINING = [
    "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.0001", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL.VOS.STARTING_ITER", "1",
    "MODEL.VOS.SAMPLE_NUMBER", "1", "MODEL.VOS.SAMPLE_FROM", "100",
]

# Runs the commands (a JSON list of argument lists) in this process, one after the other.
_DRIVER = """
import json, runpy, sys
tools = {}
for argv in json.loads(sys.argv[1]):
    script = argv[1]
    if script not in tools:
        tools[script] = runpy.run_path(sys.argv[2] + "/" + script, run_name="reproduce_paper")
    print("=== running:", " ".join(argv), flush=True)
    tools[script]["run"](argv[2:])
"""


def readme_commands():
    """The ``python tools/...`` commands of the page's first section, ``\\`` continuations joined."""
    text = PAGE.read_text()
    assert SECTION in text, f"{PAGE} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands, pending = [], ""
    for line in section.splitlines():
        if not line.startswith("    "):
            pending = ""
            continue
        stripped = (pending + " " + line.strip()).strip()
        if stripped.endswith("\\"):
            pending = stripped[:-1]
            continue
        pending = ""
        if stripped.startswith("python tools/"):
            commands.append(shlex.split(stripped))
    return commands


def _without_num_gpus(words):
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--num-gpus":
            skip = True
        else:
            kept.append(word)
    return kept


def _image(path, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)


def _objects(seed, class_names):
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(2):
        x0, y0 = rng.integers(1, SIDE // 2, size=2)
        w, h = rng.integers(12, SIDE // 2, size=2)
        objects.append((str(class_names[rng.integers(len(class_names))]), [int(x0), int(y0), int(x0 + w), int(y0 + h)]))
    return objects


def _voc(root, year, splits):
    """A VOC<year> folder; ``splits``: split -> number of images."""
    folder = root / f"VOC{year}"
    os.makedirs(folder / "Annotations", exist_ok=True)
    os.makedirs(folder / "ImageSets" / "Main", exist_ok=True)
    for split, count in splits.items():
        ids = [f"{year}_{split}_{i}" for i in range(count)]
        for seed, file_id in enumerate(ids):
            _image(str(folder / "JPEGImages" / f"{file_id}.jpg"), seed + year)
            objects = "".join(
                f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
                f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                for name, (x0, y0, x1, y1) in _objects(seed + year, VOC_CLASSES)
            )
            (folder / "Annotations" / f"{file_id}.xml").write_text(
                f"<annotation><filename>{file_id}.jpg</filename><size><width>{SIDE}</width>"
                f"<height>{SIDE}</height><depth>3</depth></size>{objects}</annotation>"
            )
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _coco_json(path, image_dir, count, class_names, seed):
    """A COCO json of ``count`` images (written to ``image_dir``), objects of ``class_names``."""
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(class_names)]
    images, annotations = [], []
    for i in range(count):
        file_name = f"{seed}_{i}.jpg"
        _image(os.path.join(image_dir, file_name), seed + i)
        images.append({"id": i + 1, "file_name": file_name, "height": SIDE, "width": SIDE})
        for name, (x0, y0, x1, y1) in _objects(seed + i, class_names):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": class_names.index(name) + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _tiny_datasets(root):
    """Every dataset the commands name, a few 64-pixel images each, in the documented layout."""
    _voc(root, 2007, {"trainval": 2, "test": 2})
    _voc(root, 2012, {"trainval": 2})
    ood_classes = ["giraffe", "kite"]
    annotations = root / "coco" / "annotations"
    coco_images = str(root / "coco" / "val2017")
    _coco_json(str(annotations / "instances_val2017_ood_wrt_voc.json"), coco_images, 2, ood_classes, 100)
    _coco_json(str(annotations / "instances_val2017_ood_wrt_bdd_rm_overlap.json"), coco_images, 2, ood_classes, 200)
    openimages = root / "OpenImages" / "ood_classes_rm_overlap"
    _coco_json(str(openimages / "COCO-Format" / "val_coco_format.json"), str(openimages / "images"), 2, ["jellyfish"], 300)
    for split, seed in (("train", 400), ("val", 500)):
        labels = root / "bdd100k" / "labels" / "det_20" / f"det_{split}_cocofmt.json"
        _coco_json(str(labels), str(root / "bdd100k" / "images" / "100k" / split), 2, list(BDD100K_CLASSES), seed)


def test_readme_lists_every_recipe():
    configs = {words[words.index("--config") + 1] for words in readme_commands()}
    assert configs == {
        f"{folder}/{name}.yaml"
        for folder, names in (("VOC-Detection", ("vos_rcnn", "vanilla_rcnn", "vos_regnetx", "vanilla_regnetx")),
                              ("BDD-Detection", ("vos_rcnn", "vanilla_rcnn")))
        for name in names
    }


def test_reproduction_commands_run_end_to_end(tmp_path):
    _tiny_datasets(tmp_path / "datasets")
    runs = []
    for words in readme_commands():
        argv = _without_num_gpus(words) + TINY
        if words[1] == "tools/train_net.py":
            argv += TINY_TRAINING
        runs.append(argv)
    env = {**os.environ, "DETECTRON2_DATASETS": "datasets", "VOS_DET_DEBUG": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(runs), str(REPO)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    for words in readme_commands():
        config = words[words.index("--config") + 1]
        stem = f"{'voc' if config.startswith('VOC') else 'bdd'}_{Path(config).stem}"
        report_dir = tmp_path / "output" / stem
        if words[1] == "tools/ood_eval.py":
            report_dir = report_dir / "ood_eval"
        else:
            assert (report_dir / "model_final.pth").is_file(), stem
        report = json.loads((report_dir / "ood_results.json").read_text())
        assert report["protocol"]["name"] == "vos_official", stem
        id_set = "voc_2007_test" if stem.startswith("voc") else "bdd100k_val"
        assert report["box_selection"][id_set]["score_field"] == "proposal_scores"
        expected_ood = {"coco_ood_val", "openimages_ood_val"} if stem.startswith("voc") else set()
        if words[1] == "tools/ood_eval.py" and stem.startswith("bdd"):
            expected_ood = {"coco_ood_wrt_bdd", "openimages_ood_val"}
        assert set(report["boxes"][id_set]) == {id_set} | expected_ood, stem
