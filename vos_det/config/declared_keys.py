"""A config key declared once: its default, its check and its meaning in one place.

The keys of a node declared this way (``MODEL.VOS``: :data:`~vos_det.config.vos_keys.VOS_KEYS`,
``MODEL.OOD``: :data:`~vos_det.config.ood_keys.OOD_KEYS`) get their defaults from
:func:`add_declared_keys`, their rules in :data:`vos_det.config.validation.RULES` and their
rows in ``docs/config_keys.md`` from the declaration.
"""
import copy
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

from detectron2.config import CfgNode

__all__ = ["DeclaredKey", "add_declared_keys", "declared_value"]


@dataclass(frozen=True)
class DeclaredKey:
    """One key of the node :attr:`node`.

    Attributes:
        name: the key under the node (``"SELECT"``, ``"NPOS.K"``).
        default: its default value.
        check: returns None for an allowed value, else what is allowed ("must be ...");
            None: any value of the default's type.
        doc: its meaning, one paragraph (docs/config_keys.md); keys of one group may share it.
        argument: its keyword argument of
            :meth:`~vos_det.modeling.vos.VirtualOutlierMixin.init_virtual_outliers`, "" for a
            key that module does not read.
    """

    node: ClassVar[str] = ""
    name: str
    default: object
    check: Optional[Callable[[object], Optional[str]]]
    doc: str
    argument: str = ""

    @property
    def key(self) -> str:
        """The full key, ``<node>.<name>``."""
        return f"{self.node}.{self.name}"


def _node_and_leaf(node, name, create=False):
    """The node holding the dotted ``name`` under ``node`` (``"NPOS.K"`` -> ``node.NPOS``)
    and the leaf's name; ``create``: make the missing sub-nodes on the way."""
    *parents, leaf = name.split(".")
    for parent in parents:
        node = node.setdefault(parent, CfgNode()) if create else node[parent]
    return node, leaf


def add_declared_keys(node, keys):
    """Set every key of ``keys`` to its default in ``node`` (the config node the keys are
    declared under, e.g. ``cfg.MODEL.OOD``), making the sub-nodes on the way. A list default
    is copied: no config changes another's."""
    for key in keys:
        parent, leaf = _node_and_leaf(node, key.name, create=True)
        parent[leaf] = copy.deepcopy(key.default)


def declared_value(cfg, key: DeclaredKey):
    """The value of ``key`` in the whole config ``cfg``."""
    node, leaf = _node_and_leaf(cfg, key.key)
    return node[leaf]
