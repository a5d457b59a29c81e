"""Keys moved from MODEL.VOS to MODEL.OOD still load under their old names (vos_det/config/renamed_keys.py):
in a YAML file, an old run's config.yaml and an override list, each with one deprecation warning
naming both names; both names with different values are an error naming both."""
import logging

import pytest
import yaml

from vos_det.config import default_config, load_config, resolve_config_file
from vos_det.config.renamed_keys import RENAMED_KEYS, current_key
from vos_det.errors import ConfigError

# Old name -> a value other than the default, and the new name.
OLD_VALUES = {
    "MODEL.VOS.OOD_SCORE": "energy",
    "MODEL.VOS.OOD_THRESHOLD": -3.5,
    "MODEL.VOS.USE_CALIBRATED_THRESHOLD": False,
    "MODEL.VOS.MAHALANOBIS_STATS": "stats.pth",
    "MODEL.VOS.POST_HOC.KNN.K": 7,
}


def _deprecations(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "vos_det.config.renamed_keys"]


def _nested(flat):
    tree = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def _as_dict(cfg):
    return yaml.safe_load(cfg.dump())


def _config_path():
    return resolve_config_file("digits_vos_tiny.yaml")


def _new_layout_config():
    """The digits config with every value of OLD_VALUES set under its new name."""
    return load_config("digits_vos_tiny.yaml", [token for old, value in OLD_VALUES.items()
                                               for token in (current_key(old), str(value))])


def test_current_key_moves_the_keys_and_nodes_of_the_table_only():
    assert current_key("MODEL.VOS.OOD_SCORE") == "MODEL.OOD.SCORE"
    assert current_key("MODEL.VOS.POST_HOC.SAFE.EPOCHS") == "MODEL.OOD.POST_HOC.SAFE.EPOCHS"
    assert current_key("MODEL.VOS.OOD_SCORES") == "MODEL.VOS.OOD_SCORES"  # a prefix, not the key
    assert current_key("MODEL.VOS.SELECT") == "MODEL.VOS.SELECT"
    cfg = default_config()
    for new in RENAMED_KEYS.values():
        node = cfg
        for name in new.split("."):
            node = node[name]  # every new name exists


def test_an_old_yaml_file_loads_as_the_new_layout(tmp_path, caplog):
    # Its base sets MODEL.OOD.SCORE "vos": the file's own (old-named) setting wins, as always.
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"_BASE_": str(_config_path()), **_nested(OLD_VALUES)}))
    with caplog.at_level(logging.WARNING):
        cfg = load_config(str(path))
    assert _as_dict(cfg) == _as_dict(_new_layout_config())
    assert "OOD_SCORE" not in cfg.MODEL.VOS and "POST_HOC" not in cfg.MODEL.VOS
    assert sorted(_deprecations(caplog)) == sorted(
        f"{path}: config key {old} is deprecated, read as {current_key(old)} (rename it)" for old in OLD_VALUES
    )


def test_an_old_override_list_loads_as_the_new_layout(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config("digits_vos_tiny.yaml", [t for old, value in OLD_VALUES.items() for t in (old, str(value))])
    assert _as_dict(cfg) == _as_dict(_new_layout_config())
    assert _deprecations(caplog) == [
        f"config overrides: config key {old} is deprecated, read as {current_key(old)} (rename it)"
        for old in OLD_VALUES
    ]


def _old_layout(tree):
    """A config dump (nested dicts) with the moved keys back under their old names."""
    ood = tree["MODEL"].pop("OOD")
    tree["MODEL"]["VOS"].update({f"OOD_{name}" if name in ("SCORE", "THRESHOLD") else name: value
                                 for name, value in ood.items()})
    return tree


def test_an_old_runs_config_yaml_loads_with_one_warning_per_moved_key(tmp_path, caplog):
    # The config.yaml an old run wrote: every key, the moved ones under MODEL.VOS.
    expected = _new_layout_config()
    saved = _old_layout(yaml.safe_load(expected.dump()))
    assert saved["MODEL"]["VOS"]["OOD_SCORE"] == "energy" and "KNN" in saved["MODEL"]["VOS"]["POST_HOC"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    with caplog.at_level(logging.WARNING):
        cfg = load_config(str(path))
    assert _as_dict(cfg) == _as_dict(expected)
    lines = _deprecations(caplog)
    assert len(lines) == len(RENAMED_KEYS)  # the node's many keys: one line
    assert f"{path}: config key MODEL.VOS.POST_HOC.* is deprecated, read as MODEL.OOD.POST_HOC.* (rename it)" in lines


def test_old_and_new_names_with_different_values_are_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError, match=r"MODEL\.VOS\.OOD_SCORE='energy' and MODEL\.OOD\.SCORE='msp'"):
        load_config("digits_vos_tiny.yaml", ["MODEL.OOD.SCORE", "msp", "MODEL.VOS.OOD_SCORE", "energy"])
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"_BASE_": str(_config_path()), **_nested(
        {"MODEL.VOS.POST_HOC.KNN.K": 7, "MODEL.OOD.POST_HOC.KNN.K": 9})}))
    message = r"^[^ ]*both\.yaml: MODEL\.VOS\.POST_HOC\.KNN\.K=7 and MODEL\.OOD\.POST_HOC\.KNN\.K=9"
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))
    # The same value under both names is one setting.
    same = load_config("digits_vos_tiny.yaml", ["MODEL.OOD.THRESHOLD", "0.25", "MODEL.VOS.OOD_THRESHOLD", "0.250"])
    assert same.MODEL.OOD.THRESHOLD == 0.25


def test_the_configs_of_the_repository_use_the_new_names(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config("digits_vos_tiny.yaml")
    assert _deprecations(caplog) == [] and cfg.MODEL.OOD.SCORE == "vos"
