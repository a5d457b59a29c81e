"""VOS for detectron2's LazyConfig models (Python configs built with ``LazyCall``).

Two pieces: :func:`add_vos` turns the box predictor of any LazyCall R-CNN model into
:class:`VOSOutputLayers` (with the defaults of ``MODEL.VOS``); :func:`ood_evaluation_config`
turns a LazyConfig's ``ood_evaluation`` settings into the config that
:func:`vos_det.evaluation.protocol.evaluate_ood_protocol` reads, so a LazyConfig model is
evaluated exactly as a yacs one (tools/lazyconfig_train_net.py)::

    from detectron2.model_zoo import get_config
    from vos_det.lazyconfig import add_vos

    model = add_vos(get_config("common/models/mask_rcnn_fpn.py").model, starting_iter=12000)
    model.roi_heads.num_classes = 20
"""
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import StandardROIHeads

from .config import add_vos_config
from .engine.checkpoint import AtomicWritePathManager, RandomState
from .modeling import VOSOutputLayers, VOSROIHeads
from .modeling.virtual_outliers import vos_kwargs_from_config

__all__ = ["add_vos", "build_checkpointer", "ood_evaluation_config", "vos_options"]

# Keys of a LazyConfig's ``ood_evaluation`` that are not TEST.OOD keys: the data sets.
_DATASET_KEYS = {"id_datasets": "TEST", "ood_datasets": "OOD_TEST"}


def _default_config():
    cfg = get_cfg()
    add_vos_config(cfg)
    return cfg


def vos_options(**overrides) -> dict:
    """The VOS keyword arguments of :class:`VOSOutputLayers`: the ``MODEL.VOS`` defaults
    (:func:`vos_det.config.add_vos_config`, the paper's VOC recipe) with ``overrides``.

    Args:
        overrides: any of ``vos_enabled``, ``sample_number``, ``starting_iter``,
            ``sample_from``, ``select``, ``vos_loss_weight``, ``covariance_eps``,
            ``covariance_recompute_period``, ``sampler``, ``synthesis_seed``, ``ood_score``,
            ``ood_threshold``, ``use_calibrated_threshold`` (the ``MODEL.VOS`` keys, lower case).

    Raises:
        ValueError: an unknown option (the message lists the known ones).
    """
    options = vos_kwargs_from_config(_default_config())
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ValueError(f"unknown VOS option(s) {unknown}; the options are {sorted(options)}")
    options.update(overrides)
    return options


def add_vos(model, **overrides):
    """Train and run a LazyCall R-CNN config with VOS: its box predictor becomes VOS's.

    The ``roi_heads.box_predictor`` node (a ``FastRCNNOutputLayers`` LazyCall) gets
    :class:`VOSOutputLayers` as its target and the VOS options of :func:`vos_options`;
    its own arguments (input shape, box transform, classes, test thresholds) are kept.
    ``StandardROIHeads`` becomes :class:`VOSROIHeads` (other ROI heads with one
    ``box_predictor`` are kept as they are).

    Args:
        model (DictConfig): a LazyCall ``GeneralizedRCNN`` config, changed in place.
        overrides: VOS options, see :func:`vos_options`.

    Returns:
        DictConfig: ``model``.

    Raises:
        ValueError: the ROI heads have no single ``box_predictor`` (e.g. cascade heads).
    """
    roi_heads = model.roi_heads
    if "box_predictor" not in roi_heads:
        raise ValueError(
            f"add_vos needs ROI heads with one box_predictor; {roi_heads.get('_target_')} has "
            f"{sorted(k for k in roi_heads if 'predictor' in k)}"
        )
    if roi_heads._target_ is StandardROIHeads:
        roi_heads._target_ = VOSROIHeads
    roi_heads.box_predictor._target_ = VOSOutputLayers
    roi_heads.box_predictor.update(vos_options(**overrides))
    return model


def ood_evaluation_config(ood_evaluation, weights: str = ""):
    """The config of the OOD evaluation of a LazyConfig, as the yacs tools have it.

    Args:
        ood_evaluation (Mapping): ``id_datasets`` (ID test sets, ``DATASETS.TEST``),
            ``ood_datasets`` (``DATASETS.OOD_TEST``) and any ``TEST.OOD`` key in lower case
            (``protocol``, ``box_selection``, ``score_threshold``, ``calibration_dataset``,
            ``calibration_id_keep``, ``fpr95_method``, ``plots``, ...); the others keep
            their defaults (:func:`vos_det.config.add_vos_config`).
        weights (str): the model's checkpoint (named in the calibration's outputs).

    Returns:
        CfgNode: a frozen config for :func:`vos_det.evaluation.protocol.evaluate_ood_protocol`.

    Raises:
        ValueError: an unknown key (the message lists the known ones).
    """
    cfg = _default_config()
    for key, value in dict(ood_evaluation).items():
        if key in _DATASET_KEYS:
            cfg.DATASETS[_DATASET_KEYS[key]] = tuple(value)
        elif key.upper() in cfg.TEST.OOD:
            cfg.TEST.OOD[key.upper()] = value
        else:
            known = sorted(list(_DATASET_KEYS) + [k.lower() for k in cfg.TEST.OOD])
            raise ValueError(f"ood_evaluation.{key} is not a setting; the settings are {known}")
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    return cfg


def build_checkpointer(model, save_dir: str = "", **checkpointables):
    """The checkpointer of vos_det's ``Trainer`` for a hand-written training loop.

    A :class:`DetectionCheckpointer` whose files appear whole or not at all, and which also
    saves and restores the global random states (for ``--resume``).

    Args:
        model (nn.Module): the model (DDP-wrapped or not).
        save_dir (str): where checkpoints go.
        checkpointables: more objects to save, e.g. ``trainer=trainer``.
    """
    checkpointer = DetectionCheckpointer(model, save_dir, **checkpointables)
    checkpointer.path_manager = AtomicWritePathManager(checkpointer.path_manager)
    checkpointer.add_checkpointable("random_state", RandomState())
    return checkpointer
