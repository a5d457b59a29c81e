"""Config overrides (``KEY VALUE`` pairs) merged only after their keys and value types are checked.

detectron2's ``merge_from_list`` fails on an unknown key with a bare ``KeyError`` and accepts a
value of another type silently; :func:`merge_overrides` names the closest existing keys of an
unknown one and says what a wrong value must be (:class:`vos_det.errors.ConfigError`).
"""
import difflib

from detectron2.config import CfgNode

from ..errors import ConfigError
from .renamed_keys import rename_overrides

__all__ = ["merge_overrides", "unknown_key_message"]


def _flat_keys(node, prefix=""):
    """Every leaf key of a CfgNode, as dotted paths."""
    keys = []
    for name, value in node.items():
        path = f"{prefix}{name}"
        keys += _flat_keys(value, path + ".") if isinstance(value, CfgNode) else [path]
    return keys


def unknown_key_message(cfg, key):
    """The message for a key the config does not have, with the closest existing keys."""
    keys = _flat_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.85) or difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close][:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else " (no similar key)"
    return f"unknown config key {key}{hint}"


def _type_name(value):
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string",
            list: "a list, e.g. [1, 2]", tuple: "a tuple, e.g. (1, 2)"}.get(type(value), type(value).__name__)


def _coerce(key, raw, value, original):
    """``value`` (decoded from ``raw``) converted to the type of ``original``, or ConfigError."""
    if original is None or value is None or type(value) is type(original):
        return value
    if isinstance(original, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(original)(value)
    if type(original) is float and type(value) is int:
        return float(value)
    if isinstance(original, (list, tuple)) and isinstance(value, str) and all(isinstance(v, str) for v in original):
        return type(original)([value])  # DATASETS.TEST name: one name for a list of names
    hint = ""
    if isinstance(original, (list, tuple)) and not raw.strip().startswith(("(", "[")):
        hint = f" (write a list as \"[{raw}]\")"
    raise ConfigError(
        f"config key {key}: value {raw!r} is not allowed, it must be {_type_name(original)} "
        f"(the config has {original!r}){hint}"
    )


def merge_overrides(cfg, overrides):
    """Merge ``KEY VALUE`` overrides into ``cfg`` after checking each key and value type.

    Args:
        cfg (CfgNode): an unfrozen config holding every key of the tool.
        overrides (list[str]): ``[KEY, VALUE, ...]`` as on the command line.

    A key's old name (:data:`~vos_det.config.renamed_keys.RENAMED_KEYS`) is read as its new
    one, with a deprecation warning.

    Raises:
        ConfigError: an odd list, an unknown key (with the closest existing keys), a key
            naming a group of keys, a value of the wrong type (with what is allowed), or a key
            given under its old and new name with different values.
    """
    if len(overrides) % 2:
        raise ConfigError(f"config override {overrides[-1]} has no value (overrides are KEY VALUE pairs)")
    overrides = rename_overrides(overrides)
    for key, raw in zip(overrides[0::2], overrides[1::2]):
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name) if isinstance(node, CfgNode) else None
        if not isinstance(node, CfgNode) or leaf not in node:
            raise ConfigError(unknown_key_message(cfg, key))
        original = node[leaf]
        if isinstance(original, CfgNode):
            raise ConfigError(
                f"config key {key} is a group of keys, set one of them: "
                + ", ".join(_flat_keys(original, key + "."))
            )
        node[leaf] = _coerce(key, raw, CfgNode._decode_cfg_value(raw), original)
