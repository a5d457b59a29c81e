"""Each key of the VOS method (vos_det/config/vos_keys.py) and of the OOD scores
(vos_det/config/ood_keys.py) is declared once; its default, its check, its argument of the
mixin, its LazyConfig option and its documentation all follow."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from vos_det.config import default_config, validate_config
from vos_det.config.validation import RULES
from vos_det.config.ood_keys import OOD_KEYS
from vos_det.config.vos_keys import (
    MIXIN_KEYS,
    VOS_KEYS,
    VOSKey,
    check_vos_arguments,
    vos_arguments,
    vos_kwargs_from_config,
)
from vos_det.errors import ConfigError
from vos_det.lazyconfig import vos_options
from vos_det.modeling import VOSOutputLayers
from vos_det.reference_docs import config_reference

# Values the keys accept that differ from their defaults (the mixin must keep them as given).
OTHER_VALUES = {
    "vos_enabled": False,
    "sample_number": 7,
    "starting_iter": 3,
    "sample_from": 50,
    "select": 2,
    "vos_loss_weight": 0.25,
    "covariance_eps": 1e-3,
    "covariance_recompute_period": 9,
    "sampler": "gaussian",
    "synthesis_seed": 5,
    "per_rank_outliers": False,
    "uncertainty_head": "mlp",
    "ood_score": "energy",
    "ood_threshold": -1.5,
    "use_calibrated_threshold": False,
    "balanced_loss": True,
    "outlier_tail": 0.0,
    "outlier_radius_scale": 2.0,
    "outlier_synthesis": "npos",
    "npos_k": 4,
    "npos_boundary": 6,
    "npos_noise_scale": 0.25,
}


def _get(node, dotted):
    for name in dotted.split("."):
        node = node[name]
    return node


def test_the_declarations_are_unique_and_complete():
    names = [key.key for key in VOS_KEYS + OOD_KEYS]
    arguments = [key.argument for key in MIXIN_KEYS]
    assert len(set(names)) == len(names) and len(set(arguments)) == len(arguments)
    assert set(OTHER_VALUES) == set(arguments)
    assert all(key.doc.strip() for key in VOS_KEYS + OOD_KEYS)
    assert {key.key for key in MIXIN_KEYS if key in OOD_KEYS} == {
        "MODEL.OOD.SCORE",
        "MODEL.OOD.THRESHOLD",
        "MODEL.OOD.USE_CALIBRATED_THRESHOLD",
    }
    assert VOSKey("NPOS.K", 1, None, "x").argument == "npos_k"
    assert VOSKey("ENABLED", True, None, "x", argument="vos_enabled").argument == "vos_enabled"


def test_every_key_is_in_the_config_with_its_default_and_checked():
    cfg = default_config()
    for key in VOS_KEYS + OOD_KEYS:
        assert _get(cfg, key.key) == key.default, key.key
        assert key.check is None or key.check(key.default) is None, f"{key.key}: the default fails its check"
        assert RULES.get(key.key) is key.check, key.key
    cfg.MODEL.VOS.NPOS.K = 0
    with pytest.raises(ConfigError, match=r"MODEL\.VOS\.NPOS\.K=0: must be >= 1"):
        validate_config(cfg)


def _layer(**options):
    torch.manual_seed(0)
    transform = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    return VOSOutputLayers(ShapeSpec(channels=4), box2box_transform=transform, num_classes=2, **options)


def test_every_key_reaches_the_mixin_through_from_config():
    cfg = default_config()
    defaults = {key.argument: key.default for key in MIXIN_KEYS}
    assert vos_kwargs_from_config(cfg) == defaults == vos_arguments()
    layer = _layer(**vos_kwargs_from_config(cfg))
    assert {name: getattr(layer, name) for name in defaults} == defaults

    for key in MIXIN_KEYS:
        if key.argument in OTHER_VALUES:
            node, leaf = key.key.rsplit(".", 1)
            _get(cfg, node)[leaf] = OTHER_VALUES[key.argument]
    kwargs = vos_kwargs_from_config(cfg)
    assert kwargs == {**defaults, **OTHER_VALUES}
    layer = _layer(**kwargs)
    assert {name: getattr(layer, name) for name in kwargs} == kwargs
    assert not hasattr(layer, "feature_queues")  # vos_enabled=False: no queues


def test_every_key_is_a_lazyconfig_option_and_documented():
    assert set(vos_options()) == {key.argument for key in MIXIN_KEYS}
    assert vos_options(select=3)["select"] == 3
    with pytest.raises(ValueError, match="unknown VOS option.*'selekt'"):
        vos_options(selekt=3)
    page = config_reference()
    for key in VOS_KEYS + OOD_KEYS:
        assert f"| `{key.key}` |" in page and key.doc.replace("|", "\\|") in page, key.key


def test_the_mixin_refuses_values_its_keys_do_not_allow():
    check_vos_arguments(vos_arguments())
    with pytest.raises(ValueError, match=r"MODEL\.VOS\.SAMPLER='mvn': must be one of chi2, gaussian"):
        check_vos_arguments(vos_arguments(sampler="mvn"))
    with pytest.raises(ValueError, match=r"(?s)SELECT=0: must be >= 1.*MODEL\.OOD\.SCORE='entropy'"):
        check_vos_arguments(vos_arguments(select=0, ood_score="entropy"))


def test_a_list_default_is_copied_into_each_config():
    first, second = default_config(), default_config()
    first.MODEL.OOD.POST_HOC.FUSED.RULES.append("max")
    assert second.MODEL.OOD.POST_HOC.FUSED.RULES == ["max", "sum", "logistic"]
