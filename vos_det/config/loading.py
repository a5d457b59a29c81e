"""Loading a config: a file found by name under configs/, checked overrides, every value checked."""
import io
import re
from pathlib import Path

import yaml
from detectron2.config import CfgNode

from ..errors import ConfigError
from .defaults import default_config
from .overrides import merge_overrides, unknown_key_message
from .renamed_keys import rename_config_tree
from .validation import validate_config

__all__ = ["CONFIGS_DIR", "PREFERRED_CONFIG_FOLDER", "load_config", "resolve_config_file"]

# The configs/ folder of the repository (vos_det is installed editable from it).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
# A bare name found in several folders (vos_rcnn.yaml: VOC and BDD100k) means this folder's
# file, the paper's main recipe, so `train_net.py --config vos_rcnn.yaml` stays the VOC recipe.
PREFERRED_CONFIG_FOLDER = "VOC-Detection"


def resolve_config_file(name: str) -> str:
    """Resolve a config path: an existing path as is, else a file name found under configs/.

    Args:
        name: a path (``configs/VOC-Detection/vos_rcnn.yaml``), a path relative to configs/
            (``VOC-Detection/vos_rcnn.yaml``) or a bare file name (``vos_rcnn.yaml``). A bare
            name found in several folders resolves to the one in
            :data:`PREFERRED_CONFIG_FOLDER` if it is there.

    Returns:
        str: the path of the config file.

    Raises:
        FileNotFoundError: no such file, or a bare name matching several files (listed), none
            of them in :data:`PREFERRED_CONFIG_FOLDER`.
    """
    if not name:
        raise FileNotFoundError("no config file given: pass --config NAME (e.g. vos_rcnn.yaml)")
    path = Path(name)
    if path.is_file():
        return str(path)
    if (CONFIGS_DIR / path).is_file():
        return str(CONFIGS_DIR / path)
    matches = sorted(CONFIGS_DIR.rglob(path.name)) if path.name == name else []
    if len(matches) == 1:
        return str(matches[0])
    preferred = [m for m in matches if m.parent.name == PREFERRED_CONFIG_FOLDER]
    if len(matches) > 1 and len(preferred) == 1:
        return str(preferred[0])
    if len(matches) > 1:
        listed = ", ".join(str(m.relative_to(CONFIGS_DIR)) for m in matches)
        raise FileNotFoundError(f"config name {name!r} is ambiguous under {CONFIGS_DIR}: {listed}")
    raise FileNotFoundError(f"config file {name!r} not found (nor under {CONFIGS_DIR})")


class _RenamingReader(CfgNode):
    """detectron2's reading of a YAML config and its ``_BASE_`` files, with the old names of
    moved keys read as their new ones (:func:`rename_config_tree`) in each file before it is
    merged over its base, so a file's own setting still wins over its base's."""

    @classmethod
    def _open_cfg(cls, filename):
        with super()._open_cfg(filename) as f:
            text = f.read()
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError:
            return io.StringIO(text)  # a file only yaml.unsafe_load reads is read as it is
        if isinstance(tree, dict) and rename_config_tree(tree, filename):
            text = yaml.safe_dump(tree)
        return io.StringIO(text)


def _merge_file(cfg, path):
    """Merge the YAML file ``path`` (with its ``_BASE_`` files) into ``cfg``, reading the old
    names of moved keys as their new ones (:mod:`.renamed_keys`).

    A file of another detectron2 config ``VERSION`` goes through detectron2's upgrade instead,
    which does not know vos_det's old names.

    Raises:
        ConfigError: a key under its old and new name with different values in one file.
    """
    loaded = _RenamingReader.load_yaml_with_base(path, allow_unsafe=True)
    if loaded.get("VERSION", cfg.VERSION) == cfg.VERSION:
        cfg.merge_from_other_cfg(type(cfg)(loaded))
    else:
        cfg.merge_from_file(path)


def load_config(name_or_path, opts=(), *, training=False, freeze=True):
    """The config of a run: defaults + vos_det keys + the file + checked overrides, validated.

    Args:
        name_or_path (str): a path or a name under configs/ (:func:`resolve_config_file`).
        opts (Sequence[str]): ``[KEY, VALUE, ...]`` overrides, as on the command line; each
            key must exist and each value have the type of the key's default. In the file and
            the overrides, a key's old name (:data:`~vos_det.config.renamed_keys.RENAMED_KEYS`)
            is read as its new one, with a deprecation warning.
        training (bool): also warn about settings that only matter for training
            (synthesis that cannot start within SOLVER.MAX_ITER).
        freeze (bool): return the config frozen (the default: what a run reads must not
            change). A caller that sets more keys passes False, sets them, then freezes it.

    Returns:
        CfgNode: the config.

    Raises:
        ConfigError: an unknown key or a value of the wrong type (file or overrides), a value
            out of its range, or a key given under its old and new name with different values.
        FileNotFoundError: no such config file.
    """
    path = resolve_config_file(name_or_path)
    cfg = default_config()
    try:
        _merge_file(cfg, path)
    except KeyError as e:
        match = re.search(r"Non-existent config key: ([A-Za-z0-9_.]+)", str(e))
        message = unknown_key_message(cfg, match.group(1)) if match else str(e)
        raise ConfigError(f"{path}: {message}") from e
    except ConfigError:
        raise  # names the file already
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e
    merge_overrides(cfg, list(opts))
    validate_config(cfg, training=training)
    if freeze:
        cfg.freeze()
    return cfg
