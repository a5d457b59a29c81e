"""Range and choice checks of the vos_det config keys, run before any work.

One table, :data:`RULES`, maps a key to a check of its value; :data:`CROSS_CHECKS` holds the
checks that read several keys. A new key gets its check by adding one line to ``RULES``
(``"MODEL.VOS.NEW_KEY": at_least(0),``). A key absent from the config (a config built without
the module that adds it) is skipped. :func:`validate_config` runs them all when a tool loads
its config (:func:`vos_det.config.load_config`) and when a VOS model is built, so a mistake
fails in the first seconds, not at the first synthesis step hours into a run.
"""
import logging
import math

from .errors import ConfigError

__all__ = [
    "CROSS_CHECKS",
    "RULES",
    "at_least",
    "between",
    "greater_than",
    "image_sides",
    "increasing_iterations",
    "one_of",
    "validate_config",
]

logger = logging.getLogger(__name__)

_MISSING = object()


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low, integer=False):
    """A check: a finite number (an integer if ``integer``) >= ``low``."""
    kind = "an integer" if integer else "a number"

    def check(value):
        if not _is_number(value) or (integer and not isinstance(value, int)):
            return f"must be {kind} >= {low}"
        return None if value >= low else f"must be >= {low}"

    return check


def greater_than(low):
    """A check: a finite number > ``low``."""
    return lambda value: None if _is_number(value) and value > low else f"must be a number > {low}"


def between(low, high, *, high_open=False, low_open=False):
    """A check: a finite number in [low, high] (``low_open`` / ``high_open`` exclude an end)."""
    text = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(value):
        if not _is_number(value):
            return f"must be a number in {text}"
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"must be in {text}"

    return check


def one_of(choices):
    """A check: a value among ``choices`` (a tuple, or a callable returning the names, read at
    check time so that registries filled later count)."""

    def check(value):
        allowed = tuple(choices() if callable(choices) else choices)
        return None if value in allowed else f"must be one of {', '.join(map(str, allowed))}"

    return check


def each_item(single, non_empty=False):
    """A check: every item of a list or tuple passes the check ``single``; with ``non_empty``
    the value must also be a list or tuple of at least one item."""

    def check(value):
        if non_empty and (not isinstance(value, (list, tuple)) or not value):
            return "must be a non-empty list"
        for item in value:
            problem = single(item)
            if problem:
                return f"item {item!r} {problem}"
        return None

    return check


def each_of(choices):
    """A check: a list or tuple whose every item is among ``choices`` (as :func:`one_of`)."""
    return each_item(one_of(choices))


def image_sides(low):
    """A check: an image side in pixels, an integer >= ``low``, or a non-empty list / tuple of
    them (detectron2's ``INPUT.MIN_SIZE_TRAIN`` is either)."""
    single = at_least(low, integer=True)

    def check(value):
        if not isinstance(value, (list, tuple)):
            return single(value)
        if not value:
            return f"must list at least one image side (integers >= {low})"
        for item in value:
            if single(item):
                return f"item {item!r} must be an integer >= {low} (an image side in pixels)"
        return None

    return check


def increasing_iterations(value):
    """A check of ``SOLVER.STEPS``: a list / tuple of strictly increasing integers >= 1."""
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) and isinstance(v, int) and v >= 1 for v in value):
        return "must be a list of iterations (integers >= 1), e.g. (1000, 1150) or ()"
    if any(b <= a for a, b in zip(value, value[1:])):
        return "must be strictly increasing"
    return None


def _regular_expressions(value):
    """A check: a non-empty list of regular expressions."""
    import re

    if not isinstance(value, (list, tuple)) or not value:
        return "must be a non-empty list of regular expressions"
    for pattern in value:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            return f"item {pattern!r} is not a regular expression ({e})"
    return None


def _registry_names(module, registry):
    """A callable listing the names of ``module.registry`` (imported lazily: no cycle)."""

    def names():
        import importlib

        return sorted(name for name, _ in getattr(importlib.import_module(module), registry))

    return names


def _ood_scores():
    from .modeling import OOD_SCORES

    return OOD_SCORES


def _modeling_constant(module, name):
    """``vos_det.modeling.<module>.<name>``, imported when a check runs (no import cycle)."""
    import importlib

    return getattr(importlib.import_module(f"vos_det.modeling.{module}"), name)


# key -> check(value) returning None when fine, else what is allowed.
RULES = {
    "MODEL.VOS.SAMPLE_NUMBER": at_least(1, integer=True),
    "MODEL.VOS.STARTING_ITER": at_least(0, integer=True),
    "MODEL.VOS.SAMPLE_FROM": at_least(1, integer=True),
    "MODEL.VOS.SELECT": at_least(1, integer=True),
    "MODEL.VOS.LOSS_WEIGHT": at_least(0.0),
    "MODEL.VOS.COVARIANCE_EPS": greater_than(0.0),
    "MODEL.VOS.COVARIANCE_RECOMPUTE_PERIOD": at_least(1, integer=True),
    "MODEL.VOS.SAMPLER": one_of(lambda: _modeling_constant("vos.synthesis", "SAMPLERS")),
    "MODEL.VOS.SYNTHESIS_SEED": at_least(0, integer=True),
    "MODEL.VOS.OOD_SCORE": one_of(_ood_scores),
    "MODEL.VOS.OOD_THRESHOLD": lambda v: None if _is_number(v) else "must be a finite number",
    "MODEL.VOS.POST_HOC.GEN.GAMMA": greater_than(0.0),
    "MODEL.VOS.POST_HOC.GEN.TOP_M": at_least(1, integer=True),
    "MODEL.VOS.POST_HOC.KNN.K": at_least(0, integer=True),
    "MODEL.VOS.POST_HOC.KNN.MAX_BANK_SIZE": at_least(0, integer=True),
    "MODEL.VOS.POST_HOC.KNN.CHUNK_SIZE": at_least(0, integer=True),
    "MODEL.VOS.POST_HOC.KNN.SEARCH": one_of(lambda: _modeling_constant("ood_scores.knn_search", "KNN_SEARCHES")),
    "MODEL.VOS.POST_HOC.KNN.NLIST": at_least(0, integer=True),
    "MODEL.VOS.POST_HOC.KNN.NPROBE": at_least(1, integer=True),
    "MODEL.VOS.POST_HOC.FUSED.LOGIT_PARTS": each_of(lambda: _modeling_constant("ood_scores.fused", "LOGIT_PARTS")),
    "MODEL.VOS.POST_HOC.FUSED.FEATURE_PARTS": each_of(lambda: _modeling_constant("ood_scores.fused", "FEATURE_PARTS")),
    "MODEL.VOS.POST_HOC.FUSED.SCALINGS": each_of(lambda: _modeling_constant("ood_scores.fused", "SCALINGS")),
    "MODEL.VOS.POST_HOC.FUSED.RULES": each_of(lambda: _modeling_constant("ood_scores.fused", "RULES")),
    "MODEL.VOS.POST_HOC.FUSED.OUTLIERS_PER_CLASS": at_least(1, integer=True),
    "MODEL.VOS.POST_HOC.VIM.DIM": at_least(0, integer=True),
    "MODEL.VOS.POST_HOC.REACT.PERCENTILE": between(0.0, 100.0, low_open=True),
    "MODEL.VOS.POST_HOC.SAFE.LAYER_PATTERNS": _regular_expressions,
    "MODEL.VOS.POST_HOC.SAFE.FGSM_EPSILON": between(0.0, 255.0, low_open=True),
    "MODEL.VOS.POST_HOC.SAFE.EPSILON_CANDIDATES": each_item(between(0.0, 255.0, low_open=True), non_empty=True),
    "MODEL.VOS.POST_HOC.SAFE.EPOCHS": at_least(1, integer=True),
    "MODEL.VOS.POST_HOC.SAFE.LEARNING_RATE": greater_than(0.0),
    "MODEL.VOS.POST_HOC.SAFE.IMAGES_PER_BATCH": at_least(1, integer=True),
    "MODEL.VOS.POST_HOC.SAFE.MAX_IMAGES": at_least(0, integer=True),
    "MODEL.VOS.OUTLIER_TAIL": between(0.0, 1.0, high_open=True),
    "MODEL.VOS.OUTLIER_RADIUS_SCALE": greater_than(0.0),
    "MODEL.VOS.BOTTLENECK_DIM": at_least(0, integer=True),
    "MODEL.VOS.OUTLIER_SYNTHESIS": one_of(("gaussian", "npos")),
    "MODEL.VOS.UNCERTAINTY_HEAD": one_of(("logistic", "mlp")),
    "MODEL.VOS.NPOS.K": at_least(1, integer=True),
    "MODEL.VOS.NPOS.BOUNDARY": at_least(1, integer=True),
    "MODEL.VOS.NPOS.NOISE_SCALE": at_least(0.0),
    "MODEL.VOS.BOX_PREDICTOR": one_of(_registry_names("vos_det.modeling.output_layers", "BOX_PREDICTOR_REGISTRY")),
    "MODEL.EMBEDDING.CLASSIFIER": one_of(_registry_names("vos_det.modeling.regularizers", "CLASSIFIER_REGISTRY")),
    "MODEL.EMBEDDING.LOSSES": each_of(_registry_names("vos_det.modeling.regularizers", "EMBEDDING_LOSS_REGISTRY")),
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
    if _is_number(select) and _is_number(sample_from) and select > sample_from:
        return (
            f"MODEL.VOS.SELECT={select} must be <= MODEL.VOS.SAMPLE_FROM={sample_from} "
            "(the outliers kept are among the samples drawn)"
        )
    return None


def _tail_needs_chi2(cfg):
    tail, sampler = _get(cfg, "MODEL.VOS.OUTLIER_TAIL", 0.0), _get(cfg, "MODEL.VOS.SAMPLER")
    if _is_number(tail) and tail > 0 and sampler != "chi2":
        return f"MODEL.VOS.OUTLIER_TAIL={tail} needs MODEL.VOS.SAMPLER chi2, not {sampler!r}"
    return None


def _score_needs_vos(cfg):
    score = _get(cfg, "MODEL.VOS.OOD_SCORE")
    if score in ("vos", "vos_release", "weighted_energy") and _get(cfg, "MODEL.VOS.ENABLED") is False:
        return (
            f"MODEL.VOS.OOD_SCORE={score!r} needs MODEL.VOS.ENABLED True; a model trained "
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
    if not _is_number(max_iter) or increasing_iterations(steps):
        return
    beyond = [step for step in steps if step >= max_iter]
    if beyond:
        logger.warning(
            "SOLVER.STEPS %s >= SOLVER.MAX_ITER=%s: the learning rate never drops there (set "
            "SOLVER.STEPS to iterations below MAX_ITER, or () for a constant rate)",
            beyond,
            max_iter,
        )
    if _is_number(warmup) and warmup >= max_iter:
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
    if _is_number(starting_iter) and _is_number(max_iter) and starting_iter >= max_iter:
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

