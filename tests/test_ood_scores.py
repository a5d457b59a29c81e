"""Tests of the post-hoc OOD scores (vos_det/modeling/ood_scores/) against direct slow
implementations, their fitted state, and their place in the detector's inference."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from vos_det.config import load_config, merge_overrides
from vos_det.modeling.ood_scores import (
    EMBEDDING_POST_HOC_SCORES,
    POST_HOC_SCORES,
    BoxFitData,
    build_post_hoc_scores,
    load_post_hoc_state,
    pool_box_layers,
    save_post_hoc_state,
)
from vos_det.modeling.ood_scores.gen import GENScore
from vos_det.modeling.ood_scores.knn import KNNScore, kth_neighbour_distance
from vos_det.modeling.ood_scores.mahalanobis_multilayer import MultiLayerMahalanobisScore
from vos_det.modeling.ood_scores.maxlogit import MaxLogitScore
from vos_det.modeling.ood_scores.react import ReActScore
from vos_det.modeling.ood_scores.vim import ViMScore, vim_ood_score
from vos_det.evaluation.records import computing_all_ood_scores

K, D = 4, 12
EMBEDDING_DIM = 5
# The post-hoc scores of the tiny detector (SAFE needs residual shortcuts: tests/test_safe.py;
# the embedding scores a model trained with an embedding loss: tests/test_knn_embedding.py).
TINY_SCORES = tuple(name for name in POST_HOC_SCORES if name not in ("safe", *EMBEDDING_POST_HOC_SCORES))
LAYERS = {"p2": 6, "p3": 5}


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _fit_data(n=80, seed=0, classifier=True):
    """Class-clustered features, a random affine class layer, and pooled 'layer' features."""
    g = _generator(seed)
    labels = torch.arange(n) % K
    centres = 3.0 * torch.randn(K, D, generator=g)
    features = torch.relu(centres[labels] + torch.randn(n, D, generator=g))
    weight, bias = torch.randn(K, D, generator=g), torch.randn(K, generator=g)
    layer_features = {name: torch.randn(n, c, generator=g) + labels[:, None].float() for name, c in LAYERS.items()}
    projection = torch.randn(D, EMBEDDING_DIM, generator=g)
    return BoxFitData(
        features=features,
        logits=features @ weight.T + bias,
        labels=labels,
        num_classes=K,
        classifier_weight=weight if classifier else None,
        classifier_bias=bias if classifier else None,
        layer_features=layer_features,
        logits_of=lambda x: x @ weight.T + bias,
        embeddings=F.normalize(features @ projection, dim=1),
    )


def _queries(data, n=30, seed=1):
    g = _generator(seed)
    features = torch.relu(4.0 * torch.randn(n, D, generator=g))
    layer_features = {name: 2.0 * torch.randn(n, c, generator=g) for name, c in LAYERS.items()}
    return features, data.logits_of(features), layer_features


def _energy(logits):
    return np.array([-math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()])


# --- scores of the logits ----------------------------------------------------------------


def test_maxlogit_is_minus_the_largest_logit():
    logits = torch.randn(20, K, generator=_generator(0)) * 3
    expected = [-max(row) for row in logits.tolist()]
    np.testing.assert_allclose(MaxLogitScore()(None, logits).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("num_classes,top_m", [(5, 100), (12, 3)])
def test_gen_matches_the_generalized_entropy_of_the_top_m_probabilities(num_classes, top_m):
    logits = torch.randn(15, num_classes, generator=_generator(1)) * 4
    gamma = 0.1
    expected = []
    for row in logits.double().tolist():
        exps = [math.exp(v) for v in row]
        probs = sorted((e / sum(exps) for e in exps), reverse=True)[: min(top_m, num_classes)]
        expected.append(sum(p**gamma * (1 - p) ** gamma for p in probs))
    got = GENScore(gamma=gamma, top_m=top_m)(None, logits)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # Flatter predictions are more OOD.
    assert GENScore()(None, torch.zeros(1, 5)) > GENScore()(None, torch.tensor([[9.0, 0, 0, 0, 0]]))


# --- k-NN --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("chunk_size", [0, 7, 64])
def test_knn_distance_exact_and_chunked_match_brute_force(k, chunk_size):
    g = _generator(2)
    bank = F.normalize(torch.randn(50, D, generator=g), dim=1)
    queries = F.normalize(torch.randn(9, D, generator=g), dim=1)
    expected = [sorted(np.linalg.norm(bank.numpy() - q, axis=1))[k - 1] for q in queries.numpy()]
    got = kth_neighbour_distance(queries, bank, k, chunk_size)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_knn_score_normalises_features_and_subsamples_the_bank():
    data = _fit_data()
    score = KNNScore(max_bank_size=30).fit(data, k=5, k_source="test")
    assert score.bank.shape == (30, D)
    assert score.fitted_config == {"k": 5, "k_source": "test"}
    features, logits, _ = _queries(data)
    expected = kth_neighbour_distance(F.normalize(features, dim=1), score.bank, 5)
    torch.testing.assert_close(score(features, logits), expected)
    # Scaling a feature does not change its score (L2-normalised).
    torch.testing.assert_close(score(3.0 * features, logits), expected)
    assert KNNScore().fit(data).fitted_config == {"k": 50, "k_source": "paper default (CIFAR-10)"}
    with pytest.raises(ValueError, match="k must lie"):
        kth_neighbour_distance(features, score.bank, 31)


def test_knn_k_is_chosen_by_validation_fpr95():
    from vos_det.engine.post_hoc_fitting import choose_knn_k
    from vos_det.metrics import fpr_at_tpr

    data = _fit_data(n=60)
    g = _generator(3)
    id_val = data.features[:20] + 0.1 * torch.randn(20, D, generator=g)
    ood_val = torch.relu(torch.randn(20, D, generator=g) * 3)
    k, tried = choose_knn_k(data.features, id_val, ood_val, candidates=(1, 5, 20, 100))
    assert set(tried) == {1, 5, 20}  # 100 > the 60 training boxes
    bank = F.normalize(data.features, dim=1)
    for candidate, result in tried.items():
        fpr = fpr_at_tpr(
            kth_neighbour_distance(F.normalize(id_val, dim=1), bank, candidate).numpy(),
            kth_neighbour_distance(F.normalize(ood_val, dim=1), bank, candidate).numpy(),
        )
        assert result["fpr95"] == pytest.approx(fpr)
    assert tried[k]["fpr95"] == min(r["fpr95"] for r in tried.values())


# --- ViM and ReAct -------------------------------------------------------------------------


@pytest.mark.parametrize("classifier", [True, False])
def test_vim_matches_a_direct_numpy_implementation(classifier):
    data = _fit_data(classifier=classifier)
    dim = 5
    score = ViMScore(dim=dim).fit(data)
    x = data.features.double().numpy()
    if classifier:
        origin = -np.linalg.pinv(data.classifier_weight.double().numpy()) @ data.classifier_bias.double().numpy()
    else:
        origin = np.zeros(D)
    centred = x - origin
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(x))
    principal = eigenvectors[:, np.argsort(eigenvalues)[::-1][:dim]]

    def residual_norm(h):
        c = h - origin
        return np.linalg.norm(c - c @ principal @ principal.T, axis=1)

    alpha = data.logits.double().numpy().max(axis=1).sum() / residual_norm(x).sum()
    features, logits, _ = _queries(data)
    virtual = alpha * residual_norm(features.double().numpy())
    expected = virtual - np.log(np.exp(logits.double().numpy()).sum(axis=1))
    scores = score(features, logits).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # A monotone function of the paper's log p(virtual class): it equals -softplus(-score).
    all_logits = np.concatenate([virtual[:, None], logits.double().numpy()], axis=1)
    log_p_virtual = np.log(np.exp(virtual) / np.exp(all_logits).sum(axis=1))
    np.testing.assert_allclose(-np.logaddexp(0.0, -expected), log_p_virtual, rtol=1e-9, atol=1e-12)
    assert score.fitted_config == {"dim": dim}
    assert ViMScore().fit(data).fitted_config == {"dim": D // 2}
    with pytest.raises(ValueError, match="VIM.DIM"):
        ViMScore(dim=D).fit(data)


def test_vim_stays_ordered_when_the_virtual_logit_dominates():
    # log p(virtual) rounds to 0 in float32 here; the score must not tie.
    origin, basis = torch.zeros(2), torch.eye(2)
    features = torch.tensor([[200.0, 0.0], [300.0, 0.0], [400.0, 0.0]])
    scores = vim_ood_score(features, torch.zeros(3, 4), origin, basis, torch.tensor(1.0))
    assert scores[0] < scores[1] < scores[2]


def _firing_percentile(features, percentile):
    """The slow reference: numpy's percentile of the entries above their minimum."""
    values = features.numpy().ravel()
    return np.percentile(values[values > values.min()], percentile)


def test_react_clips_at_the_training_percentile_then_takes_the_energy():
    data = _fit_data()
    score = ReActScore(percentile=90).fit(data)
    threshold = _firing_percentile(data.features, 90)
    assert float(score.threshold) == pytest.approx(threshold, rel=1e-6)
    features, logits, _ = _queries(data)
    clipped = np.minimum(features.numpy(), threshold)
    weight, bias = data.classifier_weight.numpy(), data.classifier_bias.numpy()
    expected = _energy(torch.from_numpy(clipped @ weight.T + bias).double())
    np.testing.assert_allclose(score(features, logits, logits_of=data.logits_of).numpy(), expected, rtol=1e-4)
    with pytest.raises(RuntimeError, match="logits_of"):
        score(features, logits)
    assert score.fitted_config["threshold_of"] == "activations above their minimum"


def _with_zeros(data, zero_fraction, seed=5):
    """``data`` with entries of its (post-ReLU) features set to 0 until a ``zero_fraction`` of
    them are 0."""
    flat = data.features.flatten().clone()
    firing = torch.nonzero(flat > 0).flatten()
    silenced = int(round(zero_fraction * flat.numel())) - (flat.numel() - firing.numel())
    flat[firing[torch.randperm(firing.numel(), generator=_generator(seed))[:silenced]]] = 0.0
    sparse = flat.view_as(data.features)
    return BoxFitData(features=sparse, logits=data.logits_of(sparse), labels=data.labels, num_classes=K,
                      classifier_weight=data.classifier_weight, classifier_bias=data.classifier_bias,
                      logits_of=data.logits_of)


@pytest.mark.parametrize("zero_fraction", [0.5, 0.85, 0.89, 0.95])
def test_react_clips_at_the_percentile_of_the_firing_units_whatever_their_sparsity(zero_fraction):
    # The box head's post-ReLU features have ~90% zeros (89.9% and 90.6% on two ResNet-18 digits
    # detectors). The 90th percentile of all activations is then 0 above 90% zeros (every box
    # clipped to the zero vector, one score for all) and a value at the edge of the zeros just
    # below (clipping nearly all of every firing unit); c must not jump between the two.
    data = _with_zeros(_fit_data(n=400), zero_fraction)
    values = data.features.numpy().ravel()
    score = ReActScore(percentile=90).fit(data)
    assert float(score.threshold) == pytest.approx(_firing_percentile(data.features, 90), rel=1e-6)
    assert score.fitted_config["minimum_fraction"] == pytest.approx(np.mean(values <= values.min()))
    # About one firing activation in ten is clipped, whatever the share of zeros.
    firing = values[values > 0]
    assert np.mean(firing > float(score.threshold)) == pytest.approx(0.1, abs=0.01)
    # The clipped logits keep the class evidence of the training boxes.
    clipped_logits = data.logits_of(data.features.clamp(max=score.threshold))
    assert (clipped_logits.argmax(1) == data.logits.argmax(1)).float().mean() > 0.8
    features, logits, _ = _queries(data)
    scores = score(features, logits, logits_of=data.logits_of)
    assert len(torch.unique(scores)) == len(scores)


def test_react_refuses_features_where_nothing_fires():
    data = _with_zeros(_fit_data(), 1.0)
    with pytest.raises(ValueError, match="all 960 training activations equal 0"):
        ReActScore(percentile=90).fit(data)


# --- multi-layer Mahalanobis ------------------------------------------------------------------


def test_multilayer_mahalanobis_matches_a_direct_implementation_and_adds_classes():
    data = _fit_data()
    score = MultiLayerMahalanobisScore(in_features=("p2", "p3")).fit(data)
    x = torch.cat([data.layer_features["p2"], data.layer_features["p3"], data.features], dim=1).double().numpy()
    labels = data.labels.numpy()
    means = np.stack([x[labels == k].mean(axis=0) for k in range(K)])
    covariance = sum((x[labels == k] - means[k]).T @ (x[labels == k] - means[k]) for k in range(K)) / len(x)
    precision = np.linalg.inv(covariance + 1e-6 * np.eye(x.shape[1]))
    features, logits, layer_features = _queries(data)
    q = torch.cat([layer_features["p2"], layer_features["p3"], features], dim=1).double().numpy()
    expected = [min((v - m) @ precision @ (v - m) for m in means) for v in q]
    np.testing.assert_allclose(score(features, logits, layer_features=layer_features).numpy(), expected, rtol=1e-4)
    assert score.layer_names() == ("p2", "p3")
    # Class-incremental: adding a class from its boxes equals a refit with it.
    g = _generator(4)
    new_features = torch.relu(torch.randn(10, D, generator=g) + 5)
    new_layers = {name: torch.randn(10, c, generator=g) - 3 for name, c in LAYERS.items()}
    assert score.add_class(new_features, new_layers) == K
    refit = MultiLayerMahalanobisScore(in_features=("p2", "p3")).fit(
        BoxFitData(
            features=torch.cat([data.features, new_features]),
            logits=torch.zeros(len(data.features) + 10, K + 1),
            labels=torch.cat([data.labels, torch.full((10,), K)]),
            num_classes=K + 1,
            layer_features={n: torch.cat([data.layer_features[n], new_layers[n]]) for n in LAYERS},
        )
    )
    torch.testing.assert_close(
        score(features, logits, layer_features=layer_features),
        refit(features, logits, layer_features=layer_features),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(RuntimeError, match="feature maps"):
        score(features, logits)


# --- state, pooling, registry -----------------------------------------------------------------


def test_every_score_is_registered_and_its_state_round_trips_with_weights_only(tmp_path):
    data = _fit_data(n=120)
    scores = build_post_hoc_scores()
    assert tuple(scores) == POST_HOC_SCORES
    scores["mahalanobis_multilayer"].in_features = tuple(LAYERS)
    # SAFE fits on its own data and reads hooked modules (tests/test_safe.py).
    del scores["safe"]
    for name, score in scores.items():
        if score.needs_fit:
            assert not score.is_fitted()
            with pytest.raises(RuntimeError, match="tools/fit_ood_scores.py"):
                score(data.features, data.logits, layer_features=data.layer_features, logits_of=data.logits_of)
            if name != "fused":  # fitted on validation boxes (tests/test_fused_score.py)
                score.fit(data)
    validation = {"energy": -torch.logsumexp(data.logits, dim=1), "knn": scores["knn"](data.features, data.logits)}
    scores["fused"].fit(id_parts=validation, logit_part="energy", feature_part="knn", scaling="zscore", rule="sum")
    path = str(tmp_path / "post_hoc_scores.pth")
    save_post_hoc_state(dict(scores.items()), path, D, K, weights="w.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw["scores"]) == {name for name, s in scores.items() if s.needs_fit}
    loaded = build_post_hoc_scores()
    assert load_post_hoc_state(dict(loaded.items()), path, D, K) == {"weights": "w.pth"}
    features, logits, layer_features = _queries(data)
    for name in scores:
        if loaded[name].reads_embedding:  # its input is an embedding, of its bank's dimension
            embeddings = F.normalize(torch.randn(len(features), EMBEDDING_DIM, generator=_generator(2)), dim=1)
            torch.testing.assert_close(loaded[name](embeddings, logits), scores[name](embeddings, logits))
            continue
        kwargs = {"layer_features": layer_features, "logits_of": data.logits_of}
        if loaded[name].part_names():
            kwargs["part_scores"] = {part: scores[part](features, logits, **kwargs) for part in loaded[name].part_names()}
        torch.testing.assert_close(loaded[name](features, logits, **kwargs), scores[name](features, logits, **kwargs))
    with pytest.raises(ValueError, match="run tools/fit_ood_scores.py"):
        load_post_hoc_state(dict(build_post_hoc_scores().items()), path, D + 1, K)
    with pytest.raises(FileNotFoundError, match="MODEL.OOD.POST_HOC.STATE"):
        load_post_hoc_state(dict(loaded.items()), str(tmp_path / "missing.pth"), D, K)


def test_box_pooling_averages_each_map_over_the_box_at_its_stride():
    # On a map linear in the coordinates, the average over a box is the value at its centre.
    height, width, strides = 16, 20, {"a": 4, "b": 8}
    maps = {}
    for name, stride in strides.items():
        ys, xs = torch.meshgrid(
            torch.arange(height * 4 // stride).float(), torch.arange(width * 4 // stride).float(), indexing="ij"
        )
        maps[name] = torch.stack([xs, ys, 2 * xs - ys])[None].repeat(2, 1, 1, 1)
    boxes = [torch.tensor([[8.0, 4.0, 40.0, 36.0]]), torch.tensor([[16.0, 16.0, 48.0, 32.0], [0.0, 0.0, 8.0, 8.0]])]
    pooled = pool_box_layers(maps, strides, ("a", "b"), boxes)
    all_boxes = torch.cat(boxes)
    for name, stride in strides.items():
        cx = (all_boxes[:, 0] + all_boxes[:, 2]) / 2 / stride - 0.5
        cy = (all_boxes[:, 1] + all_boxes[:, 3]) / 2 / stride - 0.5
        expected = torch.stack([cx, cy, 2 * cx - cy], dim=1)
        inside = all_boxes[:, 0] >= stride  # boxes clear of the border (no clamping)
        torch.testing.assert_close(pooled[name][inside], expected[inside], rtol=1e-5, atol=1e-4)
    with pytest.raises(KeyError, match="backbone"):
        pool_box_layers(maps, strides, ("p9",), boxes)


# --- in the detector ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_tiny_detector(tmp_path_factory, registered_tiny_digits, random_detector_fitted):
    """A random-init digits detector, its weights, and its post-hoc state fitted as the tool
    does on a tiny registered digits-det (k of k-NN chosen on digits_det_val + digits_det_ood_val)."""
    with registered_tiny_digits(str(tmp_path_factory.mktemp("datasets")), num_val=3) as _:
        overrides = ["MODEL.OOD.POST_HOC.SAFE.EPOCHS", "3", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
        yield random_detector_fitted(tmp_path_factory.mktemp("model"), overrides)


def _detector(cfg, weights, *overrides):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    merge_overrides(cfg, list(overrides))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return model.eval()


def _test_batch(cfg):
    from detectron2.data import build_detection_test_loader

    return next(iter(build_detection_test_loader(cfg, "digits_det_test")))


def test_fitted_state_is_next_to_the_weights_and_loads_with_weights_only(fitted_tiny_detector):
    _, weights, state = fitted_tiny_detector
    assert state == weights.replace("model.pth", "post_hoc_scores.pth")
    raw = torch.load(state, weights_only=True)
    # SAFE reads residual shortcuts, which the tiny backbone has none of: left out, not failed.
    assert set(raw["scores"]) == {"knn", "vim", "react", "mahalanobis_multilayer", "fused"}
    assert raw["scores"]["knn"]["config"]["k_source"] == "lowest FPR95 on digits_det_val vs digits_det_ood_val"
    assert set(raw["info"]["knn_validation"]) <= {"1", "5", "10", "20", "50", "100", "200"}
    assert raw["scores"]["mahalanobis_multilayer"]["config"]["in_features"] == ["p2", "p3", "p4", "p5"]


def test_every_detection_gets_every_post_hoc_score_and_any_can_back_is_ood(fitted_tiny_detector, capture_box_inputs):
    cfg, weights, state = fitted_tiny_detector
    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "vim")
    with torch.no_grad(), computing_all_ood_scores(model):
        outputs = model(_test_batch(cfg))
    assert sum(len(o["instances"]) for o in outputs) > 0
    for output in outputs:
        instances = output["instances"]
        for name in TINY_SCORES:
            values = instances.get(f"ood_scores_{name}")
            assert values.shape == (len(instances),) and torch.isfinite(values).all(), name
        assert not instances.has("ood_scores_safe")
        assert torch.equal(instances.ood_scores, instances.ood_scores_vim)
    # Same weights and state through another route: the k-NN score of the detections'
    # box features equals the bank's k-th neighbour distance.
    predictor = model.roi_heads.box_predictor
    captured = capture_box_inputs(predictor)
    with torch.no_grad(), computing_all_ood_scores(model):
        outputs = model(_test_batch(cfg))
    knn = predictor.post_hoc.scores["knn"]
    expected = kth_neighbour_distance(F.normalize(captured["features"], dim=1), knn.bank, knn.fitted_config["k"])
    torch.testing.assert_close(torch.cat([o["instances"].ood_scores_knn for o in outputs]), expected)


def test_feature_maps_are_pooled_only_for_a_score_asked_for(fitted_tiny_detector, monkeypatch):
    from vos_det.modeling.ood_scores import scoring

    cfg, weights, state = fitted_tiny_detector
    pooled = []

    def counting_pool(*args, **kwargs):
        pooled.append(args[2])
        return pool_box_layers(*args, **kwargs)

    monkeypatch.setattr(scoring, "pool_box_layers", counting_pool)
    batch = _test_batch(cfg)
    # Fitted multi-layer scores, none of them behind is_ood: the maps are not even handed over.
    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "vos")
    handed = []
    original_maps = model.roi_heads.box_predictor.post_hoc.feature_maps
    monkeypatch.setattr(model.roi_heads.box_predictor.post_hoc, "feature_maps",
                        lambda *args: handed.append(True) or original_maps(*args))
    with torch.no_grad():
        outputs = model(batch)
    assert sum(len(o["instances"]) for o in outputs) > 0
    assert pooled == [] and handed == []
    with torch.no_grad(), computing_all_ood_scores(model):
        model(batch)
    assert pooled == [["p2", "p3", "p4", "p5"]] and handed == [True]
    # The score behind is_ood pools its maps, those alone.
    pooled.clear()
    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "mahalanobis_multilayer")
    with torch.no_grad():
        model(batch)
    assert pooled == [list(model.roi_heads.box_predictor.post_hoc.scores["mahalanobis_multilayer"].layer_names())]


def test_fused_is_chosen_on_validation_and_recomputes_from_the_detections_fields(fitted_tiny_detector):
    cfg, weights, state = fitted_tiny_detector
    raw = torch.load(state, weights_only=True)
    report = raw["info"]["fused_validation"]
    config = raw["scores"]["fused"]["config"]
    chosen = {key: config[key] for key in ("logit_part", "feature_part", "scaling", "rule")}
    assert report["chosen"] == chosen
    assert config["choice"]["source"] == "lowest FPR95 on the detections of digits_det_val vs digits_det_ood_val"
    # Every configured candidate was tried (the logistic rule with k-NN only: a virtual outlier
    # has no multi-layer feature maps), and the one kept has the lowest FPR95.
    assert len(report["candidates"]) == 2 * (2 * 3 + 2 * 2)
    best = min(c["fpr95"] for c in report["candidates"])
    assert [c["fpr95"] for c in report["candidates"] if all(c[k] == v for k, v in chosen.items())] == [best]
    assert report["num_virtual_outliers"] == 200 * cfg.MODEL.ROI_HEADS.NUM_CLASSES

    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state, "MODEL.OOD.SCORE", "fused")
    with torch.no_grad(), computing_all_ood_scores(model):
        outputs = model(_test_batch(cfg))
    instances = [o["instances"] for o in outputs]
    fused = torch.cat([i.ood_scores_fused for i in instances]).double().numpy()
    assert all(torch.equal(i.ood_scores, i.ood_scores_fused) for i in instances)
    logit_field = {"energy": "ood_scores_energy", "gen": "ood_scores_gen"}[chosen["logit_part"]]
    parts = np.stack([
        torch.cat([i.get(logit_field) for i in instances]).double().numpy(),
        torch.cat([i.get(f"ood_scores_{chosen['feature_part']}") for i in instances]).double().numpy(),
    ], axis=1)
    buffers = raw["scores"]["fused"]["buffers"]
    if chosen["scaling"] == "zscore":
        scaled = (parts - buffers["mean"].numpy()) / buffers["std"].numpy()
    else:
        scaled = np.stack([
            [(np.sum(ref < v) + np.sum(ref <= v)) / (2 * len(ref)) for v in column]
            for column, ref in zip(parts.T, buffers["reference"].numpy())
        ], axis=1)
    weights_ = buffers["weights"].numpy()
    expected = {"max": scaled.max(axis=1), "sum": scaled.sum(axis=1), "logistic": scaled @ weights_[:2] + weights_[2]}
    # The fields are float32: the percentile of a recomputed part can move by one rank.
    np.testing.assert_allclose(fused, expected[chosen["rule"]], rtol=1e-4, atol=2.0 / buffers["reference"].shape[1])


def test_fused_is_scaled_on_the_detections_the_evaluation_scores_on_the_id_validation_set(fitted_tiny_detector):
    from vos_det.engine.feature_extraction import build_annotated_test_loader
    from vos_det.evaluation.box_selection import select_boxes_for_config
    from vos_det.evaluation.records import collect_detections

    cfg, weights, state = fitted_tiny_detector
    raw = torch.load(state, weights_only=True)
    config, buffers = raw["scores"]["fused"]["config"], raw["scores"]["fused"]["buffers"]
    # The same detections, collected again with the fitted parts, and kept as the evaluation
    # keeps test boxes (the threshold found on the ID validation set itself).
    # (As fitted: the box selection of the tool's config, optimal F1 on digits_det_val.)
    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state)
    records = collect_detections(model, build_annotated_test_loader(cfg, "digits_det_val"))
    fit_cfg = load_config("digits_vos_tiny.yaml", [])
    selection = select_boxes_for_config(fit_cfg, records, "digits_det_val")
    kept = selection.apply(records)
    assert selection.rule == "optimal_f1" and 0 < len(kept) < len(records)
    assert config["choice"]["num_id"] == len(kept)
    assert config["choice"]["boxes"] == selection.describe()
    for row, part in enumerate((config["logit_part"], config["feature_part"])):
        values = np.sort(kept.ood_score_table[part])
        np.testing.assert_allclose(buffers["reference"][row].numpy(), values, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(buffers["mean"][row]), values.mean(), rtol=1e-5, atol=1e-6)


def test_fused_is_left_out_when_the_box_selection_keeps_no_validation_detection(fitted_tiny_detector, tmp_path, caplog):
    from vos_det.engine.fused_fitting import NoValidationDetections
    from vos_det.engine.post_hoc_fitting import fit_post_hoc_scores

    _, weights, _ = fitted_tiny_detector
    # Class scores of a random detector stay far below 0.999: no validation box is kept.
    fit_cfg = load_config("digits_vos_tiny.yaml", [
        "TEST.OOD.BOX_SELECTION", "fixed", "TEST.OOD.SCORE_THRESHOLD", "0.999", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    ])
    sets = dict(val_id="digits_det_val", val_ood="digits_det_ood_val")
    with pytest.raises(NoValidationDetections, match="keeps none of its"):
        fit_post_hoc_scores(fit_cfg, weights, output=str(tmp_path / "asked.pth"), scores=["knn", "fused"], **sets)
    # Not asked for by name: the other scores are fitted and saved, the fused one left out.
    with caplog.at_level("WARNING", logger="vos_det.engine.post_hoc_fitting"):
        state = fit_post_hoc_scores(fit_cfg, weights, output=str(tmp_path / "all.pth"), **sets)
    saved = torch.load(state, weights_only=True)
    assert "fused" not in saved["scores"] and "knn" in saved["scores"]
    assert "fused OOD score not fitted" in caplog.text and "digits_det_val" in caplog.text


def test_updating_a_state_refits_the_scores_named_and_keeps_the_others(fitted_tiny_detector, tmp_path):
    import shutil

    from vos_det.engine.post_hoc_fitting import fit_post_hoc_scores

    cfg, weights, state = fitted_tiny_detector
    copy = str(tmp_path / "post_hoc_scores.pth")
    shutil.copy(state, copy)
    before = torch.load(copy, weights_only=True)
    with pytest.raises(ValueError, match="--scores"):
        fit_post_hoc_scores(cfg, weights, output=copy, val_id="digits_det_val", val_ood="digits_det_ood_val",
                            update=True)
    with pytest.raises(FileNotFoundError, match="no post-hoc state file to update"):
        fit_post_hoc_scores(cfg, weights, output=str(tmp_path / "none.pth"), val_id="digits_det_val",
                            val_ood="digits_det_ood_val", scores=["fused"], update=True)
    # Another choice of the fused score: only the sum rule on z-scores allowed.
    refit_cfg = cfg.clone()
    merge_overrides(refit_cfg, ["MODEL.OOD.POST_HOC.FUSED.RULES", "['sum']", "MODEL.OOD.POST_HOC.FUSED.SCALINGS",
                                "['zscore']"])
    fit_post_hoc_scores(refit_cfg, weights, output=copy, val_id="digits_det_val", val_ood="digits_det_ood_val",
                        scores=["fused"], update=True)
    after = torch.load(copy, weights_only=True)
    assert set(after["scores"]) == set(before["scores"])
    for name in set(before["scores"]) - {"fused"}:
        assert after["scores"][name]["config"] == before["scores"][name]["config"], name
        for key, tensor in before["scores"][name]["buffers"].items():
            assert torch.equal(after["scores"][name]["buffers"][key], tensor), (name, key)
    assert (after["scores"]["fused"]["config"]["rule"], after["scores"]["fused"]["config"]["scaling"]) == ("sum", "zscore")
    assert after["info"]["knn_validation"] == before["info"]["knn_validation"]
    assert len(after["info"]["fused_validation"]["candidates"]) == 2 * 2


def test_post_hoc_state_stays_out_of_checkpoints(fitted_tiny_detector):
    cfg, weights, state = fitted_tiny_detector
    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state)
    assert not [key for key in model.state_dict() if "post_hoc" in key]
    incompatible = model.load_state_dict(torch.load(weights, weights_only=True)["model"], strict=False)
    assert not [key for key in incompatible.missing_keys if "post_hoc" in key]
    assert model.roi_heads.box_predictor.post_hoc.scores["knn"].is_fitted()


def test_a_score_without_its_state_names_the_tool(fitted_tiny_detector):
    cfg, weights, _ = fitted_tiny_detector
    model = _detector(cfg, weights, "MODEL.OOD.SCORE", "knn")
    with pytest.raises(RuntimeError, match="tools/fit_ood_scores.py"):
        with torch.no_grad():
            model(_test_batch(cfg))


def test_evaluation_records_collect_the_new_scores(fitted_tiny_detector):
    from detectron2.data import build_detection_test_loader

    from vos_det.evaluation.records import collect_detections

    cfg, weights, state = fitted_tiny_detector
    model = _detector(cfg, weights, "MODEL.OOD.POST_HOC.STATE", state)
    records = collect_detections(model, build_detection_test_loader(cfg, "digits_det_test"))
    assert set(TINY_SCORES) <= set(records.ood_score_table)
    assert all(len(values) == len(records) for values in records.ood_score_table.values())
