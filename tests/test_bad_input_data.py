"""Robustness to bad input data: huge images, boxes outside the image, images without objects.

Every dataset here is made by the test (a few 128x128 images, VOC xml or COCO json) and
registered under a name of its own, removed afterwards; the model is the digits tiny config
on the CPU with random weights.
"""
import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import register_pascal_voc
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from PIL import Image, ImageDraw

from vos_det.data import DIGITS_DET_ID_CLASSES, register_coco_json_dataset
from vos_det.data.builtin import register_checked_pascal_voc, set_pascal_voc_roles
from vos_det.data.image_io import read_image_file
from vos_det.data.mapper import ImageMappingError
from vos_det.data.pascal_voc import load_voc_dataset
from vos_det.engine import OODPredictor, Trainer
from vos_det.engine.predictor import predict_images

SIDE = 128  # the tiny config's input size (MIN_SIZE_* = MAX_SIZE_* = 128)
HUGE_WIDTH, HUGE_HEIGHT = 6000, 4000
# ResizeShortestEdge(128, max_size=128) of a 6000x4000 image: the long side becomes 128.
RESIZED_HEIGHT, RESIZED_WIDTH = int(HUGE_HEIGHT * SIDE / HUGE_WIDTH + 0.5), SIDE
NUM_CLASSES = len(DIGITS_DET_ID_CLASSES)
VOC_NAME, COCO_NAME = "test_bad_input_voc", "test_bad_input_coco"
BOX_CHECKS_LOGGER = "vos_det.data.box_checks"


# ---------------------------------------------------------------- helpers


def _image(seed, width=SIDE, height=SIDE):
    """A textured image with a few bright rectangles, as a PIL RGB image."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 80, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for x in range(8, width - 30, 40):
        draw.rectangle([x, 20, x + 24, 50], fill=(230, 230, 230))
    return image


def _good_boxes():
    """One box per class, inside a 128x128 image, XYXY: (class index, box)."""
    return [(k, [4 + 24 * k, 10 + 20 * k, 24 + 24 * k, 40 + 20 * k]) for k in range(NUM_CLASSES)]


def _write_voc(root, images, split="train"):
    """A VOC-layout folder; ``images``: file id -> list of (class index, [xmin, ymin, xmax, ymax])."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for seed, (file_id, objects) in enumerate(images.items()):
        _image(seed).save(os.path.join(root, "JPEGImages", f"{file_id}.jpg"), quality=95)
        xml_objects = "".join(
            f"<object><name>{DIGITS_DET_ID_CLASSES[k]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            "<difficult>0</difficult><bndbox>"
            f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object>"
            for k, (x0, y0, x1, y1) in objects
        )
        with open(os.path.join(root, "Annotations", f"{file_id}.xml"), "w") as f:
            f.write(
                f"<annotation><filename>{file_id}.jpg</filename><size><width>{SIDE}</width>"
                f"<height>{SIDE}</height><depth>3</depth></size>{xml_objects}</annotation>"
            )
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(images) + "\n")
    return str(root)


def _write_coco(root, images, annotations):
    """A COCO json + image folder; ``images``: file names; ``annotations``: (image index, class, XYWH)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    for seed, file_name in enumerate(images):
        _image(seed).save(os.path.join(image_dir, file_name))
    coco = {
        "images": [
            {"id": index + 1, "file_name": name, "height": SIDE, "width": SIDE}
            for index, name in enumerate(images)
        ],
        "annotations": [
            {"id": 10 + index, "image_id": image + 1, "category_id": k + 1, "bbox": bbox,
             "area": abs(bbox[2] * bbox[3]), "iscrowd": 0}
            for index, (image, k, bbox) in enumerate(annotations)
        ],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(DIGITS_DET_ID_CLASSES)],
    }
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return json_file, image_dir


def _register_coco(json_file, image_dir):
    register_coco_json_dataset(
        COCO_NAME, json_file, image_dir, ood_role="id", thing_classes=DIGITS_DET_ID_CLASSES
    )


@pytest.fixture
def dataset_names(remove_from_catalogs):
    """Remove the datasets the test registers from the global catalogs, before and after."""
    remove_from_catalogs((VOC_NAME, COCO_NAME))
    yield VOC_NAME, COCO_NAME
    remove_from_catalogs((VOC_NAME, COCO_NAME))


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def box_warnings():
    """The warnings of the box checks' logger (caught on it: "vos_det" may not propagate)."""
    handler = _ListHandler()
    logger = logging.getLogger(BOX_CHECKS_LOGGER)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _record(file_name, annotations, height=SIDE, width=SIDE):
    return {
        "file_name": file_name,
        "image_id": 0,
        "height": height,
        "width": width,
        "annotations": [
            {"bbox": bbox, "bbox_mode": BoxMode.XYXY_ABS, "category_id": k, "iscrowd": 0}
            for k, bbox in annotations
        ],
    }


# ---------------------------------------------------------------- 1. huge images


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """A 6000x4000 PNG, mostly uniform (a few hundred KB on disk) with bright rectangles."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    image = Image.new("RGB", (HUGE_WIDTH, HUGE_HEIGHT), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    for x in range(200, HUGE_WIDTH - 900, 1100):
        draw.rectangle([x, 600, x + 700, 1800], fill=(235, 235, 235))
        draw.rectangle([x + 300, 2400, x + 800, 3600], fill=(150, 150, 150))
    image.save(path, compress_level=1)
    return str(path)


def test_huge_image_is_resized_by_the_training_mapper_and_its_boxes_follow(huge_png, tmp_path, tiny_cfg):
    mapper = DatasetMapper(tiny_cfg(tmp_path), is_train=True)
    box = [3000.0, 2000.0, 4500.0, 3000.0]
    mapped = mapper(_record(huge_png, [(2, box)], HUGE_HEIGHT, HUGE_WIDTH))
    assert tuple(mapped["image"].shape) == (3, RESIZED_HEIGHT, RESIZED_WIDTH)
    scale = torch.tensor([RESIZED_WIDTH / HUGE_WIDTH, RESIZED_HEIGHT / HUGE_HEIGHT] * 2)
    torch.testing.assert_close(
        mapped["instances"].gt_boxes.tensor[0], torch.tensor(box) * scale, rtol=0, atol=1e-3
    )
    assert mapped["instances"].gt_classes.tolist() == [2]


def test_predictor_on_a_huge_image_gives_boxes_in_original_coordinates(huge_png, tmp_path, random_weights, tiny_cfg):
    predictor = OODPredictor(
        tiny_cfg(tmp_path, "MODEL.WEIGHTS", random_weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    )
    huge = predictor.predict_file(huge_png)
    assert huge.image_size == (HUGE_HEIGHT, HUGE_WIDTH)
    # The same model input, given directly at the resized size: its boxes, scaled up, are
    # the huge image's boxes.
    image = read_image_file(huge_png)
    small_image = predictor.aug.get_transform(image).apply_image(image)
    assert small_image.shape == (RESIZED_HEIGHT, RESIZED_WIDTH, 3)
    small = predictor(small_image)["instances"]
    assert len(huge) == len(small) > 0
    scale = torch.tensor([HUGE_WIDTH / RESIZED_WIDTH, HUGE_HEIGHT / RESIZED_HEIGHT] * 2)
    torch.testing.assert_close(huge.pred_boxes.tensor, small.pred_boxes.tensor * scale, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(huge.ood_scores, small.ood_scores)
    boxes = huge.pred_boxes.tensor
    assert boxes[:, 2].max() > RESIZED_WIDTH and boxes[:, 3].max() > RESIZED_HEIGHT
    assert boxes[:, 2].max() <= HUGE_WIDTH and boxes[:, 3].max() <= HUGE_HEIGHT


def test_image_beyond_twice_the_decompression_bomb_limit_is_refused_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 pixels > 2 x 1000
    with pytest.raises(ValueError, match=rf"{path}: image too large .*MAX_IMAGE_PIXELS"):
        read_image_file(str(path))


def test_image_beyond_the_decompression_bomb_limit_is_read_with_a_warning_naming_the_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "large.png"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 6000 < 10000 pixels <= 12000
    with pytest.warns(Image.DecompressionBombWarning, match=rf"{path}: 100x100 image"):
        image = read_image_file(str(path))
    assert image.shape == (100, 100, 3) and image[0, 0].tolist() == [3, 2, 1]


def test_predict_tool_lists_a_too_large_image_under_errors_and_goes_on(tmp_path, random_weights, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    _image(0, width=96, height=96).save(images / "a_normal.png")
    _image(1, width=200, height=150).save(images / "b_too_large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)  # 96*96 < 10000; 2 x 10000 < 200*150
    report = predict_images("digits_vos_tiny.yaml", random_weights, [str(images)], str(tmp_path / "out"))
    assert [entry["file_name"] for entry in report["images"]] == [str(images / "a_normal.png")]
    assert len(report["errors"]) == 1
    error = report["errors"][0]
    assert error["file_name"] == str(images / "b_too_large.png")
    assert str(images / "b_too_large.png") in error["error"] and "too large" in error["error"]


# ---------------------------------------------------------------- 2. boxes outside the image


def test_training_mapper_clips_partial_boxes_and_drops_outside_and_empty_ones(tmp_path, tiny_cfg):
    path = tmp_path / "image.png"
    _image(0).save(path)
    mapper = DatasetMapper(tiny_cfg(tmp_path), is_train=True)
    mapped = mapper(
        _record(
            str(path),
            [
                (0, [-20.0, 10.0, 40.0, 50.0]),  # partly left of the image: clipped
                (1, [100.0, 90.0, 160.0, 140.0]),  # partly right and below: clipped
                (2, [130.0, 10.0, 150.0, 30.0]),  # entirely right of the image: dropped
                (3, [-40.0, -40.0, -5.0, -5.0]),  # entirely above-left: dropped
                (4, [50.0, 50.0, 50.0, 70.0]),  # zero width: dropped
            ],
        )
    )
    instances = mapped["instances"]
    assert instances.gt_classes.tolist() == [0, 1]
    torch.testing.assert_close(
        instances.gt_boxes.tensor, torch.tensor([[0.0, 10.0, 40.0, 50.0], [100.0, 90.0, 128.0, 128.0]])
    )


def test_coco_json_loader_drops_unusable_boxes_naming_the_file_and_annotations(
    tmp_path, dataset_names, box_warnings
):
    json_file, image_dir = _write_coco(
        tmp_path,
        ["a.png", "b.png"],
        [
            (0, 0, [10, 10, 30, 30]),  # #0 good
            (0, 1, [-10, 100, 40, 60]),  # #1 partly outside: kept (the mapper clips it)
            (0, 2, [200, 10, 20, 20]),  # #2 entirely outside: dropped
            (0, 3, [60, 60, -20, 20]),  # #3 negative width: dropped
            (1, 4, [10, 10, 20, 0]),  # #4 zero height: dropped (b.png is left without boxes)
            (1, 0, [float("nan"), 10, 20, 20]),  # #5 not finite: dropped
        ],
    )
    _register_coco(json_file, image_dir)
    records = DatasetCatalog.get(COCO_NAME)
    assert [a["bbox"] for a in records[0]["annotations"]] == [[10, 10, 30, 30], [-10, 100, 40, 60]]
    assert [a["category_id"] for a in records[0]["annotations"]] == [0, 1]
    assert records[1]["annotations"] == []
    (message,) = box_warnings
    assert message.startswith(f"{json_file}: dropped 4 of 6 boxes")
    assert (
        "annotation #2 (id 12, image_id 1) bbox [200.0, 10.0, 20.0, 20.0]: entirely outside the image"
        in message
    )
    assert "annotation #3 (id 13, image_id 1) bbox [60.0, 60.0, -20.0, 20.0]: negative width" in message
    assert "annotation #4 (id 14, image_id 2)" in message and "zero height" in message
    assert "annotation #5 (id 15, image_id 2)" in message and "not finite" in message
    assert "annotation #0" not in message and "annotation #1 " not in message
    # What the mapper would otherwise have done with the negative-width box: flip it into a
    # valid box [40, 60, 60, 80] the annotator never drew.


def test_voc_loader_drops_unusable_boxes_naming_the_xml_file(tmp_path, dataset_names, box_warnings):
    root = _write_voc(
        tmp_path / "voc",
        {
            "img0": [
                (0, [10, 10, 40, 40]),  # good
                (1, [60, 20, 30, 50]),  # xmax < xmin: dropped
                (2, [100, 100, 180, 170]),  # partly outside: kept
            ],
            "img1": [(3, [140, 10, 170, 40])],  # entirely outside: dropped
        },
    )
    register_checked_pascal_voc(VOC_NAME, root, "train", 2012, DIGITS_DET_ID_CLASSES)
    records = DatasetCatalog.get(VOC_NAME)
    assert [a["category_id"] for a in records[0]["annotations"]] == [0, 2]
    assert records[1]["annotations"] == []
    assert MetadataCatalog.get(VOC_NAME).thing_classes == list(DIGITS_DET_ID_CLASSES)
    (message,) = box_warnings
    assert message.startswith(f"{root}: dropped 2 of 4 boxes")
    xml0, xml1 = (os.path.join(root, "Annotations", f"img{i}.xml") for i in range(2))
    assert f"{xml0} object #1 bbox [59.0, 19.0, 30.0, 50.0]: negative width" in message
    assert f"{xml1} object #0 bbox [139.0, 9.0, 170.0, 40.0]: entirely outside the image (128x128)" in message


def test_voc_loader_matches_detectron2_on_valid_data_and_reads_one_image_splits(tmp_path):
    root = _write_voc(tmp_path / "voc", {"img0": _good_boxes(), "img1": [], "img2": [(4, [1, 1, 128, 128])]})
    assert load_voc_dataset(root, "train", DIGITS_DET_ID_CLASSES) == load_voc_instances(
        root, "train", DIGITS_DET_ID_CLASSES
    )
    with open(os.path.join(root, "ImageSets", "Main", "one.txt"), "w") as f:
        f.write("img2\n")
    (record,) = load_voc_dataset(root, "one", DIGITS_DET_ID_CLASSES)
    assert record["image_id"] == "img2" and record["annotations"][0]["bbox"] == [0.0, 0.0, 128.0, 128.0]


def test_voc_loader_errors_name_the_xml_file(tmp_path):
    root = _write_voc(tmp_path / "voc", {"img0": [(0, [10, 10, 40, 40])]})
    xml_file = os.path.join(root, "Annotations", "img0.xml")
    with open(xml_file) as f:
        text = f.read()
    with open(xml_file, "w") as f:
        f.write(text.replace("<name>zero</name>", "<name>seven</name>"))
    with pytest.raises(ValueError, match=rf"{xml_file}: object #0 has class 'seven'"):
        load_voc_dataset(root, "train", DIGITS_DET_ID_CLASSES)
    with open(xml_file, "w") as f:
        f.write(text.replace("<xmax>40</xmax>", ""))
    with pytest.raises(ValueError, match=rf"{xml_file}: no <bndbox/xmax>"):
        load_voc_dataset(root, "train", DIGITS_DET_ID_CLASSES)


def test_detectron2_voc_splits_also_load_through_the_box_checks(tmp_path, box_warnings, remove_from_catalogs):
    name = "voc_2007_test"
    metadata = MetadataCatalog.get(name)
    original = (
        metadata.dirname, metadata.split, metadata.year, list(metadata.thing_classes), metadata.evaluator_type
    )
    root = _write_voc(tmp_path / "VOC2007", {"img0": [(0, [10, 10, 40, 40]), (1, [60, 20, 30, 50])]}, "test")

    def reregister(dirname, split, year, class_names, evaluator_type):
        remove_from_catalogs([name])
        register_pascal_voc(name, dirname, split, year, class_names)  # as detectron2's builtin does
        MetadataCatalog.get(name).evaluator_type = evaluator_type
        set_pascal_voc_roles()

    reregister(root, "test", 2007, DIGITS_DET_ID_CLASSES, "pascal_voc")
    try:
        records = DatasetCatalog.get(name)
        assert [a["category_id"] for a in records[0]["annotations"]] == [0]
        assert MetadataCatalog.get(name).ood_role == "id"
        (message,) = box_warnings
        assert "img0.xml object #1" in message and "negative width" in message
    finally:
        reregister(*original)
    assert MetadataCatalog.get(name).dirname == original[0]


# ---------------------------------------------------------------- 3. images without objects


@pytest.mark.parametrize("kind", ["voc", "coco"])
@pytest.mark.parametrize("filter_empty", [True, False])
def test_images_without_objects_follow_filter_empty_annotations(tmp_path, dataset_names, kind, filter_empty, tiny_cfg):
    if kind == "voc":
        only_bad = [(0, [150, 10, 170, 40])]
        root = _write_voc(tmp_path, {"full": _good_boxes(), "empty": [], "only_bad": only_bad})
        register_checked_pascal_voc(VOC_NAME, root, "train", 2012, DIGITS_DET_ID_CLASSES)
        name = VOC_NAME
    else:
        json_file, image_dir = _write_coco(
            tmp_path, ["full.png", "empty.png", "only_bad.png"],
            [(0, k, [x0, y0, x1 - x0, y1 - y0]) for k, (x0, y0, x1, y1) in _good_boxes()]
            + [(2, 0, [150, 10, 20, 30])],
        )
        _register_coco(json_file, image_dir)
        name = COCO_NAME
    cfg = tiny_cfg(
        tmp_path, "DATASETS.TRAIN", f"('{name}',)", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", str(filter_empty)
    )
    # What Trainer.build_train_loader does.
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    kept = [os.path.splitext(os.path.basename(d["file_name"]))[0] for d in dicts]
    # An image whose only box was unusable counts as an image without objects.
    assert kept == (["full"] if filter_empty else ["full", "empty", "only_bad"])


def _train_cfg(tiny_cfg, output_dir, name, *overrides):
    return tiny_cfg(
        output_dir,
        "DATASETS.TRAIN", f"('{name}',)",
        "DATASETS.TEST", "()",
        "DATASETS.OOD_TEST", "()",
        # These tests register their own data: no digits_det_val to calibrate on.
        "TEST.OOD.CALIBRATION_DATASET", "",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False",
        "SOLVER.IMS_PER_BATCH", "1",
        "SOLVER.MAX_ITER", "6",
        "TEST.EVAL_PERIOD", "0",
        "MODEL.VOS.STARTING_ITER", "0",
        "MODEL.VOS.SAMPLE_NUMBER", "1",
        *overrides,
    )


class _RecordingLoader:
    """Wraps a train loader; records (file name, number of gt instances) of every batch."""

    def __init__(self, loader):
        self.loader = loader
        self.batches = []

    def __iter__(self):
        for batch in self.loader:
            self.batches.append([(os.path.basename(d["file_name"]), len(d["instances"])) for d in batch])
            yield batch


def test_training_on_images_without_objects_and_with_unusable_boxes(tmp_path, dataset_names, tiny_cfg):
    root = _write_voc(
        tmp_path / "voc",
        {
            # all classes, plus a box partly outside and one with swapped corners
            "full": _good_boxes() + [(1, [100, 100, 200, 200]), (2, [60, 20, 30, 50])],
            "empty": [],
            "only_outside": [(0, [150, 10, 170, 40]), (3, [-50, -50, -10, -10])],
        },
    )
    register_checked_pascal_voc(VOC_NAME, root, "train", 2012, DIGITS_DET_ID_CLASSES)
    torch.manual_seed(0)
    trainer = Trainer(_train_cfg(tiny_cfg, tmp_path / "out", VOC_NAME))
    trainer.resume_or_load(resume=False)
    seen = trainer._trainer.data_loader = _RecordingLoader(trainer._trainer.data_loader)
    trainer.train()

    # IMS_PER_BATCH 1: two epochs of the 3 images, each one alone in its batch twice; "full"
    # has its 5 good boxes and the clipped one, the other two images no instance at all.
    batches = [batch[0] for batch in seen.batches]
    assert sorted(batches) == sorted([("full.jpg", 6), ("empty.jpg", 0), ("only_outside.jpg", 0)] * 2)
    history = trainer.storage.history
    for name in ("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_vos"):
        values = [v for v, _ in history(name).values()]
        assert len(values) == 6 and all(math.isfinite(v) for v in values), name
    # The queues (1 feature per class) fill on the first "full" step; from then on synthesis
    # runs on every step, those without objects included. Without ID boxes there is nothing
    # for the uncertainty loss to separate from the outliers: it is exactly 0 there.
    first_full = [file_name for file_name, _ in batches].index("full.jpg")
    active = dict((int(i), v) for v, i in history("vos/synthesis_active").values())
    vos = dict((int(i), v) for v, i in history("loss_vos").values())
    for iteration, (file_name, num_instances) in enumerate(batches):
        assert active[iteration] == float(iteration >= first_full), iteration
        assert (vos[iteration] > 0) == (iteration >= first_full and num_instances > 0), iteration
    assert trainer.model.roi_heads.box_predictor.feature_queues.all_full()


@pytest.mark.parametrize("kind", ["voc", "coco"])
def test_evaluation_of_images_without_ground_truth(tmp_path, dataset_names, kind, random_weights, tiny_cfg):
    if kind == "voc":
        root = _write_voc(tmp_path / "voc", {"full": _good_boxes(), "empty": []}, "test")
        register_checked_pascal_voc(VOC_NAME, root, "test", 2012, DIGITS_DET_ID_CLASSES)
        MetadataCatalog.get(VOC_NAME).set(evaluator_type="pascal_voc", ood_role="id")
        name = VOC_NAME
    else:
        json_file, image_dir = _write_coco(
            tmp_path, ["full.png", "empty.png"],
            [(0, k, [x0, y0, x1 - x0, y1 - y0]) for k, (x0, y0, x1, y1) in _good_boxes()],
        )
        _register_coco(json_file, image_dir)
        name = COCO_NAME
    cfg = tiny_cfg(
        tmp_path / "out",
        "DATASETS.TEST", f"('{name}',)",
        "DATASETS.OOD_TEST", "()",
        "TEST.OOD.CALIBRATION_DATASET", "",
        "TEST.OOD.BOX_SELECTION", "optimal_f1",
        "MODEL.WEIGHTS", random_weights,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    )
    model = build_model(cfg)
    DetectionCheckpointer(model).load(random_weights)
    results = Trainer.test(cfg, model.eval())
    assert set(results[name]["bbox"]) >= {"AP", "AP50", "AP75"}
    assert all(math.isfinite(v) for v in (results[name]["bbox"]["AP"], results[name]["bbox"]["AP50"]))
    if kind == "voc":
        assert math.isfinite(results[name]["voc"]["AP50"])
    with open(tmp_path / "out" / "ood_results.json") as f:
        boxes = json.load(f)["boxes"][name][name]
    assert boxes["images"] == 2 and boxes["detections"] > 0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_on_a_truncated_image_fails_naming_the_file(tmp_path, dataset_names, num_workers, tiny_cfg):
    root = _write_voc(tmp_path / "voc", {"good": _good_boxes(), "broken": _good_boxes()})
    broken = os.path.join(root, "JPEGImages", "broken.jpg")
    with open(broken, "rb") as f:
        data = f.read()
    with open(broken, "wb") as f:
        f.write(data[: len(data) // 3])  # a JPEG cut short: PIL's error does not name it
    register_checked_pascal_voc(VOC_NAME, root, "train", 2012, DIGITS_DET_ID_CLASSES)
    cfg = _train_cfg(tiny_cfg, tmp_path / "out", VOC_NAME, "DATALOADER.NUM_WORKERS", str(num_workers))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(ImageMappingError, match=re.escape(broken)):
        trainer.train()
