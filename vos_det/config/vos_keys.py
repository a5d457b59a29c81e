"""The keys of the VOS training method (``MODEL.VOS``), each declared once.

A :class:`VOSKey` holds a key's default, its check and its meaning. Everything else is read
from :data:`VOS_KEYS`: the defaults that :func:`vos_det.config.add_vos_config` adds, the rules
of :func:`vos_det.config.validate_config`, the keyword arguments of
:meth:`vos_det.modeling.vos.VirtualOutlierMixin.init_virtual_outliers`
(:func:`vos_kwargs_from_config`, :func:`vos_arguments`), the options of the LazyConfig
:func:`vos_det.lazyconfig.add_vos`, and ``docs/config_keys.md``. A new key of the method is one
``VOSKey(...)`` line here and the code that reads it (an attribute of the mixin of the same
name as its argument).

The mixin also computes the score behind ``is_ood`` and its threshold: their keys are of any
detector, ``MODEL.OOD`` (:mod:`.ood_keys`), and its arguments too (:data:`MIXIN_KEYS`). The
``MODEL.VOS`` keys that a host module reads in its own ``from_config`` (the box predictor's
name, its bottleneck) are set in :mod:`vos_det.config.defaults` with their comments.
"""
from dataclasses import dataclass
from typing import ClassVar

from .checks import at_least, between, greater_than, one_of
from .choices import OUTLIER_SYNTHESES, SAMPLERS, UNCERTAINTY_HEADS
from .declared_keys import DeclaredKey, add_declared_keys, declared_value
from .ood_keys import OOD_KEYS

__all__ = [
    "MIXIN_KEYS",
    "VOSKey",
    "VOS_KEYS",
    "add_vos_keys",
    "check_vos_arguments",
    "vos_arguments",
    "vos_kwargs_from_config",
]


@dataclass(frozen=True)
class VOSKey(DeclaredKey):
    """One key of ``MODEL.VOS`` (:class:`~vos_det.config.declared_keys.DeclaredKey`); its
    argument of ``init_virtual_outliers`` is by default the name in lower case with "." as
    "_" (``NPOS.K`` -> ``npos_k``)."""

    node: ClassVar[str] = "MODEL.VOS"

    def __post_init__(self):
        if not self.argument:
            object.__setattr__(self, "argument", self.name.lower().replace(".", "_"))


VOS_KEYS = (
    VOSKey("ENABLED", True, None,
           "Turn virtual outlier synthesis and the uncertainty loss on. Off gives the vanilla detector "
           "(the OOD fields are still produced from the energy of its logits).",
           argument="vos_enabled"),
    VOSKey("SAMPLE_NUMBER", 1000, at_least(1, integer=True),
           "Capacity of the FIFO feature queue of each class (paper: 1000)."),
    VOSKey("STARTING_ITER", 12000, at_least(0, integer=True),
           "Iteration from which outliers are synthesised, once every class queue is full."),
    VOSKey("SAMPLE_FROM", 10000, at_least(1, integer=True),
           "Number of Gaussian samples drawn per class at each synthesis step (paper: 10000)."),
    VOSKey("SELECT", 1, at_least(1, integer=True),
           "Number of lowest-likelihood samples kept per class as virtual outliers (paper: 1)."),
    VOSKey("LOSS_WEIGHT", 0.1, at_least(0.0),
           "beta, the weight of the uncertainty loss in the total loss (paper: 0.1).",
           argument="vos_loss_weight"),
    VOSKey("COVARIANCE_EPS", 1e-4, greater_than(0.0),
           'eps of the "+ eps * I" regulariser of the shared covariance (paper code: 1e-4).'),
    VOSKey("COVARIANCE_RECOMPUTE_PERIOD", 500, at_least(1, integer=True),
           "The covariance is updated incrementally as features enter and leave the queues; every "
           "this many synthesis steps it is recomputed exactly from the queues."),
    VOSKey("SAMPLER", "chi2", one_of(SAMPLERS),
           'How the lowest-likelihood samples are drawn, both exact in distribution: "chi2": the '
           "squared radii ||z||^2 ~ chi-square(m) are drawn and ranked, then only the kept ones get a "
           'uniform direction (no SAMPLE_FROM x m tensor); "gaussian": z ~ N(0, I) is drawn in full '
           "and ranked by ||z||^2 (reference route)."),
    VOSKey("SYNTHESIS_SEED", 0, at_least(0, integer=True),
           "Base seed of the random stream of synthesis: iteration i uses its own seed derived from "
           "(SYNTHESIS_SEED, i) (and the rank, see PER_RANK_OUTLIERS), so a resumed run draws the "
           "ones it would have drawn without interruption."),
    VOSKey("PER_RANK_OUTLIERS", True, None,
           "Each rank of a distributed run draws its own outliers, from a seed of (SYNTHESIS_SEED, "
           "iteration, rank), as the paper's per-GPU draws (8 GPUs x K x SELECT per step); rank 0 "
           "draws what a single process does. False: every rank draws the same outliers."),
    VOSKey("UNCERTAINTY_HEAD", "logistic", one_of(UNCERTAINTY_HEADS),
           'The uncertainty head, the classifier of -E (ID vs virtual outlier) of eq. 5: "logistic": '
           'Linear(1, 2) with cross-entropy, as the released branch `main`; "mlp": Linear(1, 512) - '
           "ReLU - Linear(512, 1) with binary cross-entropy, as the branch `main-MLP`, which produced "
           "the paper's final (OpenReview) numbers and the released checkpoints. Both take ID as label 1."),
    # Variants of VOS, all off by default (the paper's recipe); docs/vos_internals.md,
    # "VOS variants (all off by default)", describes them.
    VOSKey("BALANCED_LOSS", False, None,
           "Class-balanced uncertainty loss: ID samples and outliers weigh one half each."),
    VOSKey("OUTLIER_TAIL", 0.0, between(0.0, 1.0, high_open=True),
           "> 0: outliers are drawn beyond eq. 3's likelihood threshold at this tail probability "
           "(Gaussian conditioned on ||z||^2 >= chi2.isf(OUTLIER_TAIL, D); SAMPLE_FROM unused); 0 = "
           'the paper\'s "least likely of SAMPLE_FROM". Needs SAMPLER "chi2".'),
    VOSKey("OUTLIER_RADIUS_SCALE", 1.0, greater_than(0.0),
           "Factor on the Mahalanobis radius of every Gaussian outlier (1.0 = off)."),
    VOSKey("OUTLIER_SYNTHESIS", "gaussian", one_of(OUTLIER_SYNTHESES),
           'How outliers are made: "gaussian" (paper eq. 1-3) or "npos" (NPOS-style: boundary ID '
           "features by k-NN distance, perturbed, the farthest kept; K * SELECT per step from "
           "SAMPLE_FROM candidates)."),
    VOSKey("NPOS.K", 10, at_least(1, integer=True), "NPOS: K, the neighbour of the k-NN distance."),
    VOSKey("NPOS.BOUNDARY", 100, at_least(1, integer=True), "NPOS: the boundary features perturbed."),
    VOSKey("NPOS.NOISE_SCALE", 0.5, at_least(0.0),
           "NPOS: the norm of the Gaussian noise relative to the unit-normalised feature."),
)


# The keys whose values are the keyword arguments of ``init_virtual_outliers``: the method's,
# and the score behind is_ood with its threshold (MODEL.OOD), which the mixin computes.
MIXIN_KEYS = VOS_KEYS + tuple(key for key in OOD_KEYS if key.argument)


def add_vos_keys(vos_node):
    """Set every key of :data:`VOS_KEYS` to its default in ``vos_node`` (``cfg.MODEL.VOS``),
    making the sub-nodes (``NPOS``) on the way."""
    add_declared_keys(vos_node, VOS_KEYS)


def vos_arguments(**overrides) -> dict:
    """The keyword arguments of ``init_virtual_outliers``: every default, with ``overrides``.

    Raises:
        ValueError: an argument that no key of :data:`MIXIN_KEYS` has (the message lists them).
    """
    arguments = {key.argument: key.default for key in MIXIN_KEYS}
    unknown = sorted(set(overrides) - set(arguments))
    if unknown:
        raise ValueError(f"unknown VOS option(s) {unknown}; the options are {sorted(arguments)}")
    arguments.update(overrides)
    return arguments


def vos_kwargs_from_config(cfg) -> dict:
    """The keys of :data:`MIXIN_KEYS` in ``cfg`` as the keyword arguments of ``init_virtual_outliers``."""
    return {key.argument: declared_value(cfg, key) for key in MIXIN_KEYS}


def check_vos_arguments(arguments: dict):
    """Run the check of every key on its argument.

    Raises:
        ValueError: every value not allowed, one per line, naming the key.
    """
    problems = []
    for key in MIXIN_KEYS:
        problem = key.check(arguments[key.argument]) if key.check else None
        if problem:
            problems.append(f"{key.key}={arguments[key.argument]!r}: {problem}")
    if problems:
        raise ValueError("\n".join(problems))
