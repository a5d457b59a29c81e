"""How the modules of vos_det.modeling read their options from a config node."""
__all__ = ["options_from_config"]


def options_from_config(node, *names: str) -> dict:
    """Constructor options read from a config node whose keys are their names in upper case.

    Args:
        node (CfgNode): e.g. ``cfg.MODEL.EMBEDDING.CIDER``.
        names: argument names, e.g. "temperature" (read from ``node.TEMPERATURE``).

    Returns:
        dict: argument name -> value.
    """
    return {name: node[name.upper()] for name in names}
