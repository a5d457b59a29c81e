"""Checkpoints and state files written before vos_det/modeling was grouped by role still
load, with the same keys, and score boxes with the same numbers.

The fixtures in tests/fixtures/modeling_flat_layout/ were written by the flat layout
(commit 59b005b), from the code as it was:

* state_dict_keys_flat_layout.json: name, shape and dtype of every state-dict entry of the
  digits detectors (VOS, vanilla, VOS with CosFace + center loss + CIDER + bottleneck) and of
  the digits VOS classifier;
* post_hoc_scores.pth (tools/fit_ood_scores.py's file) and mahalanobis_stats.pth
  (tools/fit_mahalanobis.py's), fitted on 120 clustered 12-d features of 4 classes;
* scores_flat_layout.pth: 30 query boxes and what each score gave them;
* box_predictor_flat_layout.pth: a VOSOutputLayers (D = 12, K = 4) loaded with both
  files, its state dict, and its whole OOD score table on the queries.
"""
import json
from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform

from vos_det.config import load_config
from vos_det.engine.trained_model import check_checkpoint_matches_model
from vos_det.modeling import VOSOutputLayers
from vos_det.modeling.ood_scores import (
    POST_HOC_SCORES,
    GaussianDiscriminant,
    build_post_hoc_scores,
    load_post_hoc_state,
    save_post_hoc_state,
)

# The scores are stored expectations: tests/test_kernel_paths.py reruns them on other CPU kernels.
pytestmark = pytest.mark.stored_expectation

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "modeling_flat_layout"
OLD_KEYS = json.loads((FIXTURES / "state_dict_keys_flat_layout.json").read_text())
K, D = 4, 12
# The post-hoc scores whose states of the flat layout still load (SAFE was redone as released;
# knn_embedding came later).
SCORES_OF_THE_FLAT_LAYOUT = tuple(name for name in POST_HOC_SCORES if name not in ("safe", "knn_embedding"))


def _load(name):
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def _checkpoint_with_old_keys(entries):
    """A state dict with the old names, shapes and dtypes, filled with random values."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in entries:
        dtype = getattr(torch, dtype)
        if dtype.is_floating_point:
            state[key] = torch.randn(shape, generator=generator, dtype=dtype)
        elif dtype == torch.bool:
            state[key] = torch.ones(shape, dtype=dtype)
        else:
            state[key] = torch.randint(0, 3, shape, generator=generator, dtype=dtype)
    return state


def _assert_close_on_any_cpu(actual, expected, msg=None):
    """``actual`` equals a score stored on another machine up to the rounding of its kernels.

    Every score here is a sum of at most a few hundred products (12-d features, 12 x 12
    quadratic forms, a 30-box bank, logsumexp over 4 classes). Another CPU's SIMD width or BLAS
    path adds the terms in another order, which moves a sum of n terms by at most
    n * eps * sum|terms| (Higham); 2**10 eps of the largest stored score bounds that here (the
    Xeon the suite was first run on differed by 2.9e-16 relative), while a changed formula moves scores by far
    more. Bitwise equality held only on the CPU that wrote the fixtures.
    """
    eps = torch.finfo(expected.dtype).eps
    tolerance = 2**10 * eps
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale, msg=msg)


def _assert_no_pickled_classes(path):
    """Nothing of vos_det is pickled in the file (weights_only loads need no class path)."""
    assert b"vos_det" not in Path(path).read_bytes()


@pytest.mark.parametrize("label", sorted(OLD_KEYS))
def test_a_checkpoint_of_the_flat_layout_loads_with_strict_keys(label, tmp_path):
    entry = OLD_KEYS[label]
    model = build_model(load_config(entry["config"], ["MODEL.DEVICE", "cpu", *entry["opts"]]))
    keys = [[key, list(value.shape), str(value.dtype).replace("torch.", "")] for key, value in model.state_dict().items()]
    assert keys == entry["keys"]

    old = _checkpoint_with_old_keys(entry["keys"])
    path = tmp_path / "model_final.pth"
    torch.save({"model": old}, path)
    check_checkpoint_matches_model(str(path), model)
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    loaded = model.state_dict()
    for key, value in old.items():
        assert torch.equal(loaded[key], value), key

    torch.save({"model": model.state_dict()}, tmp_path / "saved.pth")
    _assert_no_pickled_classes(tmp_path / "saved.pth")


def test_post_hoc_state_of_the_flat_layout_loads_with_weights_only_and_scores_the_same(tmp_path):
    expected = _load("scores_flat_layout.pth")
    weight, bias = expected["classifier_weight"], expected["classifier_bias"]

    def logits_of(features):
        return features @ weight.T + bias

    scores = build_post_hoc_scores()
    assert load_post_hoc_state(dict(scores.items()), str(FIXTURES / "post_hoc_scores.pth"), D, K) == {
        "weights": "model_final.pth"
    }
    # The SAFE port of then (FPN maps, no eps) is not SAFE as released: its state
    # is skipped, the others load.
    assert not scores["safe"].is_fitted()
    features = expected["features"]
    with torch.no_grad():
        # The scores of that layout that still load (SAFE is refitted; fused came later).
        names = set(SCORES_OF_THE_FLAT_LAYOUT) - {"fused"}
        assert set(expected["post_hoc"]) == names | {"safe"}
        for name in sorted(names):
            actual = scores[name](
                features, logits_of(features), layer_features=expected["layer_features"], logits_of=logits_of
            )
            _assert_close_on_any_cpu(actual, expected["post_hoc"][name], msg=name)

    path = tmp_path / "post_hoc_scores.pth"
    save_post_hoc_state(dict(scores.items()), str(path), D, K, weights="model_final.pth")
    _assert_no_pickled_classes(path)
    assert set(torch.load(path, weights_only=True)["scores"]) == set(_load("post_hoc_scores.pth")["scores"]) - {"safe"}


def test_mahalanobis_statistics_of_the_flat_layout_load_with_weights_only_and_score_the_same(tmp_path):
    expected = _load("scores_flat_layout.pth")
    gaussians = GaussianDiscriminant(D).load_statistics(str(FIXTURES / "mahalanobis_stats.pth"))
    _assert_close_on_any_cpu(gaussians.ood_scores(expected["features"]), expected["mahalanobis"])
    _assert_close_on_any_cpu(gaussians.class_scores(expected["features"]), expected["mahalanobis_class_scores"])
    path = tmp_path / "mahalanobis_stats.pth"
    gaussians.save_statistics(str(path))
    _assert_no_pickled_classes(path)


def test_the_box_predictor_of_the_flat_layout_gives_the_same_score_table():
    before = _load("box_predictor_flat_layout.pth")
    predictor = VOSOutputLayers(
        ShapeSpec(channels=D),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=K,
        sample_number=8,
        mahalanobis_stats=str(FIXTURES / "mahalanobis_stats.pth"),
        post_hoc_state=str(FIXTURES / "post_hoc_scores.pth"),
    ).eval()
    predictor.load_state_dict(before["state_dict"], strict=True)
    with torch.no_grad():
        logits = predictor.foreground_logits(before["features"])
        table, id_scores = predictor.ood_score_table(logits, before["features"])
    # Every score of then except SAFE (refitted since as released), unchanged; "vos_release" is
    # the only one added since.
    before_table = {name: values for name, values in before["table"].items() if name != "safe"}
    assert set(table) - set(before_table) == {"vos_release"} and set(before_table) <= set(table)
    for name, values in before_table.items():
        _assert_close_on_any_cpu(table[name], values, msg=name)
    _assert_close_on_any_cpu(id_scores, before["id_scores"])
