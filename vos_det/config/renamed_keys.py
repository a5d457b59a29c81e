"""Keys that moved: an old name is read as the new one, with one deprecation warning.

The score behind ``is_ood``, its threshold, the Mahalanobis statistics and the post-hoc scores
apply to any detector, not only to one trained with VOS: they moved from ``MODEL.VOS`` to
``MODEL.OOD`` (:data:`RENAMED_KEYS`). A YAML file (a recipe, or the ``config.yaml`` of an old
run) and a ``KEY VALUE`` override list that use an old name still load: each old key is read
as its new one with one warning naming both, and giving both names with different values is
a :class:`~vos_det.errors.ConfigError` naming both.
"""
import logging

from detectron2.config import CfgNode

from ..errors import ConfigError

__all__ = ["RENAMED_KEYS", "current_key", "current_overrides", "rename_config_tree", "rename_overrides"]

logger = logging.getLogger(__name__)

# Old key or node -> its name now (a node's keys move with it).
RENAMED_KEYS = {
    "MODEL.VOS.OOD_SCORE": "MODEL.OOD.SCORE",
    "MODEL.VOS.OOD_THRESHOLD": "MODEL.OOD.THRESHOLD",
    "MODEL.VOS.USE_CALIBRATED_THRESHOLD": "MODEL.OOD.USE_CALIBRATED_THRESHOLD",
    "MODEL.VOS.MAHALANOBIS_STATS": "MODEL.OOD.MAHALANOBIS_STATS",
    "MODEL.VOS.POST_HOC": "MODEL.OOD.POST_HOC",
}


def _moved(key: str):
    """The entry of :data:`RENAMED_KEYS` that the dotted ``key`` is or lies under, or None."""
    return next((old for old in RENAMED_KEYS if key == old or key.startswith(old + ".")), None)


def current_key(key: str) -> str:
    """``key`` (dotted) under its current name; a key that did not move is returned as it is."""
    old = _moved(key)
    return key if old is None else RENAMED_KEYS[old] + key[len(old):]


def current_overrides(overrides):
    """``[KEY, VALUE, ...]`` with each key under its current name, without a warning: for
    overrides stored by an earlier version (a cache key, a leaderboard's methods)."""
    return [current_key(token) if index % 2 == 0 else token for index, token in enumerate(overrides)]


def _warn(source, old, new):
    logger.warning("%s: config key %s is deprecated, read as %s (rename it)", source, old, new)


def _conflict(source, old, old_value, new, new_value):
    return ConfigError(
        f"{source}: {old}={old_value!r} and {new}={new_value!r} are the same key (its old and new "
        f"name) with different values; keep {new} only"
    )


def rename_overrides(overrides, source="config overrides"):
    """``[KEY, VALUE, ...]`` with every old key name replaced by its current one.

    Args:
        overrides (list[str]): KEY VALUE pairs, as on the command line.
        source (str): where they come from, named in the warning and the error.

    Raises:
        ConfigError: a key given under its old and its new name with different values.
    """
    renamed, given = [], {}
    for key, raw in zip(overrides[0::2], overrides[1::2]):
        new = current_key(key)
        if new != key:
            _warn(source, key, new)
        value = CfgNode._decode_cfg_value(raw)
        for other, other_value in given.get(new, {}).items():
            if other != key and other_value != value:
                # The old name first: sorted puts False (not the new name) before True.
                pairs = sorted([(key, value), (other, other_value)], key=lambda pair: pair[0] == new)
                raise _conflict(source, pairs[0][0], pairs[0][1], new, pairs[1][1])
        given.setdefault(new, {})[key] = value
        renamed += [new, raw]
    return renamed


def _leaves(tree, prefix=""):
    """(dotted key, value) of every leaf of a nested dict."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, key + ".")
        else:
            yield key, value


def _pop(tree, key):
    """Remove the leaf ``key`` from a nested dict, and the nodes it leaves empty."""
    name, _, rest = key.partition(".")
    if rest:
        _pop(tree[name], rest)
        if not tree[name]:
            del tree[name]
    else:
        del tree[name]


def _put(tree, key, value):
    *parents, leaf = key.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _find(tree, key, missing):
    for name in key.split("."):
        if not isinstance(tree, dict) or name not in tree:
            return missing
        tree = tree[name]
    return tree


def rename_config_tree(tree: dict, source: str) -> bool:
    """Move every key of a loaded config (nested dicts) from its old name to its current one.

    Args:
        tree (dict): the config as loaded from YAML, changed in place.
        source (str): the file, named in the warning and the error.

    Returns:
        bool: whether any key was moved.

    Raises:
        ConfigError: a key given under its old and its new name with different values.
    """
    moved = [(old, current_key(old), value) for old, value in list(_leaves(tree)) if _moved(old)]
    missing = object()
    for old, new, value in moved:
        present = _find(tree, new, missing)
        if present is not missing and present != value:
            raise _conflict(source, old, value, new, present)
        _pop(tree, old)
        _put(tree, new, value)
    # One warning per moved key, or per moved node of which several keys are set (an old
    # run's config.yaml sets them all).
    leaves_by_entry = {}
    for old, new, _ in moved:
        leaves_by_entry.setdefault(_moved(old), []).append((old, new))
    for entry, leaves in leaves_by_entry.items():
        _warn(source, *(leaves[0] if len(leaves) == 1 else (entry + ".*", RENAMED_KEYS[entry] + ".*")))
    return bool(moved)
