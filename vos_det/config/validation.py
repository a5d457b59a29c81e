"""Range and choice checks of the vos_det config keys, run before any work.

One table, :data:`RULES`, maps a key to a check of its value (the declared keys come with
theirs: :data:`vos_det.config.vos_keys.VOS_KEYS`, :data:`vos_det.config.ood_keys.OOD_KEYS`);
:data:`CROSS_CHECKS` holds the checks that read several keys. A new key gets its check by adding one line to ``RULES``
(``"MODEL.EMBEDDING.NEW_KEY": at_least(0),``). A key absent from the config (a config built
without the module that adds it) is skipped. :func:`validate_config` runs them all when a tool
loads its config (:func:`vos_det.config.load_config`), so a mistake fails in the first
seconds, not at the first synthesis step hours into a run. Names of registries are checked
when the model is built.
"""
import logging
import math

from ..errors import ConfigError
from .checks import at_least, between, greater_than, image_sides, increasing_iterations, is_number, one_of
from .choices import VOS_ONLY_SCORES
from .ood_keys import OOD_KEYS
from .vos_keys import VOS_KEYS

__all__ = ["CROSS_CHECKS", "RULES", "validate_config"]

logger = logging.getLogger(__name__)

_MISSING = object()


# key -> check(value) returning None when fine, else what is allowed.
RULES = {
    **{key.key: key.check for key in VOS_KEYS + OOD_KEYS if key.check},
    "MODEL.VOS.BOTTLENECK_DIM": at_least(0, integer=True),
    "MODEL.EMBEDDING.L2_SOFTMAX.ALPHA": greater_than(0.0),
    "MODEL.EMBEDDING.COSFACE.SCALE": greater_than(0.0),
    "MODEL.EMBEDDING.COSFACE.MARGIN": at_least(0.0),
    "MODEL.EMBEDDING.ARCFACE.SCALE": greater_than(0.0),
    "MODEL.EMBEDDING.ARCFACE.MARGIN": between(0.0, math.pi, high_open=True),
    "MODEL.EMBEDDING.SPHEREFACE.MARGIN": at_least(1, integer=True),
    "MODEL.EMBEDDING.SPHEREFACE.LAMBDA_BASE": at_least(0.0),
    "MODEL.EMBEDDING.SPHEREFACE.LAMBDA_MIN": at_least(0.0),
    "MODEL.EMBEDDING.SPHEREFACE.LAMBDA_GAMMA": at_least(0.0),
    "MODEL.EMBEDDING.SPHEREFACE.LAMBDA_POWER": at_least(0.0),
    "MODEL.EMBEDDING.CENTER_LOSS.WEIGHT": at_least(0.0),
    "MODEL.EMBEDDING.CENTER_LOSS.ALPHA": between(0.0, 1.0),
    "MODEL.EMBEDDING.CIDER.EMBEDDING_DIM": at_least(1, integer=True),
    "MODEL.EMBEDDING.CIDER.TEMPERATURE": greater_than(0.0),
    "MODEL.EMBEDDING.CIDER.PROTOTYPE_MOMENTUM": between(0.0, 1.0, high_open=True),
    "MODEL.EMBEDDING.CIDER.COMPACTNESS_WEIGHT": at_least(0.0),
    "MODEL.EMBEDDING.CIDER.DISPERSION_WEIGHT": at_least(0.0),
    "MODEL.EMBEDDING.SIREN.EMBEDDING_DIM": at_least(2, integer=True),
    "MODEL.EMBEDDING.SIREN.LOSS_WEIGHT": at_least(0.0),
    "MODEL.EMBEDDING.SIREN.KAPPA_INIT": greater_than(0.0),
    "MODEL.EMBEDDING.SIREN.PROTOTYPE_MOMENTUM": between(0.0, 1.0, high_open=True),
    # detectron2's own solver, input and loader keys: checked here too, so that a mistake is
    # named before detectron2 meets it (as an AssertionError or a broken image).
    "SOLVER.IMS_PER_BATCH": at_least(1, integer=True),
    "SOLVER.BASE_LR": greater_than(0.0),
    "SOLVER.MAX_ITER": at_least(1, integer=True),
    "SOLVER.STEPS": increasing_iterations,
    "SOLVER.GAMMA": greater_than(0.0),
    "SOLVER.MOMENTUM": between(0.0, 1.0, high_open=True),
    "SOLVER.WEIGHT_DECAY": at_least(0.0),
    "SOLVER.WARMUP_ITERS": at_least(0, integer=True),
    "SOLVER.WARMUP_FACTOR": between(0.0, 1.0),
    "SOLVER.WARMUP_METHOD": one_of(("linear", "constant")),
    "SOLVER.CHECKPOINT_PERIOD": at_least(1, integer=True),
    "INPUT.MIN_SIZE_TRAIN": image_sides(1),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": one_of(("choice", "range", "range_by_clipping")),
    "INPUT.MAX_SIZE_TRAIN": at_least(1, integer=True),
    "INPUT.MIN_SIZE_TEST": at_least(0, integer=True),  # 0: no resizing at test time
    "INPUT.MAX_SIZE_TEST": at_least(1, integer=True),
    "DATALOADER.NUM_WORKERS": at_least(0, integer=True),
    "TEST.EVAL_PERIOD": at_least(0, integer=True),
    "TEST.OOD.SCORE_THRESHOLD": between(0.0, 1.0),
    "TEST.OOD.BOX_SELECTION": one_of(("optimal_f1", "fixed")),
    "TEST.OOD.CALIBRATION_ID_KEEP": between(0.0, 1.0, low_open=True, high_open=True),
    "TEST.OOD.FPR95_METHOD": one_of(("first_at_least", "official_closest")),
    "TEST.OOD.PROTOCOL": one_of(("vos_official", "vos_det")),
}


def _get(cfg, key, default=None):
    node = cfg
    for name in key.split("."):
        if name not in node:
            return default
        node = node[name]
    return node


def _select_within_sample_from(cfg):
    if _get(cfg, "MODEL.VOS.OUTLIER_TAIL", 0.0):  # tail sampling draws no SAMPLE_FROM candidates
        return None
    select, sample_from = _get(cfg, "MODEL.VOS.SELECT"), _get(cfg, "MODEL.VOS.SAMPLE_FROM")
    if is_number(select) and is_number(sample_from) and select > sample_from:
        return (
            f"MODEL.VOS.SELECT={select} must be <= MODEL.VOS.SAMPLE_FROM={sample_from} "
            "(the outliers kept are among the samples drawn)"
        )
    return None


def _tail_needs_chi2(cfg):
    tail, sampler = _get(cfg, "MODEL.VOS.OUTLIER_TAIL", 0.0), _get(cfg, "MODEL.VOS.SAMPLER")
    if is_number(tail) and tail > 0 and sampler != "chi2":
        return f"MODEL.VOS.OUTLIER_TAIL={tail} needs MODEL.VOS.SAMPLER chi2, not {sampler!r}"
    return None


def _score_needs_vos(cfg):
    score = _get(cfg, "MODEL.OOD.SCORE")
    if score in VOS_ONLY_SCORES and _get(cfg, "MODEL.VOS.ENABLED") is False:
        return (
            f"MODEL.OOD.SCORE={score!r} needs MODEL.VOS.ENABLED True; a model trained "
            "without VOS can use 'energy' or 'msp'"
        )
    return None


def _range_needs_two_sides(cfg):
    sampling, sides = _get(cfg, "INPUT.MIN_SIZE_TRAIN_SAMPLING"), _get(cfg, "INPUT.MIN_SIZE_TRAIN")
    if sampling in ("range", "range_by_clipping") and isinstance(sides, (list, tuple)) and len(sides) != 2:
        return (
            f"INPUT.MIN_SIZE_TRAIN={tuple(sides)!r} must hold two sides (low, high) with "
            f"INPUT.MIN_SIZE_TRAIN_SAMPLING {sampling!r}"
        )
    return None


# Checks reading several keys: cfg -> None when fine, else the message (naming the keys).
CROSS_CHECKS = [_select_within_sample_from, _tail_needs_chi2, _score_needs_vos, _range_needs_two_sides]


def _warn_schedule_beyond_max_iter(cfg):
    """Warn about LR steps and warm-up that the training schedule never reaches."""
    max_iter, steps = _get(cfg, "SOLVER.MAX_ITER"), _get(cfg, "SOLVER.STEPS", ())
    warmup = _get(cfg, "SOLVER.WARMUP_ITERS", 0)
    if not is_number(max_iter) or increasing_iterations(steps):
        return
    beyond = [step for step in steps if step >= max_iter]
    if beyond:
        logger.warning(
            "SOLVER.STEPS %s >= SOLVER.MAX_ITER=%s: the learning rate never drops there (set "
            "SOLVER.STEPS to iterations below MAX_ITER, or () for a constant rate)",
            beyond,
            max_iter,
        )
    if is_number(warmup) and warmup >= max_iter:
        logger.warning(
            "SOLVER.WARMUP_ITERS=%s >= SOLVER.MAX_ITER=%s: the learning rate never reaches "
            "SOLVER.BASE_LR",
            warmup,
            max_iter,
        )


def _warn_unreachable_synthesis(cfg):
    """Warn when synthesis cannot start within the training schedule."""
    if not _get(cfg, "MODEL.VOS.ENABLED", False):
        return
    starting_iter, max_iter = _get(cfg, "MODEL.VOS.STARTING_ITER"), _get(cfg, "SOLVER.MAX_ITER")
    if is_number(starting_iter) and is_number(max_iter) and starting_iter >= max_iter:
        logger.warning(
            "MODEL.VOS.STARTING_ITER=%s >= SOLVER.MAX_ITER=%s: outlier synthesis and the "
            "uncertainty loss never start, this trains a vanilla detector",
            starting_iter,
            max_iter,
        )


def validate_config(cfg, training=False):
    """Check every key of :data:`RULES` present in ``cfg`` and every :data:`CROSS_CHECKS`.

    Args:
        cfg (CfgNode): the config (frozen or not).
        training (bool): also warn about training-only settings (STARTING_ITER >= MAX_ITER).

    Raises:
        ConfigError: every problem found, one per line, each naming the key, the value and
            what is allowed.
    """
    problems = []
    for key, check in RULES.items():
        value = _get(cfg, key, _MISSING)
        if value is _MISSING:
            continue
        problem = check(value)
        if problem:
            problems.append(f"{key}={value!r}: {problem}")
    problems += [p for p in (check(cfg) for check in CROSS_CHECKS) if p]
    if problems:
        raise ConfigError("invalid config value" + ("s:\n  " if len(problems) > 1 else ": ") + "\n  ".join(problems))
    if training:
        _warn_unreachable_synthesis(cfg)
        _warn_schedule_beyond_max_iter(cfg)

