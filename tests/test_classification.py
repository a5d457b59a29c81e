"""Tests of vos_det.classification: the whole-image-box classifier, its data and its trainer."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import vos_det.classification  # noqa: F401  (registers the meta-architecture and datasets)
from vos_det.classification import (
    ClassificationDatasetMapper,
    ClassificationTrainer,
    generate_digits_cls,
    is_image_classifier,
    load_image_folder,
    register_image_folder,
    register_image_folders_from_config,
    whole_image_boxes,
)
from vos_det.classification.builtin import DIGITS_CLS_DATASETS
from vos_det.classification.digits_cls import DIGITS_CLS_SPLITS, digits_cls_paths
from vos_det.config import load_config
from vos_det.data import glyph_indices_per_split
from vos_det.evaluation import OOD_RESULTS_FILE

CLASSES = ("circle", "square", "stripes")
IMAGES_PER_CLASS = 4
STARTING_ITER = 3
MAX_ITER = 6
SCORES_WITH_VOS = {"msp", "energy", "weighted_energy", "vos", "vos_release"}
DATASET_NAMES = ("test_cls_train", "test_cls_test", "test_cls_ood")


def _cfg(*overrides):
    return load_config(
        "digits_vos_classifier.yaml",
        [
            "MODEL.VOS_CLASSIFIER.NUM_CLASSES", str(len(CLASSES)),
            "MODEL.VOS.STARTING_ITER", str(STARTING_ITER),
            "MODEL.VOS.SAMPLE_NUMBER", str(IMAGES_PER_CLASS),
            "MODEL.VOS.SAMPLE_FROM", "200",
            "SOLVER.MAX_ITER", str(MAX_ITER),
            "SOLVER.IMS_PER_BATCH", str(len(CLASSES) * IMAGES_PER_CLASS),
            "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "()",
            "SOLVER.BASE_LR", "0.01",
            "SOLVER.CHECKPOINT_PERIOD", "1000",
            "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.TRAIN", "('test_cls_train',)",
            "DATASETS.TEST", "('test_cls_test',)",
            "DATASETS.OOD_TEST", "('test_cls_ood',)",
            *overrides,
        ],
        freeze=False,
    )


def _pattern_image(class_index, seed, size):
    """A small RGB image whose pattern depends on the class, of the given (height, width)."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    if class_index == 0:
        pattern = ((rows - 0.5) ** 2 + (cols - 0.5) ** 2 < 0.1).astype(float)
    elif class_index == 1:
        pattern = ((abs(rows - 0.5) < 0.3) & (abs(cols - 0.5) < 0.3)).astype(float)
    else:
        pattern = (np.sin(cols * 25) > 0).astype(float)
    image = pattern[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 0.05, (height, width, 3))
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def _write_image_folder(root, classes, images_per_class, seed=0):
    for class_index, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for index in range(images_per_class):
            size = (20 + 3 * index, 28 + 5 * class_index)
            _pattern_image(class_index % 3, seed + 100 * class_index + index, size).save(
                os.path.join(root, name, f"{index:03d}.png")
            )
    return str(root)


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """Tiny ID train / test ImageFolders and a flat OOD folder, registered for the module."""
    base = tmp_path_factory.mktemp("image_folders")
    train = _write_image_folder(base / "train", CLASSES, IMAGES_PER_CLASS, seed=0)
    test = _write_image_folder(base / "test", CLASSES, 2, seed=1000)
    ood = base / "ood"
    ood.mkdir()
    for index in range(4):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            ood / f"noise_{index}.png"
        )
    register_image_folder("test_cls_train", train)
    register_image_folder("test_cls_test", test)
    register_image_folder("test_cls_ood", str(ood), ood_role="ood", id_dataset="test_cls_train")
    yield {"train": train, "test": test, "ood": str(ood)}
    for name in DATASET_NAMES:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _batch(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8),
            "class_id": i % len(CLASSES),
        }
        for i, (h, w) in enumerate(sizes)
    ]


def _captured_boxes(model, batch):
    """The boxes the model's ROIPooler receives for a batch (one Boxes per image)."""
    captured = []
    handle = model.pooler.register_forward_hook(
        lambda module, args, output: captured.append((args[1], output))
    )
    with torch.no_grad():
        model.eval()(batch)
    handle.remove()
    return captured[0]


# --- the whole-image box ------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[(32, 32)], [(20, 36), (33, 17)], [(64, 48), (7, 90), (128, 128)]])
def test_whole_image_boxes_are_the_unpadded_image_extent(sizes):
    boxes = whole_image_boxes(sizes)
    for (height, width), box in zip(sizes, boxes):
        assert box.tensor.tolist() == [[0.0, 0.0, float(width), float(height)]]

    torch.manual_seed(0)
    model = build_model(_cfg())
    box_lists, pooled = _captured_boxes(model, _batch(sizes))
    for (height, width), box in zip(sizes, box_lists):
        # The image's own extent, not the padded batch tensor's.
        assert box.tensor.tolist() == [[0.0, 0.0, float(width), float(height)]]
    resolution = model.pooler.output_size
    assert pooled.shape == (len(sizes), 64, *resolution)


@pytest.mark.parametrize("image_size", [(32, 32), (24, 40), (50, 30)])
def test_mapper_resizes_and_the_box_covers_the_resized_image(image_folders, image_size):
    cfg = _cfg("INPUT.CLASSIFICATION.IMAGE_SIZE", str(image_size))
    mapper = ClassificationDatasetMapper(cfg, is_train=False)
    records = DatasetCatalog.get("test_cls_train")
    assert len({(r["height"], r["width"]) for r in records}) > 1  # the files differ in size
    inputs = [mapper(record) for record in records[:3]]
    height, width = image_size
    for mapped, record in zip(inputs, records):
        assert mapped["image"].shape == (3, height, width) and mapped["image"].dtype == torch.uint8
        assert (mapped["height"], mapped["width"]) == (record["height"], record["width"])
        assert mapped["class_id"] == record["class_id"]
    torch.manual_seed(0)
    box_lists, _ = _captured_boxes(build_model(cfg), inputs)
    for box in box_lists:
        assert box.tensor.tolist() == [[0.0, 0.0, float(width), float(height)]]


def test_random_crop_keeps_the_size():
    mapper = ClassificationDatasetMapper(is_train=True, image_size=(16, 16), crop_padding=3)
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    crops = {mapper._random_crop(image).tobytes() for _ in range(20)}
    assert all(len(c) == image.nbytes for c in crops) and len(crops) > 1


# --- training and outputs -------------------------------------------------------------------


def test_loss_vos_is_zero_in_the_graph_before_synthesis():
    torch.manual_seed(0)
    model = build_model(_cfg()).train()
    with EventStorage(0):
        losses = model(_batch([(32, 32)] * 6))
    assert set(losses) == {"loss_cls", "loss_vos"}
    assert float(losses["loss_vos"]) == 0.0 and losses["loss_vos"].requires_grad
    sum(losses.values()).backward()
    predictor = model.predictor
    assert predictor.energy_weights.grad is not None
    assert predictor.uncertainty_classifier.weight.grad is not None


def test_training_starts_vos_at_starting_iter_and_evaluates(image_folders, tmp_path):
    torch.manual_seed(0)
    trainer = ClassificationTrainer(
        _cfg(
            "OUTPUT_DIR", str(tmp_path),
            "TEST.OOD.CALIBRATION_DATASET", "test_cls_train",
            "TEST.OOD.PLOTS", "True",
        )
    )
    trainer.resume_or_load(resume=False)
    trainer.train()

    history = {int(i): v for v, i in trainer.storage.history("loss_vos").values()}
    assert sorted(history) == list(range(MAX_ITER))
    # One batch is the whole training set, so every queue is full after the first step.
    assert all(history[i] == 0.0 for i in range(STARTING_ITER))
    assert all(history[i] > 0.0 for i in range(STARTING_ITER, MAX_ITER))
    assert trainer.model.predictor.feature_queues.all_full()

    with open(tmp_path / OOD_RESULTS_FILE) as f:
        report = json.load(f)
    results = report["results"]
    assert 0.0 <= results["test_cls_test"]["classification"]["accuracy"] <= 100.0
    per_score = results["ood"]["test_cls_test"]["test_cls_ood"]
    assert set(per_score) == SCORES_WITH_VOS
    for metrics in per_score.values():
        assert 0.0 <= metrics["FPR95"] <= 100.0 and 0.0 <= metrics["AUROC"] <= 100.0
        assert metrics["num_id"] == len(CLASSES) * 2 and metrics["num_ood"] == 4
    assert "images" in report["convention"]
    # The OOD threshold was calibrated on the (ID) training images and saved with the model.
    assert results["calibration"]["kept_percent"] >= 95.0
    predictor = trainer.model.predictor
    assert predictor.current_ood_threshold() == pytest.approx(results["calibration"]["threshold"])
    assert (tmp_path / "model_calibrated.pth").is_file()
    assert report["plots"] and all(os.path.isfile(path) for path in report["plots"])


@pytest.mark.parametrize("vos_enabled", [True, False])
def test_inference_outputs(vos_enabled):
    overrides = [] if vos_enabled else ["MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "energy"]
    torch.manual_seed(0)
    model = build_model(_cfg(*overrides)).eval()
    sizes = [(32, 32), (32, 32), (20, 44)]
    with torch.no_grad():
        outputs = model(_batch(sizes))
    assert len(outputs) == len(sizes)
    num_classes = len(CLASSES)
    for output in outputs:
        result = output["classification"]
        assert result["scores"].shape == (num_classes,)
        assert torch.all(result["scores"] >= 0)
        assert torch.isclose(result["scores"].sum(), torch.tensor(1.0))
        assert result["pred_class"].shape == () and result["pred_class"].dtype == torch.int64
        assert int(result["pred_class"]) == int(result["scores"].argmax())
        assert result["id_score"].shape == () and 0.0 <= float(result["id_score"]) <= 1.0
        assert result["is_ood"].dtype == torch.bool
        scores = result["ood_scores"]
        assert set(scores) == (SCORES_WITH_VOS if vos_enabled else {"msp", "energy"})
        assert all(value.shape == () and torch.isfinite(value) for value in scores.values())
        assert -1.0 <= float(scores["msp"]) <= -1.0 / num_classes + 1e-6
        if vos_enabled:
            assert torch.isclose(result["ood_score"], scores["vos"])
            assert torch.isclose(scores["vos"], 1.0 - result["id_score"])
        else:
            assert torch.isclose(result["ood_score"], scores["energy"])
            assert torch.isclose(result["id_score"], torch.sigmoid(-scores["energy"]))
        threshold = model.predictor.current_ood_threshold()
        assert bool(result["is_ood"]) == bool(result["ood_score"] > threshold)


def test_vanilla_has_no_vos_loss_nor_vos_parameters():
    model = build_model(_cfg("MODEL.VOS.ENABLED", "False", "MODEL.OOD.SCORE", "energy")).train()
    with EventStorage(0):
        losses = model(_batch([(32, 32)] * 3))
    assert set(losses) == {"loss_cls"}
    names = [name for name, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not any("energy_weights" in name or "feature_queues" in name for name in names)


def test_projection_dim_sets_the_queued_feature_dimension():
    model = build_model(_cfg("MODEL.VOS_CLASSIFIER.PROJECTION_DIM", "16"))
    assert model.predictor.cls_score.in_features == 16
    assert model.predictor.feature_queues.features.shape == (len(CLASSES), IMAGES_PER_CLASS, 16)


def test_trainer_is_chosen_by_meta_architecture():
    assert is_image_classifier(_cfg())
    assert not is_image_classifier(load_config("digits_vos_tiny.yaml"))


def test_class_count_differing_from_the_dataset_is_refused(image_folders, tmp_path):
    with pytest.raises(ValueError, match="NUM_CLASSES=4 but dataset 'test_cls_train' has 3 classes"):
        ClassificationTrainer(_cfg("MODEL.VOS_CLASSIFIER.NUM_CLASSES", "4", "OUTPUT_DIR", str(tmp_path)))


# --- ImageFolder loading and its errors ---------------------------------------------------------


def test_image_folder_records(image_folders):
    records, class_names = load_image_folder(image_folders["train"])
    assert class_names == sorted(CLASSES)
    assert len(records) == len(CLASSES) * IMAGES_PER_CLASS
    first = records[0]
    assert set(first) == {"file_name", "image_id", "height", "width", "class_id"}
    assert first["image_id"] == os.path.join(class_names[0], "000")
    assert (first["height"], first["width"]) == (20, 28)
    for record in records:
        assert class_names[record["class_id"]] == os.path.basename(os.path.dirname(record["file_name"]))
    metadata = MetadataCatalog.get("test_cls_ood")
    assert metadata.ood_role == "ood" and metadata.id_dataset == "test_cls_train"
    assert MetadataCatalog.get("test_cls_train").ood_role == "id"
    assert {r["class_id"] for r in DatasetCatalog.get("test_cls_ood")} == {-1}


def test_empty_class_folder_is_named(tmp_path):
    root = _write_image_folder(tmp_path / "data", ("a", "b"), 1)
    (tmp_path / "data" / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty_class is empty"):
        load_image_folder(root)


def test_unreadable_image_is_named(tmp_path):
    root = _write_image_folder(tmp_path / "data", ("a", "b"), 2)
    broken = tmp_path / "data" / "b" / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=f"{broken}: cannot read image"):
        load_image_folder(root)


def test_truncated_image_is_named_by_the_mapper(tmp_path):
    path = tmp_path / "truncated.png"
    _pattern_image(0, 0, (32, 32)).save(path)
    path.write_bytes(path.read_bytes()[:60])  # the header survives, the pixels do not
    record = {"file_name": str(path), "image_id": "t", "height": 32, "width": 32, "class_id": 0}
    mapper = ClassificationDatasetMapper(is_train=False, image_size=(32, 32))
    with pytest.raises(ValueError, match=f"{path}: cannot read image"):
        mapper(record)


def test_no_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    _pattern_image(0, 0, (8, 8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ValueError, match=f"{tmp_path / 'flat'}: no class folders"):
        load_image_folder(str(tmp_path / "flat"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(str(tmp_path / "nothing"), allow_flat=True)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_image_folder(str(tmp_path / "missing"))


def test_folder_outside_the_class_list_is_refused(tmp_path):
    root = _write_image_folder(tmp_path / "data", ("a", "z"), 1)
    with pytest.raises(ValueError, match=r"class folders \['z'\] are not among"):
        load_image_folder(root, class_names=["a", "b"])


def test_image_folders_from_config(tmp_path):
    root = _write_image_folder(tmp_path / "data", ("a", "b"), 1)
    cfg = _cfg("DATASETS.IMAGE_FOLDERS", f"('cfg_cls_train:id:{root}', 'cfg_cls_ood:ood:{root}')")
    cfg.DATASETS.TRAIN = ("cfg_cls_train",)
    try:
        register_image_folders_from_config(cfg)
        register_image_folders_from_config(cfg)  # again: a no-op
        assert MetadataCatalog.get("cfg_cls_train").thing_classes == ["a", "b"]
        assert MetadataCatalog.get("cfg_cls_ood").ood_role == "ood"
        assert MetadataCatalog.get("cfg_cls_ood").id_dataset == "cfg_cls_train"
        with pytest.raises(ValueError, match="already registered"):
            register_image_folder("cfg_cls_train", str(tmp_path))
    finally:
        for name in ("cfg_cls_train", "cfg_cls_ood"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    cfg.DATASETS.IMAGE_FOLDERS = ("only_a_name",)
    with pytest.raises(ValueError, match="not NAME:ROLE:PATH"):
        register_image_folders_from_config(cfg)


# --- digits-cls ---------------------------------------------------------------------------------


def test_digits_cls_uses_the_digits_det_glyph_pools(tmp_path):
    dataset_dir = generate_digits_cls(str(tmp_path), image_size=16)
    assert generate_digits_cls(str(tmp_path), image_size=16) == dataset_dir  # already there
    paths = digits_cls_paths(str(tmp_path))
    pools = glyph_indices_per_split(0)
    glyphs_of_split = {}
    for split, (pool, _) in DIGITS_CLS_SPLITS.items():
        records, class_names = load_image_folder(paths.split_dir(split))
        glyphs = {int(os.path.splitext(os.path.basename(r["file_name"]))[0]) for r in records}
        assert glyphs <= set(pools[pool].tolist())
        glyphs_of_split[split] = glyphs
        assert {(r["height"], r["width"]) for r in records} == {(16, 16)}
    assert class_names == sorted(("five", "six", "seven", "eight", "nine"))
    id_classes = DIGITS_CLS_DATASETS["digits_cls_train"][2]
    train_records, _ = load_image_folder(paths.split_dir("train"), id_classes)
    digits = load_digits().target
    for record in train_records:
        glyph = int(os.path.splitext(os.path.basename(record["file_name"]))[0])
        assert digits[glyph] == record["class_id"]
    assert not glyphs_of_split["train"] & (glyphs_of_split["test"] | glyphs_of_split["ood"])
    assert not glyphs_of_split["test"] & glyphs_of_split["ood"]
    assert len(glyphs_of_split["test"] | glyphs_of_split["ood"]) == len(pools["test"])
    image = Image.open(records[0]["file_name"])
    assert image.mode == "RGB"
    for name, (_, role, classes) in DIGITS_CLS_DATASETS.items():
        metadata = MetadataCatalog.get(name)
        assert metadata.ood_role == role and metadata.thing_classes == list(classes)
