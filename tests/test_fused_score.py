"""Tests of the fused post-hoc score (vos_det/modeling/ood_scores/fused.py) against a direct
numpy implementation, and of its choice on hand-made validation scores
(vos_det/engine/fused_fitting.py)."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from vos_det.engine.fused_fitting import choose_fused_candidate, part_scores, virtual_outlier_features
from vos_det.metrics import auroc, fpr_at_tpr
from vos_det.modeling.ood_scores import BoxFitData, build_post_hoc_scores
from vos_det.modeling.ood_scores.fused import FusedScore, fit_logistic, id_percentile
from vos_det.modeling.ood_scores.knn import KNNScore

ALL = dict(logit_parts=("energy", "gen"), feature_parts=("knn",), scalings=("zscore", "percentile"))


def _rng(seed):
    return np.random.default_rng(seed)


def _numpy_percentile(scores, reference):
    """The mid-rank percentile inside the reference's range, one per std beyond it."""
    reference, std = np.sort(reference), np.std(reference, ddof=1)
    values = []
    for s in scores:
        if s > reference[-1]:
            values.append(1.0 + (s - reference[-1]) / std)
        elif s < reference[0]:
            values.append((s - reference[0]) / std)
        else:
            values.append(((reference < s).sum() + (reference <= s).sum()) / (2 * len(reference)))
    return np.array(values)


def _numpy_fused(logit, feature, id_logit, id_feature, scaling, rule, weights=None):
    """The fused score written out for one candidate."""
    if scaling == "zscore":
        u = np.stack([(logit - id_logit.mean()) / id_logit.std(ddof=1), (feature - id_feature.mean()) / id_feature.std(ddof=1)], 1)
    else:
        u = np.stack([_numpy_percentile(logit, id_logit), _numpy_percentile(feature, id_feature)], 1)
    if rule == "max":
        return u.max(axis=1)
    if rule == "sum":
        return u.sum(axis=1)
    return u @ weights[:2] + weights[2]


def _parts(logit, feature):
    return {"energy": torch.tensor(logit), "knn": torch.tensor(feature)}


def test_id_percentile_is_the_mid_rank_share_of_id_scores_below_and_continues_beyond():
    reference = np.array([0.0, 1.0, 1.0, 2.0, 5.0])
    std = np.std(reference, ddof=1)
    scores = np.array([-1.0, 0.0, 1.0, 1.5, 5.0, 9.0, 13.0])
    got = id_percentile(torch.tensor(scores)[:, None], torch.tensor(reference)[None, :], torch.tensor([std]))
    np.testing.assert_allclose(got[:, 0].numpy(), _numpy_percentile(scores, reference))
    np.testing.assert_allclose(got[:, 0].numpy(), [-1 / std, 0.1, 0.4, 0.6, 0.9, 1 + 4 / std, 1 + 8 / std])
    # Boxes beyond every ID box keep their order: no tie at 1 for a threshold to swallow.
    assert np.all(np.diff(got[:, 0].numpy()) > 0)


@pytest.mark.parametrize("scaling", ["zscore", "percentile"])
@pytest.mark.parametrize("rule", ["max", "sum", "logistic"])
def test_fused_score_matches_a_direct_numpy_implementation(scaling, rule):
    rng = _rng(0)
    id_logit, id_feature = rng.normal(-5, 2, 300), rng.gamma(2.0, 0.2, 300)
    outliers = _parts(rng.normal(-3, 2, 100), rng.gamma(2.0, 0.4, 100))
    score = FusedScore().fit(
        id_parts=_parts(id_logit, id_feature), outlier_parts=outliers, logit_part="energy", feature_part="knn",
        scaling=scaling, rule=rule,
    )
    assert score.part_names() == ("knn",)
    logits = torch.tensor(rng.normal(0, 3, (40, 4)))
    feature = torch.tensor(rng.gamma(2.0, 0.3, 40))
    got = score(None, logits, part_scores={"knn": feature})
    energy = -np.log(np.exp(logits.numpy()).sum(axis=1))
    expected = _numpy_fused(energy, feature.numpy(), id_logit, id_feature, scaling, rule, score.weights.numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    if rule != "logistic":
        return
    # The logistic weights minimise the class-balanced, ridge-penalised log-loss of the scaled
    # ID boxes (0) against the outliers (1): compared with scipy's minimiser of that objective.
    x_id = score.scale(torch.stack([torch.tensor(id_logit), torch.tensor(id_feature)], 1)).numpy()
    x_out = score.scale(torch.stack([outliers["energy"], outliers["knn"]], 1)).numpy()

    def objective(params):
        w, b = params[:2], params[2]
        return (
            0.5 * np.logaddexp(0, x_id @ w + b).mean() + 0.5 * np.logaddexp(0, -(x_out @ w + b)).mean()
            + 0.5e-3 * (w**2).sum()
        )

    best = minimize(objective, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(score.weights.numpy(), best, atol=1e-4)
    # Outliers lie higher on both parts: both weights come out positive.
    assert (score.weights[:2] > 0).all()


def test_fit_logistic_stays_finite_on_separable_data():
    weights = fit_logistic(torch.tensor([[-2.0], [-1.0]]), torch.tensor([[1.0], [2.0]]))
    assert torch.isfinite(weights).all() and weights[0] > 0


def test_the_rule_choice_follows_fpr95_on_hand_made_validation_scores():
    rng = _rng(1)
    n = 400
    id_parts = _parts(rng.normal(0, 1, n), rng.normal(0, 1, n))
    id_parts["gen"] = torch.tensor(rng.normal(0, 1, n))
    # Near OOD shows on the logit part only, far OOD on the feature part only: max catches both.
    near = {"energy": rng.normal(5, 1, n // 2), "knn": rng.normal(0, 1, n // 2), "gen": rng.normal(0, 1, n // 2)}
    far = {"energy": rng.normal(0, 1, n // 2), "knn": rng.normal(5, 1, n // 2), "gen": rng.normal(0, 1, n // 2)}
    mixed = {name: torch.tensor(np.concatenate([near[name], far[name]])) for name in near}
    best, tried = choose_fused_candidate(id_parts, mixed, None, rules=("max", "sum"), **ALL)
    assert len(tried) == 2 * 2 * 2
    for candidate in tried:
        fused = FusedScore().fit(id_parts=id_parts, **{k: candidate[k] for k in ("logit_part", "feature_part", "scaling", "rule")})
        id_scores = fused.combine_parts(id_parts[candidate["logit_part"]], id_parts["knn"]).numpy()
        ood_scores = fused.combine_parts(mixed[candidate["logit_part"]], mixed["knn"]).numpy()
        assert candidate["fpr95"] == pytest.approx(fpr_at_tpr(id_scores, ood_scores))
        assert candidate["auroc"] == pytest.approx(auroc(id_scores, ood_scores))
    assert best.fitted_config["rule"] == "max" and best.fitted_config["logit_part"] == "energy"
    lowest = min(c["fpr95"] for c in tried)
    assert [c["fpr95"] for c in tried if c["rule"] == "max" and c["logit_part"] == "energy"][0] == lowest

    # OOD a little higher on both parts: the sum adds the two shifts, the max does not.
    both = _parts(rng.normal(1.5, 1, n), rng.normal(1.5, 1, n))
    both["gen"] = torch.tensor(rng.normal(0, 1, n))
    best, _ = choose_fused_candidate(id_parts, both, None, rules=("max", "sum"), **ALL)
    assert best.fitted_config["rule"] == "sum" and best.fitted_config["logit_part"] == "energy"


def test_the_logistic_rule_learns_to_ignore_a_part_the_outliers_do_not_move():
    rng = _rng(2)
    n = 400
    id_parts = _parts(rng.normal(0, 1, n), rng.normal(0, 1, n))
    # Outliers and OOD boxes differ from ID on the feature part alone; the logit part is noise.
    outliers = _parts(rng.normal(0, 1, n), rng.normal(3, 1, n))
    ood = _parts(rng.normal(0, 1, n), rng.normal(2.5, 1, n))
    best, tried = choose_fused_candidate(
        id_parts, ood, outliers, logit_parts=("energy",), feature_parts=("knn",), scalings=("zscore",),
        rules=("max", "sum", "logistic"),
    )
    assert [c["rule"] for c in tried] == ["max", "sum", "logistic"]
    assert best.fitted_config["rule"] == "logistic"
    weights = best.weights.numpy()
    assert abs(weights[0]) < 0.2 * weights[1]
    # Without outliers there is no logistic candidate; a feature part the outliers lack has none either.
    _, tried = choose_fused_candidate(id_parts, ood, None, ("energy",), ("knn",), ("zscore",), ("max", "logistic"))
    assert [c["rule"] for c in tried] == ["max"]
    with pytest.raises(ValueError, match="no fused candidate"):
        choose_fused_candidate(id_parts, ood, {"energy": outliers["energy"]}, ("energy",), ("knn",), ("zscore",), ("logistic",))


def test_the_fused_state_round_trips_and_an_unfitted_fused_names_the_tool():
    rng = _rng(3)
    score = FusedScore().fit(
        id_parts=_parts(rng.normal(0, 1, 50), rng.normal(0, 1, 50)), logit_part="energy", feature_part="knn",
        scaling="percentile", rule="max", choice={"source": "test"},
    )
    loaded = build_post_hoc_scores()["fused"].load_fitted_state(score.fitted_state())
    logits, feature = torch.tensor(rng.normal(0, 1, (9, 3))), torch.tensor(rng.normal(0, 1, 9))
    torch.testing.assert_close(loaded(None, logits, part_scores={"knn": feature}), score(None, logits, part_scores={"knn": feature}))
    assert loaded.fitted_config["choice"] == {"source": "test"}
    with pytest.raises(RuntimeError, match="'knn' score, which was not given"):
        loaded(None, logits)
    unfitted = FusedScore()
    assert unfitted.part_names() == ()
    with pytest.raises(RuntimeError, match="tools/fit_ood_scores.py"):
        unfitted(None, logits, part_scores={"knn": feature})
    with pytest.raises(ValueError, match="--val-id and --val-ood"):
        unfitted.fit(None)


def test_virtual_outliers_lie_outside_the_training_boxes_and_get_every_part():
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(600) % 3
    centres = 4.0 * torch.randn(3, 6, generator=g)
    features = centres[labels] + torch.randn(600, 6, generator=g)
    weight = torch.randn(3, 6, generator=g)
    train = BoxFitData(features=features, logits=features @ weight.T, labels=labels, num_classes=3,
                       logits_of=lambda x: x @ weight.T)
    outliers = virtual_outlier_features(train, per_class=50, sample_from=10000, eps=1e-4, seed=0)
    assert outliers.shape == (150, 6)
    torch.testing.assert_close(outliers, virtual_outlier_features(train, 50, 10000, 1e-4, seed=0))
    # The least likely of 10,000 draws of a 6-d Gaussian lies ~4.9 sd out (chi-square(6)
    # 1e-4 quantile = 27.9), past almost every training box (median radius ~2.4).
    means = torch.stack([features[labels == k].mean(0) for k in range(3)])
    radius_train = (features - means[labels]).norm(dim=1)
    radius_out = (outliers - means.repeat(50, 1)).norm(dim=1)
    assert radius_out.median() > torch.quantile(radius_train, 0.99)
    knn = KNNScore().fit(train, k=5)
    boxes = BoxFitData(features=outliers, logits=outliers @ weight.T, labels=labels[:150], num_classes=3)
    parts = part_scores({"knn": knn}, boxes, ("energy", "gen"), ("knn",), 0.1, 100)
    assert set(parts) == {"energy", "gen", "knn"}
    torch.testing.assert_close(parts["knn"], knn(outliers, None).double())
