"""How the modules of vos_det.modeling read their options and registry names from a config."""
from ..errors import ConfigError

__all__ = ["options_from_config", "registered"]


def options_from_config(node, *names: str) -> dict:
    """Constructor options read from a config node whose keys are their names in upper case.

    Args:
        node (CfgNode): e.g. ``cfg.MODEL.EMBEDDING.CIDER``.
        names: argument names, e.g. "temperature" (read from ``node.TEMPERATURE``).

    Returns:
        dict: argument name -> value.
    """
    return {name: node[name.upper()] for name in names}


def registered(registry, key: str, name: str):
    """The object registered as ``name`` in ``registry``, which the config names at ``key``.

    The config does not check these names (it imports no model code): the model checks them
    when it is built, as detectron2's ``Registry.get`` does, with a message naming the key.

    Args:
        registry (Registry): e.g. ``CLASSIFIER_REGISTRY``.
        key: the config key that names it, e.g. ``"MODEL.EMBEDDING.CLASSIFIER"``.
        name: the name the config gives.

    Raises:
        ConfigError: no object of that name; the message lists the registered names.
    """
    if name not in registry:
        known = ", ".join(sorted(registered_name for registered_name, _ in registry))
        raise ConfigError(f"{key}={name!r}: must be one of {known}")
    return registry.get(name)
