"""Tests of the dataset registration (VOC roles, COCO / OpenImages OOD, BDD100k, custom OOD
sets), of the errors of the COCO-json loader, and of datasets/prepare_coco_ood.py."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.structures import BoxMode
from PIL import Image

from vos_det.data import (
    BDD100K_CLASSES,
    check_class_names,
    get_ood_role,
    register_coco_json_dataset,
    register_from_cli,
    register_ood_coco_json,
)
from vos_det.data.builtin import register_all_bdd100k, register_all_ood

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE_SCRIPT = os.path.join(REPO_ROOT, "datasets", "prepare_coco_ood.py")
README_HINT = "see datasets/README.md"
BUILTIN_NAMES = ("coco_ood_val", "openimages_ood_val", "bdd100k_train", "bdd100k_val")
VOC_NAMES = ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test")
# Names the tests register themselves; removed after each test.
CUSTOM_NAMES = ("test_custom_ood", "test_cli_ood", "test_custom_id")
IMAGE_SIDE = 8


def load_prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_coco_ood", PREPARE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def write_images(folder, file_names):
    os.makedirs(folder, exist_ok=True)
    for name in file_names:
        Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (90, 120, 30)).save(os.path.join(folder, name))
    return str(folder)


def image_entry(image_id, file_name):
    return {"id": image_id, "file_name": file_name, "height": IMAGE_SIDE, "width": IMAGE_SIDE}


def annotation(annotation_id, image_id, category_id, **extra):
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [1, 2, 3, 4],
        "area": 12,
        "iscrowd": 0,
        **extra,
    }


@pytest.fixture
def custom_names(remove_from_catalogs):
    """Remove the datasets a test registers under CUSTOM_NAMES from the global catalogs."""
    remove_from_catalogs(CUSTOM_NAMES)
    yield CUSTOM_NAMES
    remove_from_catalogs(CUSTOM_NAMES)


@pytest.fixture
def builtin_root(tmp_path, remove_from_catalogs):
    """A datasets root under tmp_path, with the built-in COCO-json sets registered under it.

    The catalogs are global: the default registrations are restored afterwards.
    """
    root = tmp_path / "datasets"
    default_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))

    def reregister(dataset_root):
        remove_from_catalogs(BUILTIN_NAMES)
        register_all_ood(dataset_root)
        register_all_bdd100k(dataset_root)

    reregister(str(root))
    yield root
    reregister(default_root)


# ---------------------------------------------------------------- prepare_coco_ood.py


def coco_instances():
    """A tiny instances json with every VOC class's COCO category and two others."""
    names = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    categories = [{"id": 100 + index, "name": name} for index, name in enumerate(names)]
    cid = {c["name"]: c["id"] for c in categories}
    images = [image_entry(i, f"{i:012d}.jpg") for i in range(1, 8)]
    annotations = [
        annotation(1, 1, cid["person"]),  # dropped
        annotation(2, 2, cid["giraffe"]),  # kept
        annotation(3, 3, cid["giraffe"]),  # dropped: also a crowd dining table
        annotation(4, 3, cid["dining table"], iscrowd=1),
        # image 4: no annotation, kept
        annotation(5, 5, cid["tv"]),  # dropped
        annotation(6, 6, cid["kite"]),  # dropped: also a couch (VOC "sofa")
        annotation(7, 6, cid["couch"]),
        annotation(8, 7, cid["kite"]),  # kept
        annotation(9, 7, cid["giraffe"]),
    ]
    return {"info": {"year": 2017}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


def test_voc_to_coco_mapping_covers_every_voc_class():
    module = load_prepare_module()
    assert sorted(module.VOC_TO_COCO) == sorted(VOC_CLASS_NAMES)
    coco_names = {c["name"] for c in COCO_CATEGORIES if c["isthing"]}
    assert set(module.VOC_TO_COCO.values()) <= coco_names
    assert len(set(module.VOC_TO_COCO.values())) == len(VOC_CLASS_NAMES)


def test_prepare_coco_ood_keeps_exactly_the_images_without_voc_classes(tmp_path):
    source = coco_instances()
    input_path = write_json(tmp_path / "annotations" / "instances_val2017.json", source)
    output_path = tmp_path / "out" / "ood.json"

    counts = load_prepare_module().prepare_coco_ood(input_path, str(output_path))

    with open(output_path) as f:
        ood = json.load(f)
    assert [image["id"] for image in ood["images"]] == [2, 4, 7]
    assert [a["id"] for a in ood["annotations"]] == [2, 8, 9]
    assert ood["categories"] == source["categories"]
    assert ood["info"] == source["info"]
    assert counts.images_in == 7 and counts.images_dropped == 4 and counts.images_kept == 3
    assert counts.images_kept_without_annotations == 1
    assert counts.annotations_in == 9 and counts.annotations_kept == 3
    assert os.listdir(output_path.parent) == ["ood.json"]  # no temporary file left


def test_prepare_coco_ood_command_line(tmp_path):
    input_path = write_json(tmp_path / "instances_val2017.json", coco_instances())
    output_path = tmp_path / "ood.json"
    result = subprocess.run(
        [sys.executable, PREPARE_SCRIPT, "--input", input_path, "--output", str(output_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "7 in, 4 dropped" in result.stdout and "3 kept" in result.stdout
    assert str(output_path) in result.stdout
    assert output_path.is_file()


def test_prepare_coco_ood_errors_name_the_file(tmp_path):
    module = load_prepare_module()
    output_path = str(tmp_path / "ood.json")
    missing = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        module.prepare_coco_ood(missing, output_path)

    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON: .* line 2, column"):
        module.prepare_coco_ood(str(broken), output_path)

    no_voc = coco_instances()
    no_voc["categories"] = [c for c in no_voc["categories"] if c["name"] != "tv"]
    no_voc_path = write_json(tmp_path / "no_voc.json", no_voc)
    with pytest.raises(ValueError, match=r"no_voc\.json: .*\['tv'\]"):
        module.prepare_coco_ood(no_voc_path, output_path)

    with pytest.raises(ValueError, match="must not overwrite the input"):
        module.prepare_coco_ood(no_voc_path, no_voc_path)
    assert not os.path.exists(output_path)

    result = subprocess.run(
        [sys.executable, PREPARE_SCRIPT, "--input", missing, "--output", output_path],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1 and missing in result.stderr


# ---------------------------------------------------------------- roles and registration


def test_role_metadata_of_the_registered_datasets():
    for name in VOC_NAMES:
        assert MetadataCatalog.get(name).ood_role == "id"
        assert get_ood_role(name) == "id"
    for name in ("coco_ood_val", "openimages_ood_val"):
        metadata = MetadataCatalog.get(name)
        assert metadata.ood_role == "ood"
        assert metadata.id_dataset == "voc_2007_trainval"
        assert metadata.evaluator_type == "coco"
    for name in ("bdd100k_train", "bdd100k_val"):
        metadata = MetadataCatalog.get(name)
        assert metadata.ood_role == "id"
        assert list(metadata.thing_classes) == list(BDD100K_CLASSES)
        assert not hasattr(metadata, "id_dataset")
    assert BDD100K_CLASSES == (
        "pedestrian", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle", "traffic light", "traffic sign",
    )


def test_builtin_sets_are_lazy_and_name_the_missing_json(builtin_root):
    # Registered under an empty root: only loading needs the files.
    expected = os.path.join(
        str(builtin_root), "coco", "annotations", "instances_val2017_ood_wrt_voc.json"
    )
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("coco_ood_val")
    assert str(error.value) == f"COCO OOD json not found: {expected}; {README_HINT}"
    with pytest.raises(FileNotFoundError, match=r"COCO json not found: .*det_val_cocofmt\.json"):
        DatasetCatalog.get("bdd100k_val")


def test_builtin_ood_sets_load(builtin_root):
    coco = coco_instances()
    kept = [image for image in coco["images"] if image["id"] in (2, 7)]
    ood_json = {"images": kept, "categories": coco["categories"],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in (2, 7)]}
    write_json(builtin_root / "coco" / "annotations" / "instances_val2017_ood_wrt_voc.json", ood_json)
    image_dir = write_images(builtin_root / "coco" / "val2017", [i["file_name"] for i in kept])

    openimages = builtin_root / "OpenImages" / "ood_classes_rm_overlap"
    write_json(openimages / "COCO-Format" / "val_coco_format.json",
               {"images": [{"id": "a1", "file_name": "a1.jpg"}, {"id": "b2", "file_name": "b2.jpg"}]})
    write_images(openimages / "images", ["a1.jpg", "b2.jpg"])

    coco_dicts = DatasetCatalog.get("coco_ood_val")
    assert [d["image_id"] for d in coco_dicts] == [2, 7]
    assert coco_dicts[0]["file_name"] == os.path.join(image_dir, kept[0]["file_name"])
    assert len(coco_dicts[1]["annotations"]) == 2
    # OOD classes are the json's own, not the model's.
    assert "giraffe" in MetadataCatalog.get("coco_ood_val").thing_classes

    openimages_dicts = DatasetCatalog.get("openimages_ood_val")
    assert [d["image_id"] for d in openimages_dicts] == ["a1", "b2"]
    assert all(d["annotations"] == [] for d in openimages_dicts)
    # detectron2's loader (class histogram, consistency checks) accepts both.
    for name in ("coco_ood_val", "openimages_ood_val"):
        assert len(get_detection_dataset_dicts([name], filter_empty=False)) == 2


def test_bdd100k_maps_categories_by_name_in_the_fixed_order(builtin_root):
    # Category ids in another order than BDD100K's: the names decide the class index.
    categories = [{"id": 10 - index, "name": name} for index, name in enumerate(BDD100K_CLASSES)]
    bdd_json = {
        "images": [image_entry(1, "x.jpg"), image_entry(2, "y.jpg")],
        "annotations": [
            annotation(1, 1, 10),  # pedestrian
            annotation(2, 1, 1, ignore=1),  # traffic sign, ignored
            annotation(3, 2, 8),  # car
        ],
        "categories": categories,
    }
    write_json(builtin_root / "bdd100k" / "labels" / "det_20" / "det_val_cocofmt.json", bdd_json)
    write_images(builtin_root / "bdd100k" / "images" / "100k" / "val", ["x.jpg", "y.jpg"])

    dicts = DatasetCatalog.get("bdd100k_val")
    first, second = (d["annotations"] for d in dicts)
    assert [(a["category_id"], a["iscrowd"]) for a in first] == [(0, 0), (9, 1)]
    assert [a["category_id"] for a in second] == [2]
    assert first[0]["bbox"] == [1.0, 2.0, 3.0, 4.0] and first[0]["bbox_mode"] == BoxMode.XYWH_ABS
    metadata = MetadataCatalog.get("bdd100k_val")
    assert list(metadata.thing_classes) == list(BDD100K_CLASSES)
    assert metadata.thing_dataset_id_to_contiguous_id[10] == 0
    check_class_names("bdd100k_val", BDD100K_CLASSES)

    other = dict(bdd_json, categories=categories + [{"id": 11, "name": "trailer"}])
    write_json(builtin_root / "bdd100k" / "labels" / "det_20" / "det_val_cocofmt.json", other)
    with pytest.raises(ValueError, match=r"det_val_cocofmt\.json: categories \['trailer'\]"):
        DatasetCatalog.get("bdd100k_val")


def test_custom_ood_set_from_python_and_command_line(tmp_path, custom_names):
    json_file = write_json(tmp_path / "mine" / "annotations.json",
                           {"images": [{"id": 5, "file_name": "sub/p.png"}],
                            "annotations": [annotation(1, 5, 77)],  # no such category: dropped
                            "categories": []})
    image_root = tmp_path / "mine" / "images"
    write_images(image_root / "sub", ["p.png"])

    register_ood_coco_json("test_custom_ood", json_file, str(image_root), id_dataset="voc_2007_trainval")
    register_ood_coco_json("test_custom_ood", json_file, str(image_root))  # same files: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_ood_coco_json("test_custom_ood", json_file, str(tmp_path))
    metadata = MetadataCatalog.get("test_custom_ood")
    assert metadata.ood_role == "ood" and metadata.id_dataset == "voc_2007_trainval"
    (record,) = DatasetCatalog.get("test_custom_ood")
    assert record["file_name"] == os.path.join(str(image_root), "sub", "p.png")
    assert record["annotations"] == [] and "height" not in record

    name = register_from_cli(f"test_cli_ood={json_file}:{image_root}", id_dataset="bdd100k_train")
    assert name == "test_cli_ood"
    assert get_ood_role(name) == "ood" and MetadataCatalog.get(name).id_dataset == "bdd100k_train"
    assert len(DatasetCatalog.get(name)) == 1

    for spec in ("no_equals_sign", "x=only_json.json", "=a.json:b", "x=:images"):
        with pytest.raises(ValueError, match="NAME=JSON_FILE:IMAGE_ROOT"):
            register_from_cli(spec)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=f"COCO OOD json not found: {missing}"):
        register_from_cli(f"test_cli_ood2={missing}:{image_root}")
    assert "test_cli_ood2" not in DatasetCatalog.list()


# ---------------------------------------------------------------- errors of the loader


def _error_case(tmp_path, case):
    """Register "test_custom_ood" (or "test_custom_id") broken as ``case``; return its name and
    the path the error must name."""
    image_root = write_images(tmp_path / "images", ["a.jpg"])
    good = {"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [annotation(1, 1, 1)], "categories": [{"id": 1, "name": "thing"}]}
    json_file = str(tmp_path / "data.json")
    role, expected = "ood", json_file
    if case == "missing_json":
        expected = f"COCO OOD json not found: {json_file}; {README_HINT}"
    elif case == "missing_image_folder":
        write_json(json_file, good)
        image_root = str(tmp_path / "no_images")
        expected = f"image folder not found: {image_root}"
    elif case == "missing_image_file":
        write_json(json_file, dict(good, images=good["images"] + [{"id": 2, "file_name": "b.jpg"}]))
        expected = os.path.join(image_root, "b.jpg")
    elif case == "invalid_json":
        with open(json_file, "w") as f:
            f.write('{"images": [\n  {"id": 1, "file_name": "a.jpg"\n]}')
        expected = f"{json_file}: not valid JSON: Expecting ',' delimiter at line 3, column 1"
    elif case == "no_images":
        write_json(json_file, {"annotations": [], "categories": []})
        expected = f'{json_file}: not a COCO instances json: it has no "images" list'
    elif case == "empty_images":
        write_json(json_file, dict(good, images=[]))
        expected = f'{json_file}: "images" is empty'
    elif case == "box_missing":
        bad = dict(good, annotations=[{"id": 1, "image_id": 1, "category_id": 1}])
        write_json(json_file, bad)
        expected = f"{json_file}: annotation #0 needs"
    elif case == "unknown_category_in_id_set":
        write_json(json_file, dict(good, annotations=[annotation(1, 1, 9)]))
        role, expected = "id", f"{json_file}: annotation #0 has category_id 9"
    else:
        raise AssertionError(case)
    name = "test_custom_id" if role == "id" else "test_custom_ood"
    register_coco_json_dataset(name, json_file, image_root, ood_role=role)
    return name, expected


@pytest.mark.parametrize(
    "case, error",
    [
        ("missing_json", FileNotFoundError),
        ("missing_image_folder", FileNotFoundError),
        ("missing_image_file", FileNotFoundError),
        ("invalid_json", ValueError),
        ("no_images", ValueError),
        ("empty_images", ValueError),
        ("box_missing", ValueError),
        ("unknown_category_in_id_set", ValueError),
    ],
)
def test_load_errors_name_the_file_and_the_problem(tmp_path, custom_names, case, error):
    name, expected = _error_case(tmp_path, case)
    with pytest.raises(error) as raised:
        DatasetCatalog.get(name)
    assert expected in str(raised.value)


# ---------------------------------------------------------------- check_class_names


def test_check_class_names(tmp_path, custom_names):
    check_class_names("voc_2007_test", VOC_CLASS_NAMES)

    with pytest.raises(ValueError, match=r"same classes in another order \(#0: dataset 'aeroplane' vs model 'tvmonitor'"):
        check_class_names("voc_2007_test", VOC_CLASS_NAMES[::-1])
    model_classes = list(VOC_CLASS_NAMES[:-1]) + ["unicorn"]
    with pytest.raises(ValueError) as raised:
        check_class_names("voc_2007_trainval", model_classes)
    message = str(raised.value)
    assert "model classes missing from the dataset: ['unicorn']" in message
    assert "dataset classes the model does not have: ['tvmonitor']" in message
    assert "'voc_2007_trainval'" in message

    # OOD sets may hold any classes: never checked.
    check_class_names("coco_ood_val", ["zero", "one"])
    with pytest.raises(KeyError, match="not registered"):
        check_class_names("no_such_dataset", VOC_CLASS_NAMES)

    # An ID set whose classes come from its json is loaded to learn them.
    json_file = write_json(tmp_path / "id.json", {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]})
    write_images(tmp_path / "images", ["a.jpg"])
    register_coco_json_dataset("test_custom_id", json_file, str(tmp_path / "images"), ood_role="id")
    check_class_names("test_custom_id", ["cat", "dog"])
    with pytest.raises(ValueError, match=r"missing from the dataset: \['cow'\]"):
        check_class_names("test_custom_id", ["cat", "dog", "cow"])


def test_register_rejects_bad_roles(tmp_path, custom_names):
    with pytest.raises(ValueError, match="ood_role"):
        register_coco_json_dataset("test_custom_id", "a.json", "images", ood_role="train")
    with pytest.raises(ValueError, match="id_dataset is only for OOD sets"):
        register_coco_json_dataset("test_custom_id", "a.json", "images", ood_role="id",
                                   id_dataset="voc_2007_trainval")
    assert "test_custom_id" not in DatasetCatalog.list()
