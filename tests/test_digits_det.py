"""Tests of the digits-det generator and its registration in detectron2's catalogs."""
import hashlib
import itertools
import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_voc_instances
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from sklearn.datasets import load_digits

from vos_det.data import DIGITS_DET_ID_CLASSES, DIGITS_DET_OOD_CLASSES, generate_digits_det
from vos_det.data.builtin import register_all_digits_det
from vos_det.data.digits_det import (
    DIGITS_DET_FAR_OOD_CLASSES,
    DIGITS_DET_OOD_VAL_CLASSES,
    digits_det_paths,
    glyph_indices_per_split,
)
from vos_det.data import digits_det_objects
from vos_det.data.digits_det_canvases import SHIFTED_CANVAS_STYLES
from vos_det.data.digits_det_glyphs import ID_DIGITS, load_glyphs
from vos_det.data.digits_det_objects import (
    glyph_picker,
    matched_shape_picker,
    shape_glyph,
    shape_picker,
)
from vos_det.data.digits_det_render import render_image
from vos_det.data.digits_det_shapes import TEST_SHAPES, VALIDATION_SHAPES, render_shape, sample_shape

SMALL_SIZES = {"num_train": 6, "num_val": 3, "num_test": 3, "num_ood": 4}
IMAGE_SIZE = 128
VOC_SPLITS = ("train", "val", "test")
NUM_DIGITS = len(DIGITS_DET_ID_CLASSES) + len(DIGITS_DET_OOD_CLASSES)
# Width in pixels of the band around a box that stands for the local background.
BACKGROUND_RING_WIDTH = 3
# Percentile of the per-pixel deviation from the local background compared inside and around a box.
DEVIATION_PERCENTILE = 90


def generate_small(root, **overrides):
    """Generate a small digits-det under ``root`` (sizes of SMALL_SIZES unless overridden)."""
    return generate_digits_det(str(root), **{**SMALL_SIZES, **overrides})


def file_mtimes(folder):
    """Map every file under ``folder`` to its modification time in ns."""
    return {
        os.path.join(dirpath, name): os.stat(os.path.join(dirpath, name)).st_mtime_ns
        for dirpath, _, names in os.walk(folder)
        for name in names
    }


def annotation_files(dataset_dir):
    """Map the name of every annotation file (VOC XML and COCO json) of a dataset to its bytes."""
    annotation_dir = os.path.join(dataset_dir, "voc", "Annotations")
    contents = {}
    for name in sorted(os.listdir(annotation_dir)):
        with open(os.path.join(annotation_dir, name), "rb") as f:
            contents[name] = f.read()
    with open(os.path.join(dataset_dir, "ood", "annotations.json"), "rb") as f:
        contents["annotations.json"] = f.read()
    return contents


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """A datasets root holding a small digits-det made with seed 0."""
    root = tmp_path_factory.mktemp("datasets")
    generate_small(root)
    return str(root)


def test_files_exist_in_both_layouts(small_root):
    paths = digits_det_paths(small_root)
    for split in VOC_SPLITS:
        with open(os.path.join(paths.voc_dir, "ImageSets", "Main", f"{split}.txt")) as f:
            image_ids = f.read().split()
        assert len(image_ids) == SMALL_SIZES[f"num_{split}"]
        for image_id in image_ids:
            assert os.path.isfile(os.path.join(paths.voc_dir, "JPEGImages", f"{image_id}.jpg"))
            assert os.path.isfile(os.path.join(paths.voc_dir, "Annotations", f"{image_id}.xml"))
    assert len(os.listdir(paths.ood_image_dir)) == SMALL_SIZES["num_ood"]
    assert os.path.isfile(paths.ood_json)
    with open(paths.meta_json) as f:
        assert json.load(f)["num_train"] == SMALL_SIZES["num_train"]


@pytest.mark.parametrize("split", VOC_SPLITS)
def test_voc_split_has_id_digits_in_disjoint_boxes_around_the_glyphs(small_root, split):
    dataset_dicts = load_voc_instances(
        digits_det_paths(small_root).voc_dir, split, DIGITS_DET_ID_CLASSES
    )
    assert len(dataset_dicts) == SMALL_SIZES[f"num_{split}"]
    for record in dataset_dicts:
        image = np.asarray(Image.open(record["file_name"]).convert("RGB"), dtype=np.float64)
        assert image.shape[:2] == (record["height"], record["width"]) == (IMAGE_SIZE, IMAGE_SIZE)
        assert record["annotations"]
        boxes = np.array([annotation["bbox"] for annotation in record["annotations"]])
        for annotation in record["annotations"]:
            assert annotation["bbox_mode"] == BoxMode.XYXY_ABS
            assert 0 <= annotation["category_id"] < len(DIGITS_DET_ID_CLASSES)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= IMAGE_SIZE).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        for a, b in itertools.combinations(boxes, 2):
            overlap_width = min(a[2], b[2]) - max(a[0], b[0])
            overlap_height = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_width <= 0 or overlap_height <= 0

        occupied = np.zeros(image.shape[:2], dtype=bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            occupied[y0:y1, x0:x1] = True
        for x0, y0, x1, y1 in boxes.astype(int):
            ring = np.zeros_like(occupied)
            ring[
                max(y0 - BACKGROUND_RING_WIDTH, 0) : y1 + BACKGROUND_RING_WIDTH,
                max(x0 - BACKGROUND_RING_WIDTH, 0) : x1 + BACKGROUND_RING_WIDTH,
            ] = True
            ring &= ~occupied
            background_colour = np.median(image[ring], axis=0)
            box_deviation = np.abs(image[y0:y1, x0:x1] - background_colour).max(axis=-1)
            ring_deviation = np.abs(image[ring] - background_colour).max(axis=-1)
            # The glyph strokes make the box stand out from the background around it.
            assert np.percentile(box_deviation, DEVIATION_PERCENTILE) > np.percentile(
                ring_deviation, DEVIATION_PERCENTILE
            )


def test_voc_annotations_are_one_based(small_root):
    paths = digits_det_paths(small_root)
    with open(os.path.join(paths.voc_dir, "Annotations", "train_000000.xml")) as f:
        xml = f.read()
    first_xmin = int(xml.split("<xmin>")[1].split("<")[0])
    dataset_dicts = load_voc_instances(paths.voc_dir, "train", DIGITS_DET_ID_CLASSES)
    assert dataset_dicts[0]["annotations"][0]["bbox"][0] == first_xmin - 1


def test_ood_split_is_coco_json_of_ood_digits(small_root):
    paths = digits_det_paths(small_root)
    with open(paths.ood_json) as f:
        coco = json.load(f)
    categories = sorted(coco["categories"], key=lambda category: category["id"])
    assert [category["name"] for category in categories] == list(DIGITS_DET_OOD_CLASSES)
    assert [category["id"] for category in categories] == list(
        range(1, len(DIGITS_DET_OOD_CLASSES) + 1)
    )
    for annotation in coco["annotations"]:
        x, y, width, height = annotation["bbox"]
        assert annotation["area"] == width * height
        assert annotation["iscrowd"] == 0

    dataset_dicts = load_coco_json(paths.ood_json, paths.ood_image_dir)
    assert len(dataset_dicts) == SMALL_SIZES["num_ood"]
    category_ids = {category["id"] for category in categories}
    for record in dataset_dicts:
        assert os.path.isfile(record["file_name"])
        assert record["annotations"]
        for annotation in record["annotations"]:
            assert annotation["bbox_mode"] == BoxMode.XYWH_ABS
            assert annotation["category_id"] in category_ids
            x, y, width, height = annotation["bbox"]
            assert x >= 0 and y >= 0 and x + width <= IMAGE_SIZE and y + height <= IMAGE_SIZE


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, small_root):
    same_seed = generate_small(tmp_path / "same")
    other_seed = generate_small(tmp_path / "other", seed=1)
    reference = annotation_files(digits_det_paths(small_root).dataset_dir)
    assert annotation_files(same_seed) == reference
    other = annotation_files(other_seed)
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference)


def test_second_call_writes_nothing_and_new_parameters_regenerate(tmp_path):
    dataset_dir = generate_small(tmp_path)
    mtimes = file_mtimes(dataset_dir)
    assert generate_small(tmp_path) == dataset_dir
    assert file_mtimes(dataset_dir) == mtimes

    generate_small(tmp_path, num_train=SMALL_SIZES["num_train"] - 1)
    paths = digits_det_paths(str(tmp_path))
    with open(os.path.join(paths.voc_dir, "ImageSets", "Main", "train.txt")) as f:
        assert len(f.read().split()) == SMALL_SIZES["num_train"] - 1
    last_train_image = f"train_{SMALL_SIZES['num_train'] - 1:06d}.jpg"
    assert not os.path.exists(os.path.join(paths.voc_dir, "JPEGImages", last_train_image))
    with open(paths.meta_json) as f:
        assert json.load(f)["num_train"] == SMALL_SIZES["num_train"] - 1


def test_overwrite_regenerates(tmp_path):
    dataset_dir = generate_small(tmp_path)
    meta_json = digits_det_paths(str(tmp_path)).meta_json
    meta_mtime = os.stat(meta_json).st_mtime_ns
    generate_small(tmp_path, overwrite=True)
    assert os.stat(meta_json).st_mtime_ns != meta_mtime
    assert os.path.isdir(dataset_dir)


@pytest.mark.parametrize(
    "overrides", [{"image_size": 32}, {"num_val": 1}, {"num_ood": 0}], ids=str
)
def test_invalid_parameters_are_rejected(tmp_path, overrides):
    with pytest.raises(ValueError):
        generate_small(tmp_path, **overrides)


def test_glyph_pools_are_disjoint_stratified_and_seeded():
    pools = glyph_indices_per_split(seed=0)
    assert set(pools) == {"train", "val", "test"}
    for a, b in itertools.combinations(pools.values(), 2):
        assert not set(a) & set(b)
    digit_of_glyph = load_digits().target
    assert sum(len(pool) for pool in pools.values()) == len(digit_of_glyph)
    for pool in pools.values():
        assert set(digit_of_glyph[pool]) == set(range(NUM_DIGITS))
    assert len(pools["train"]) > len(pools["test"]) > len(pools["val"])

    same_seed = glyph_indices_per_split(seed=0)
    assert all(np.array_equal(pools[name], same_seed[name]) for name in pools)
    assert not np.array_equal(pools["train"], glyph_indices_per_split(seed=1)["train"])


@pytest.fixture
def unregistered_digits_det(digits_det_names, remove_from_catalogs):
    """Remove the digits-det names from detectron2's global catalogs for one test.

    Afterwards the names are registered again under the default root, as at import.
    """
    remove_from_catalogs(digits_det_names)
    yield
    remove_from_catalogs(digits_det_names)
    register_all_digits_det(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def test_registration_is_lazy_and_idempotent(tmp_path, unregistered_digits_det, digits_det_names):
    missing_root = str(tmp_path / "not_generated")
    register_all_digits_det(missing_root)
    register_all_digits_det(missing_root)
    assert set(digits_det_names) <= set(DatasetCatalog.list())
    assert not os.path.exists(missing_root)


def test_registered_datasets_load_with_their_roles(small_root, unregistered_digits_det):
    register_all_digits_det(small_root)
    paths = digits_det_paths(small_root)
    for split in VOC_SPLITS:
        name = f"digits_det_{split}"
        metadata = MetadataCatalog.get(name)
        assert metadata.ood_role == "id"
        assert metadata.thing_classes == list(DIGITS_DET_ID_CLASSES)
        assert metadata.year == 2012  # the VOC evaluator's area AP, not the 2007 11-point AP
        assert metadata.dirname == paths.voc_dir
        assert metadata.evaluator_type == "pascal_voc"
        assert len(DatasetCatalog.get(name)) == SMALL_SIZES[f"num_{split}"]

    ood_metadata = MetadataCatalog.get("digits_det_ood")
    assert ood_metadata.ood_role == "ood"
    assert ood_metadata.id_dataset == "digits_det_train"
    ood_dicts = DatasetCatalog.get("digits_det_ood")
    assert len(ood_dicts) == SMALL_SIZES["num_ood"]
    assert ood_metadata.thing_classes == list(DIGITS_DET_OOD_CLASSES)
    contiguous_ids = {
        annotation["category_id"] for record in ood_dicts for annotation in record["annotations"]
    }
    assert contiguous_ids <= set(range(len(DIGITS_DET_OOD_CLASSES)))


def test_voc_evaluator_scores_the_ground_truth_as_perfect(small_root, unregistered_digits_det):
    register_all_digits_det(small_root)
    evaluator = PascalVOCDetectionEvaluator("digits_det_test")
    evaluator.reset()
    classes_present = set()
    for record in DatasetCatalog.get("digits_det_test"):
        ground_truth = Instances((record["height"], record["width"]))
        annotations = record["annotations"]
        ground_truth.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in annotations]))
        ground_truth.scores = torch.ones(len(annotations))
        ground_truth.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        evaluator.process([record], [{"instances": ground_truth}])
        classes_present.update(a["category_id"] for a in annotations)
    # AP averages IoU thresholds up to 0.95: a one-pixel offset of the 1-based VOC boxes fails it.
    # The evaluator averages over all classes and gives 0 to those absent from the few images.
    expected_ap = 100.0 * len(classes_present) / len(DIGITS_DET_ID_CLASSES)
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(expected_ap)


# SHA-256 over (relative path, SHA-256 of the file) of every file under voc/ and ood/ of
# generate_small(root) (seed 0), recorded with the generator as it was before the far-OOD,
# shifted and OOD-validation splits were added (commit d7947c2): all files, and the
# annotation / image-set files alone (independent of the JPEG encoder's version).
ORIGINAL_SPLITS_SHA256 = "571c50f32e5d52e2ddc435e18550baa9d1e5804827ce2b1d2008de62821c2fb6"
ORIGINAL_ANNOTATIONS_SHA256 = "867343d971699060c04c1abeb6c1ee84773ff9dd4232f7bae4c2ed6063007975"


def tree_digest(dataset_dir, suffixes=None):
    """SHA-256 over the relative paths and contents of the files under voc/ and ood/."""
    digest = hashlib.sha256()
    for subdir in ("voc", "ood"):
        for dirpath, _, names in sorted(os.walk(os.path.join(dataset_dir, subdir))):
            for name in sorted(names):
                if suffixes and not name.endswith(suffixes):
                    continue
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, dataset_dir).encode())
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


# A digest recorded on one machine (exact: bytes), rerun on other CPU kernels by
# tests/test_kernel_paths.py; it holds as long as the renderer's float steps round to the same
# uint8 pixels there (JPEG's default DCT is integer arithmetic).
@pytest.mark.stored_expectation
def test_original_splits_are_byte_identical_to_before_the_new_splits(small_root):
    dataset_dir = digits_det_paths(small_root).dataset_dir
    assert tree_digest(dataset_dir, suffixes=(".xml", ".json", ".txt")) == ORIGINAL_ANNOTATIONS_SHA256
    assert tree_digest(dataset_dir) == ORIGINAL_SPLITS_SHA256


def test_new_split_sizes_default_to_the_original_ones_and_can_be_set(tmp_path, small_root):
    paths = digits_det_paths(small_root)
    assert len(os.listdir(paths.far_ood_image_dir)) == SMALL_SIZES["num_ood"]
    assert len(os.listdir(paths.ood_val_image_dir)) == SMALL_SIZES["num_val"]
    with open(os.path.join(paths.shifted_voc_dir, "ImageSets", "Main", "shifted_test.txt")) as f:
        assert len(f.read().split()) == SMALL_SIZES["num_test"]
    sized = digits_det_paths(os.path.dirname(generate_small(tmp_path, num_far_ood=2, num_ood_val=1)))
    assert len(os.listdir(sized.far_ood_image_dir)) == 2
    assert len(os.listdir(sized.ood_val_image_dir)) == 1
    with pytest.raises(ValueError, match="num_shifted_test"):
        generate_small(tmp_path / "bad", num_shifted_test=1)


def test_far_ood_and_ood_val_hold_the_shapes_and_glyphs_they_should(small_root):
    paths = digits_det_paths(small_root)
    far_ood = load_coco_json(paths.far_ood_json, paths.far_ood_image_dir, "far_ood_check")
    far_names = {a["category_id"] for r in far_ood for a in r["annotations"]}
    assert far_names and far_names <= set(range(len(DIGITS_DET_FAR_OOD_CLASSES)))
    with open(paths.far_ood_json) as f:
        assert [c["name"] for c in json.load(f)["categories"]] == list(TEST_SHAPES)
    with open(paths.ood_val_json) as f:
        ood_val = json.load(f)
    assert [c["name"] for c in ood_val["categories"]] == list(DIGITS_DET_OOD_VAL_CLASSES)
    # The OOD validation split shares no shape kind with the far-OOD test split.
    assert not set(VALIDATION_SHAPES) & set(TEST_SHAPES)
    for record in far_ood:
        for annotation in record["annotations"]:
            x, y, width, height = annotation["bbox"]
            assert x >= 0 and y >= 0 and x + width <= IMAGE_SIZE and y + height <= IMAGE_SIZE


@pytest.mark.parametrize("kind", TEST_SHAPES + VALIDATION_SHAPES)
def test_every_shape_fills_most_of_its_square_like_a_glyph(kind):
    rng = np.random.default_rng(0)
    for side in (20, 48):
        opacity = render_shape(sample_shape(kind, rng), side)
        assert opacity.shape == (side, side)
        assert opacity.min() >= 0.0 and opacity.max() <= 1.0
        rows, cols = np.nonzero(opacity >= 0.5 / 16)
        # The box of the visible pixels spans at least half the square one way, as digits do.
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 >= side / 2
    with pytest.raises(ValueError, match="unknown shape"):
        sample_shape("hexapod", rng)


def test_shifted_split_is_id_digits_on_every_canvas_style(small_root, tmp_path):
    paths = digits_det_paths(small_root)
    records = load_voc_instances(paths.shifted_voc_dir, "shifted_test", DIGITS_DET_ID_CLASSES)
    assert len(records) == SMALL_SIZES["num_test"]
    assert all(a["category_id"] < len(DIGITS_DET_ID_CLASSES) for r in records for a in r["annotations"])
    with open(os.path.join(paths.shifted_voc_dir, "shifted_test_styles.json")) as f:
        styles = json.load(f)
    assert set(styles.values()) <= set(SHIFTED_CANVAS_STYLES)
    # Over enough images every style occurs.
    many = digits_det_paths(os.path.dirname(generate_small(tmp_path, num_shifted_test=40)))
    with open(os.path.join(many.shifted_voc_dir, "shifted_test_styles.json")) as f:
        assert set(json.load(f).values()) == set(SHIFTED_CANVAS_STYLES)


def test_new_splits_are_registered_with_their_roles(small_root, unregistered_digits_det):
    register_all_digits_det(small_root)
    shifted = MetadataCatalog.get("digits_det_shifted_test")
    assert shifted.ood_role == "id" and shifted.evaluator_type == "pascal_voc"
    assert shifted.thing_classes == list(DIGITS_DET_ID_CLASSES)
    assert len(DatasetCatalog.get("digits_det_shifted_test")) == SMALL_SIZES["num_test"]
    for name, classes, size in (
        ("digits_det_far_ood", DIGITS_DET_FAR_OOD_CLASSES, SMALL_SIZES["num_ood"]),
        ("digits_det_ood_val", DIGITS_DET_OOD_VAL_CLASSES, SMALL_SIZES["num_val"]),
        ("digits_det_far_ood_matched", DIGITS_DET_FAR_OOD_CLASSES, SMALL_SIZES["num_ood"]),
    ):
        metadata = MetadataCatalog.get(name)
        assert metadata.ood_role == "ood" and metadata.id_dataset == "digits_det_train"
        assert metadata.thing_classes == list(classes)
        assert len(DatasetCatalog.get(name)) == size


@pytest.mark.parametrize("kind", TEST_SHAPES)
def test_shape_glyph_counts_the_on_pixels_of_a_32x32_bitmap_in_4x4_blocks(kind):
    primitives = sample_shape(kind, np.random.default_rng(0))
    glyph = shape_glyph(primitives)
    bitmap = render_shape(primitives, 32) >= 0.5
    expected = np.zeros((8, 8))
    for row in range(8):
        for col in range(8):
            expected[row, col] = bitmap[4 * row : 4 * row + 4, 4 * col : 4 * col + 4].sum()
    assert glyph.shape == (8, 8) and glyph.dtype == load_glyphs()[0].dtype
    np.testing.assert_array_equal(glyph, expected)
    assert glyph.max() <= 16 and glyph.sum() > 0


def test_digits_and_matched_shapes_go_through_one_rendering_function(monkeypatch):
    drawn = []
    draw_glyph = digits_det_objects._draw_glyph

    def recording_draw_glyph(glyph_image, side):
        drawn.append(glyph_image.shape)
        return draw_glyph(glyph_image, side)

    monkeypatch.setattr(digits_det_objects, "_draw_glyph", recording_draw_glyph)
    glyph_images, digit_of_glyph = load_glyphs()
    digits = glyph_picker(
        glyph_images, digit_of_glyph, np.arange(len(digit_of_glyph)), DIGITS_DET_ID_CLASSES, ID_DIGITS
    )
    for pick_object in (digits, matched_shape_picker(TEST_SHAPES)):
        drawn.clear()
        _, boxes, _ = render_image(np.random.default_rng(0), pick_object, IMAGE_SIZE)
        assert boxes and drawn == [(8, 8)] * len(boxes)
    # The sharp far-OOD shapes do not: the rendering difference the matched split removes.
    drawn.clear()
    render_image(np.random.default_rng(0), shape_picker(TEST_SHAPES), IMAGE_SIZE)
    assert not drawn


def test_matched_far_ood_split_holds_the_far_ood_shape_kinds(small_root):
    paths = digits_det_paths(small_root)
    with open(paths.far_ood_json) as f:
        far = json.load(f)
    with open(paths.far_ood_matched_json) as f:
        matched = json.load(f)
    assert matched["categories"] == far["categories"]
    assert len(matched["images"]) == SMALL_SIZES["num_ood"]
    # Separate random streams: the matched split is not a re-rendering of the far split's images.
    assert [a["bbox"] for a in matched["annotations"]] != [a["bbox"] for a in far["annotations"]]
    for annotation in matched["annotations"]:
        x, y, width, height = annotation["bbox"]
        assert x >= 0 and y >= 0 and x + width <= IMAGE_SIZE and y + height <= IMAGE_SIZE


def test_a_dataset_made_before_the_matched_split_gets_only_that_split(tmp_path, small_root):
    dataset_dir = generate_small(tmp_path)
    paths = digits_det_paths(str(tmp_path))
    with open(paths.meta_json) as f:
        meta = json.load(f)
    del meta["num_far_ood_matched"]
    with open(paths.meta_json, "w") as f:
        json.dump(meta, f)
    shutil.rmtree(os.path.dirname(paths.far_ood_matched_json))
    mtimes = file_mtimes(dataset_dir)

    generate_small(tmp_path)
    after = file_mtimes(dataset_dir)
    changed = {path for path in after if mtimes.get(path) != after[path]}
    matched_dir = os.path.dirname(paths.far_ood_matched_json)
    assert changed == {paths.meta_json} | {
        path for path in after if path.startswith(matched_dir + os.sep)
    }
    reference = digits_det_paths(small_root)
    with open(paths.far_ood_matched_json, "rb") as f, open(reference.far_ood_matched_json, "rb") as g:
        assert f.read() == g.read()
