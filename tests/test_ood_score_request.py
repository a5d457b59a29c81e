"""Inference computes the score behind is_ood alone unless the evaluation asks for all."""
import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from vos_det.config import load_config
from vos_det.evaluation import collect_detections
from vos_det.evaluation.records import computing_all_ood_scores

# The scores of a VOS detector without Mahalanobis statistics or fitted post-hoc state.
UNFITTED_VOS_SCORES = {"vos", "energy", "weighted_energy", "msp", "vos_release", "maxlogit", "gen"}


class _Predictor(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.compute_all_ood_scores = value


def test_context_sets_every_predictor_of_a_wrapped_model_and_restores_it():
    asked, already = _Predictor(False), _Predictor(True)
    wrapper = nn.Sequential(nn.Sequential(asked, nn.Linear(1, 1)), already)
    with computing_all_ood_scores(wrapper):
        assert asked.compute_all_ood_scores and already.compute_all_ood_scores
    assert not asked.compute_all_ood_scores and already.compute_all_ood_scores
    with pytest.raises(RuntimeError), computing_all_ood_scores(wrapper):
        raise RuntimeError("inference failed")
    assert not asked.compute_all_ood_scores


def _tiny_detector():
    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _images(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 255, (3, 128, 128), generator=generator, dtype=torch.uint8),
         "height": 128, "width": 128, "image_id": index}
        for index in range(count)
    ]


def test_evaluation_records_every_score_with_the_values_inference_gives():
    model = _tiny_detector()
    batches = [_images(2, seed) for seed in range(2)]
    records = collect_detections(model, batches)
    assert len(records) > 0
    assert set(records.ood_score_table) == UNFITTED_VOS_SCORES
    assert not model.roi_heads.box_predictor.compute_all_ood_scores
    with torch.no_grad():
        instances = [output["instances"] for batch in batches for output in model(batch)]
    assert [name for name in instances[0].get_fields() if name.startswith("ood_scores_")] == ["ood_scores_vos"]
    # Each detection's score behind is_ood, alone, equals the evaluation's value (same process).
    asked = torch.cat([i.ood_scores_vos for i in instances]).double().numpy()
    assert (records.ood_score_table["vos"] == asked).all()
