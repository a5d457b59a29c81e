"""Configuration of vos_det: its keys and the one way to load a config.

:func:`load_config` is the entry point of every tool, the predictor, the benchmarks and the
tests: :func:`default_config` (detectron2's defaults + :func:`add_vos_config`, which also adds
the image classifier's keys, :func:`add_classification_config`) + a YAML file found by
:func:`resolve_config_file` + ``KEY VALUE`` overrides checked against the keys
(:func:`merge_overrides`), then every value checked (:func:`validate_config`). The config
comes back frozen unless the caller asks otherwise::

    from vos_det.config import load_config

    cfg = load_config("digits_vos_tiny.yaml", ["MODEL.DEVICE", "cpu"])  # frozen

The modules, none of which imports the model code:

* :mod:`.defaults`: every key with its default and comment; :mod:`.vos_keys` declares the
  keys of the VOS method (``MODEL.VOS``) once (default, check, meaning), :mod:`.ood_keys`
  those of the OOD scores of any detector (``MODEL.OOD``), both as :mod:`.declared_keys`;
  :mod:`.renamed_keys` reads the old names of moved keys as the new ones;
* :mod:`.choices`: the names a key may take (scores, samplers, ...), also read by the model;
* :mod:`.checks`, :mod:`.validation`: the value checks and the rules of every key;
* :mod:`.overrides`: checked ``KEY VALUE`` overrides; :mod:`.loading`: files and loading.

Names of registries (``MODEL.VOS.BOX_PREDICTOR``, ``MODEL.EMBEDDING.CLASSIFIER``, ...) are
checked when the model is built, as detectron2 checks ``MODEL.META_ARCHITECTURE``.
"""
from .defaults import add_classification_config, add_vos_config, default_config
from .loading import CONFIGS_DIR, PREFERRED_CONFIG_FOLDER, load_config, resolve_config_file
from .overrides import merge_overrides
from .validation import validate_config

__all__ = [
    "CONFIGS_DIR",
    "PREFERRED_CONFIG_FOLDER",
    "add_classification_config",
    "add_vos_config",
    "default_config",
    "load_config",
    "merge_overrides",
    "resolve_config_file",
    "validate_config",
]
