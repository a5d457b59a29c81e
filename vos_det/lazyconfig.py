"""VOS for detectron2's LazyConfig models (Python configs built with ``LazyCall``).

:func:`add_vos` turns the box predictor of any LazyCall R-CNN model into
:class:`VOSOutputLayers` (with the defaults of ``MODEL.VOS`` and of the score behind
``is_ood``, ``MODEL.OOD``); :func:`ood_evaluation_config` turns a LazyConfig's
``ood_evaluation`` settings into the config that :func:`vos_det.evaluation.evaluate_ood`
reads, so a LazyConfig model is evaluated exactly as a yacs one; :func:`train_lazy_config` and
:func:`evaluate_lazy_checkpoint` are what tools/lazyconfig_train_net.py runs::

    from detectron2.model_zoo import get_config
    from vos_det.lazyconfig import add_vos

    model = add_vos(get_config("common/models/mask_rcnn_fpn.py").model, starting_iter=12000)
    model.roi_heads.num_classes = 20
"""
import copy
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.modeling import StandardROIHeads
from detectron2.utils import comm

from .config import default_config, resolve_config_file
from .config.vos_keys import vos_arguments
from .engine.checkpoint import AtomicWritePathManager, CaptureRandomStates, RandomState
from .engine.launch import create_ddp_model
from .engine.ood_evaluation import evaluate_model
from .evaluation.records import build_detection_evaluator, log_detection_results
from .modeling import VOSOutputLayers, VOSROIHeads

__all__ = [
    "add_vos",
    "build_checkpointer",
    "capture_random_states_hook",
    "evaluate_lazy_checkpoint",
    "evaluate_lazy_model",
    "load_lazy_config",
    "ood_evaluation_config",
    "train_lazy_config",
    "vos_options",
]

logger = logging.getLogger(__name__)

# Keys of a LazyConfig's ``ood_evaluation`` that are not TEST.OOD keys: the data sets.
_DATASET_KEYS = {"id_datasets": "TEST", "ood_datasets": "OOD_TEST"}


def vos_options(**overrides) -> dict:
    """The VOS keyword arguments of :class:`VOSOutputLayers`: the defaults of the keys of
    :data:`~vos_det.config.vos_keys.MIXIN_KEYS` (the paper's VOC recipe) with ``overrides``.

    Args:
        overrides: one keyword per key of ``MIXIN_KEYS``: the ``MODEL.VOS`` key in lower case,
            e.g. ``sample_number``, ``starting_iter``, ``uncertainty_head``, ``npos_k``
            (``MODEL.VOS.ENABLED`` is ``vos_enabled``, ``LOSS_WEIGHT`` ``vos_loss_weight``), and
            the score behind is_ood with its threshold (``MODEL.OOD.SCORE`` is ``ood_score``,
            ``THRESHOLD`` ``ood_threshold``, ``USE_CALIBRATED_THRESHOLD``
            ``use_calibrated_threshold``). Each key's meaning: docs/config_keys.md; an unknown
            option's error lists them all.

    Raises:
        ValueError: an unknown option (the message lists the known ones).
    """
    return vos_arguments(**overrides)


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


def ood_evaluation_config(ood_evaluation, weights: str = "", output_dir=None):
    """The config of the OOD evaluation of a LazyConfig, as the yacs tools have it.

    Args:
        ood_evaluation (Mapping): ``id_datasets`` (ID test sets, ``DATASETS.TEST``),
            ``ood_datasets`` (``DATASETS.OOD_TEST``) and any ``TEST.OOD`` key in lower case
            (``protocol``, ``box_selection``, ``score_threshold``, ``calibration_dataset``,
            ``calibration_id_keep``, ``fpr95_method``, ``plots``, ...); the others keep
            their defaults (:func:`vos_det.config.add_vos_config`).
        weights (str): the model's checkpoint (named in the calibration's outputs).
        output_dir (str, optional): where the report, plots and calibrated model go
            (``OUTPUT_DIR``; the default config's when None).

    Returns:
        CfgNode: a frozen config for :func:`vos_det.evaluation.evaluate_ood`.

    Raises:
        ValueError: an unknown key (the message lists the known ones).
    """
    cfg = default_config()
    for key, value in dict(ood_evaluation).items():
        if key in _DATASET_KEYS:
            cfg.DATASETS[_DATASET_KEYS[key]] = tuple(value)
        elif key.upper() in cfg.TEST.OOD:
            cfg.TEST.OOD[key.upper()] = value
        else:
            known = sorted(list(_DATASET_KEYS) + [k.lower() for k in cfg.TEST.OOD])
            raise ValueError(f"ood_evaluation.{key} is not a setting; the settings are {known}")
    cfg.MODEL.WEIGHTS = weights
    if output_dir is not None:
        cfg.OUTPUT_DIR = output_dir
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


def capture_random_states_hook(checkpointer, period: int):
    """The hook that gathers every rank's random state for :func:`build_checkpointer`'s
    ``checkpointer`` before it saves every ``period`` iterations: register it on every
    rank, before the ``PeriodicCheckpointer``."""
    return CaptureRandomStates(checkpointer.checkpointables["random_state"], period)


def load_lazy_config(config_file, overrides=()):
    """The LazyConfig of ``config_file`` (a path or a name under configs/) with
    ``path.key=value`` overrides."""
    cfg = LazyConfig.load(resolve_config_file(config_file))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def evaluate_lazy_model(cfg, model):
    """The OOD protocol of the yacs tools on ``cfg.ood_evaluation``, with ``dataloader.test``
    re-targeted at each ID, OOD and calibration set; the detection metrics are printed.

    Returns:
        dict: the results of :func:`vos_det.evaluation.evaluate_ood`.
    """
    ood_cfg = ood_evaluation_config(cfg.ood_evaluation, cfg.train.init_checkpoint, cfg.train.output_dir)

    def build_test_loader(dataset_name):
        loader = copy.deepcopy(cfg.dataloader.test)
        loader.dataset.names = dataset_name
        return instantiate(loader)

    def build_evaluator(dataset_name):
        return build_detection_evaluator(dataset_name, os.path.join(ood_cfg.OUTPUT_DIR, "inference", dataset_name))

    results, _ = evaluate_model(ood_cfg, model, build_test_loader, build_evaluator)
    log_detection_results(results, ood_cfg.DATASETS.TEST)
    return results


def evaluate_lazy_checkpoint(cfg):
    """:func:`evaluate_lazy_model` of ``model`` with the weights ``train.init_checkpoint``."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model)
    build_checkpointer(model).load(cfg.train.init_checkpoint)
    return evaluate_lazy_model(cfg, model)


def train_lazy_config(cfg, resume=False):
    """detectron2's LazyConfig training loop, with CPU-aware DDP and vos_det's checkpoints
    (atomic, with the random state for ``resume``), evaluated every ``train.eval_period``.

    Args:
        cfg: the LazyConfig (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``,
            ``train``, ``ood_evaluation``).
        resume (bool): continue from ``train.output_dir/last_checkpoint`` if there is one.

    Returns:
        SimpleTrainer: the trainer, after training (its ``storage`` holds the history).
    """
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = build_checkpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            capture_random_states_hook(checkpointer, cfg.train.checkpointer.period),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: evaluate_lazy_model(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer
