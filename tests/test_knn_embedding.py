"""The k-NN score in the embedding of an embedding loss (SIREN-KNN): against a direct numpy
search, in the box predictor, and fitted by the tool on a SIREN-trained tiny detector."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec

from vos_det.config import default_config
from vos_det.modeling.ood_scores import EMBEDDING_POST_HOC_SCORES, BoxFitData, build_post_hoc_scores
from vos_det.modeling.ood_scores.knn_embedding import EmbeddingKNNScore
from vos_det.modeling.ood_scores.scoring import PostHocScoring
from vos_det.modeling.output_layers import VOSOutputLayers
from vos_det.evaluation.records import computing_all_ood_scores

K, D = 3, 10


def _predictor(*overrides):
    cfg = default_config()
    cfg.merge_from_list(
        ["MODEL.ROI_HEADS.NUM_CLASSES", K, "MODEL.VOS.ENABLED", False, "MODEL.OOD.SCORE", "energy", *overrides]
    )
    torch.manual_seed(0)
    return VOSOutputLayers(cfg, ShapeSpec(channels=D)).eval()


def _fit_data(predictor, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    features = torch.relu(3.0 * torch.randn(K, D, generator=g)[labels] + torch.randn(n, D, generator=g))
    embedding_of = predictor.embedding_of()
    with torch.no_grad():
        embeddings = embedding_of(features) if embedding_of is not None else None
        logits = predictor.foreground_logits(features)
    return BoxFitData(features=features, logits=logits, labels=labels, num_classes=K, embeddings=embeddings)


def _direct_kth_distance(queries, bank, k):
    """The k-th smallest Euclidean distance of each query row to the bank rows (numpy)."""
    queries, bank = queries.double().numpy(), bank.double().numpy()
    distances = np.sqrt(((queries[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2))
    return np.sort(distances, axis=1)[:, k - 1]


@pytest.mark.parametrize("loss", ["SIRENLoss", "CIDERLoss"])
def test_score_is_the_kth_neighbour_distance_of_the_embedding(loss):
    predictor = _predictor("MODEL.EMBEDDING.LOSSES", [loss])
    data = _fit_data(predictor)
    # The embedding is the loss's own: unit vectors of its projection head's dimension.
    assert data.embeddings.shape[0] == data.features.shape[0] and data.embeddings.shape[1] != D
    torch.testing.assert_close(data.embeddings.norm(dim=1), torch.ones(len(data.embeddings)))
    score = EmbeddingKNNScore().fit(data, k=4, k_source="given")
    assert score.fitted_config == {"k": 4, "k_source": "given"}
    queries = torch.relu(4.0 * torch.randn(25, D, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        query_embeddings = predictor.embedding_of()(queries)
        table = PostHocScoring(torch.nn.ModuleDict({"knn_embedding": score})).table(
            queries, predictor.foreground_logits(queries), embedding_of=predictor.embedding_of()
        )
    expected = _direct_kth_distance(query_embeddings, data.embeddings, 4)
    np.testing.assert_allclose(table["knn_embedding"].numpy(), expected, rtol=1e-5, atol=1e-5)
    # Not the k-NN of the box features.
    box_knn = _direct_kth_distance(F.normalize(queries, dim=1), F.normalize(data.features, dim=1), 4)
    assert not np.allclose(expected, box_knn, atol=1e-3)


def test_a_model_without_an_embedding_loss_neither_fits_nor_computes_it():
    predictor = _predictor()
    assert predictor.embedding_of() is None
    data = _fit_data(predictor)
    with pytest.raises(ValueError, match="SIRENLoss or CIDERLoss"):
        EmbeddingKNNScore().fit(data)
    # A state fitted elsewhere is not computed without the embedding, and the reason is named.
    siren = _predictor("MODEL.EMBEDDING.LOSSES", ["SIRENLoss"])
    predictor.post_hoc.scores["knn_embedding"].fit(_fit_data(siren), k=2)
    features = torch.randn(5, D)
    table, _ = predictor.ood_score_table(predictor.foreground_logits(features).detach(), features)
    assert "knn_embedding" not in table and "energy" in table
    assert "not trained with" in predictor.post_hoc.missing_reason("knn_embedding")
    assert "knn_embedding" in EMBEDDING_POST_HOC_SCORES and "knn_embedding" in build_post_hoc_scores()


def test_the_fit_tool_chooses_k_on_validation_and_every_detection_gets_the_score(
    tmp_path_factory, registered_tiny_digits, random_detector_fitted, capture_box_inputs
):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader
    from detectron2.modeling import build_model

    overrides = ["MODEL.EMBEDDING.LOSSES", '["SIRENLoss"]', "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    with registered_tiny_digits(str(tmp_path_factory.mktemp("datasets")), num_val=3):
        cfg, weights, state = random_detector_fitted(
            tmp_path_factory.mktemp("model"), overrides, scores=["knn", "knn_embedding"]
        )
        raw = torch.load(state, weights_only=True)
        fitted = raw["scores"]["knn_embedding"]
        assert fitted["config"]["k_source"] == "lowest FPR95 on digits_det_val vs digits_det_ood_val"
        assert set(raw["info"]["knn_embedding_validation"]) <= {"1", "5", "10", "20", "50", "100", "200"}
        embedding_dim = cfg.MODEL.EMBEDDING.SIREN.EMBEDDING_DIM
        assert fitted["buffers"]["bank"].shape[1] == embedding_dim != raw["scores"]["knn"]["buffers"]["bank"].shape[1]

        cfg.MODEL.OOD.POST_HOC.STATE = state
        cfg.MODEL.OOD.SCORE = "knn_embedding"
        model = build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        model.eval()
        predictor = model.roi_heads.box_predictor
        captured = capture_box_inputs(predictor)
        batch = next(iter(build_detection_test_loader(cfg, "digits_det_test")))
        with torch.no_grad(), computing_all_ood_scores(model):
            outputs = model(batch)
            embeddings = predictor.embedding_of()(captured["features"])
    scores = torch.cat([o["instances"].ood_scores_knn_embedding for o in outputs])
    assert len(scores) > 0
    torch.testing.assert_close(torch.cat([o["instances"].ood_scores for o in outputs]), scores)
    expected = _direct_kth_distance(embeddings, fitted["buffers"]["bank"], fitted["config"]["k"])
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-4)
