"""Trainer: detectron2's DefaultTrainer with ID detection metrics plus per-box OOD metrics."""
import contextlib
import functools
import logging
import os
import re

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.utils import comm

from ..data.catalog import get_ood_role
from ..data.mapper import ImageNamingDatasetMapper
from ..data.resumable_sampler import ResumableTrainingSampler
from ..errors import TrainingDivergedError
from ..evaluation.records import build_detection_evaluator, log_detection_results
from ..evaluation.leaderboard import log_leaderboard_comparison
from ..evaluation.report import OOD_RESULTS_FILE
from ..modeling.ood_scores import attach_post_hoc_hooks
from .checkpoint import AtomicWritePathManager, CaptureRandomStates, RandomState
from .launch import cpu_ddp_in_default_trainer
from .ood_evaluation import evaluate_model

# OOD_RESULTS_FILE: the name of the report Trainer.test writes in OUTPUT_DIR.
__all__ = ["OOD_RESULTS_FILE", "Trainer", "divergence_message"]

# A non-finite entry of the loss dict detectron2 puts in its FloatingPointError message
# ("'loss_cls': nan", or "np.float64(nan)" with NumPy 2).
_NON_FINITE_LOSS = re.compile(r"'(\w+)': (?:np\.float\d+\()?(nan|-?inf)")
# detectron2's RPN raises this when its predictions are no longer finite.
_NON_FINITE_PROPOSALS = "Predicted boxes or scores contain Inf/NaN"


def divergence_message(error, iteration, last_checkpoint, cfg, last_loss=None):
    """One line saying where training diverged, what went non-finite and what to do.

    Args:
        error (FloatingPointError): detectron2's (a non-finite loss, or RPN predictions).
        iteration (int): the iteration that failed.
        last_checkpoint (str): the last checkpoint written ("" = none).
        cfg (CfgNode): the config (SOLVER.BASE_LR, WARMUP_ITERS, CHECKPOINT_PERIOD).
        last_loss (tuple, optional): (iteration, total_loss) of the last logged finite loss.
    """
    message = str(error)
    losses = _NON_FINITE_LOSS.findall(message)
    if losses:
        what = ", ".join(f"{name} = {value}" for name, value in losses)
    elif _NON_FINITE_PROPOSALS in message:
        what = "the RPN's predicted boxes or scores became Inf/NaN (the weights went non-finite)"
    else:
        what = message.splitlines()[0]
    if last_loss is not None:
        what += f"; last finite total_loss {last_loss[1]:.4g} at iteration {last_loss[0]}"
    kept = (
        f"the last checkpoint, {last_checkpoint}, is kept (rerun with --resume to continue from it)"
        if last_checkpoint
        else f"no checkpoint was written before it (SOLVER.CHECKPOINT_PERIOD {cfg.SOLVER.CHECKPOINT_PERIOD})"
    )
    return (
        f"training diverged at iteration {iteration}: {what}; {kept}; try a lower SOLVER.BASE_LR "
        f"(now {cfg.SOLVER.BASE_LR:g}) or a longer SOLVER.WARMUP_ITERS (now {cfg.SOLVER.WARMUP_ITERS})"
    )


class _DropDivergenceTracebacks(logging.Filter):
    """Drops detectron2's "Exception during training" records of a divergence: its message
    is reported once, as one line, by :func:`vos_det.cli.run_tool` (``--debug``: with the
    traceback)."""

    def filter(self, record):
        exception = record.exc_info[1] if record.exc_info else None
        return not isinstance(exception, (FloatingPointError, TrainingDivergedError))


@contextlib.contextmanager
def _quiet_divergence_tracebacks():
    log = logging.getLogger("detectron2.engine.train_loop")
    quiet = _DropDivergenceTracebacks()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


class Trainer(DefaultTrainer):
    """DefaultTrainer whose evaluation also scores every selected box as ID or OOD.

    ``test`` runs the model once over each ID set of ``DATASETS.TEST`` (detection metrics
    from the dataset's own evaluator, plus the OOD scores of its boxes) and once over each
    set of ``DATASETS.OOD_TEST`` (OOD scores only), then reports FPR95 / AUROC / AUPR for
    every OOD score the model outputs, for each (ID set, OOD set) pair. The results are
    also written to ``OUTPUT_DIR/ood_results.json`` with the FPR95 convention.
    """

    # The config key of the model's class count (check_datasets compares the ID sets' with
    # it), how its errors name a dataset, and whether training drops images without boxes
    # (as DATALOADER.FILTER_EMPTY_ANNOTATIONS says).
    NUM_CLASSES_KEY = "MODEL.ROI_HEADS.NUM_CLASSES"
    DATASET_NOUN = "the training set"
    FILTER_EMPTY_IMAGES = True

    def __init__(self, cfg):
        # Every rank's random state, saved with the checkpoints (build_hooks gathers them).
        self.random_state = RandomState()
        # DefaultTrainer's DDP wrap passes device_ids, which DDP refuses for a CPU model.
        with cpu_ddp_in_default_trainer():
            super().__init__(cfg)
        # Checkpoints appear whole or not at all, and carry the random states for --resume.
        self.checkpointer.path_manager = AtomicWritePathManager(self.checkpointer.path_manager)
        self.checkpointer.add_checkpointable("random_state", self.random_state)

    def build_hooks(self):
        """DefaultTrainer's hooks, with :class:`CaptureRandomStates` on every rank just
        before the periodic checkpointer (rank 0's) and the evaluation."""
        hook_list = super().build_hooks()
        position = next(
            (i for i, hook in enumerate(hook_list) if isinstance(hook, (hooks.PeriodicCheckpointer, hooks.EvalHook))),
            len(hook_list),
        )
        hook_list.insert(position, CaptureRandomStates(self.random_state, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hook_list

    def train(self):
        """DefaultTrainer's; a divergence ends it with one :class:`TrainingDivergedError`
        (see :meth:`run_step`), checkpoints untouched."""
        with _quiet_divergence_tracebacks():
            return super().train()

    def run_step(self):
        """DefaultTrainer's step; detectron2's FloatingPointError (a non-finite loss, or RPN
        predictions) becomes a :class:`TrainingDivergedError` naming the iteration, what went
        non-finite, the last checkpoint and what to try (:func:`divergence_message`)."""
        try:
            super().run_step()
        except FloatingPointError as error:
            last_loss = None
            history = self.storage.histories().get("total_loss")
            if history is not None and history.values():
                value, iteration = history.values()[-1]
                last_loss = (iteration, value)
            checkpoint = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
            message = divergence_message(error, self.iter, checkpoint, self.cfg, last_loss)
            raise TrainingDivergedError(message) from error

    @classmethod
    def check_datasets(cls, cfg):
        """Refuse training / ID test sets that are OOD sets or whose classes are not the model's.

        Every set of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` must have ``ood_role`` "id"
        (:func:`vos_det.data.catalog.get_ood_role`), and those that name their classes must
        have ``NUM_CLASSES_KEY`` of them, the same for all.

        Raises:
            ValueError: naming the dataset.
        """
        num_classes = functools.reduce(getattr, cls.NUM_CLASSES_KEY.split("."), cfg)
        first_classes = None
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            role = get_ood_role(name)
            if role != "id":
                raise ValueError(
                    f"dataset {name!r} in DATASETS.TRAIN / DATASETS.TEST has ood_role {role!r}; "
                    "OOD sets go to DATASETS.OOD_TEST"
                )
            class_names = MetadataCatalog.get(name).get("thing_classes", None)
            if class_names is None:
                continue
            if len(class_names) != num_classes:
                raise ValueError(
                    f"{cls.NUM_CLASSES_KEY}={num_classes} but {cls.DATASET_NOUN} {name!r} has "
                    f"{len(class_names)} classes: {list(class_names)}"
                )
            if first_classes is None:
                first_classes = list(class_names)
            elif list(class_names) != first_classes:
                raise ValueError(
                    f"dataset {name!r} has classes {list(class_names)}, not those of the training "
                    f"set, {first_classes}"
                )

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model, with the forward hooks its fitted post-hoc scores read (SAFE)."""
        return attach_post_hoc_hooks(super().build_model(cfg))

    @classmethod
    def build_mapper(cls, cfg, is_train: bool):
        """The dataset mapper of the train and test loaders: detectron2's, naming the image
        file in its errors."""
        return ImageNamingDatasetMapper(cfg, is_train=is_train)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """The train loader (datasets checked first), with a sampler resuming at ``start_iter``.

        With a fixed ``cfg.SEED`` (>= 0) the image order and the loader's worker seeds do
        not depend on the global random state, so a resumed run sees the same batches as
        an uninterrupted one.
        """
        cls.check_datasets(cfg)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cls.FILTER_EMPTY_IMAGES and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        seed = cfg.SEED if cfg.SEED >= 0 else None
        sampler = ResumableTrainingSampler(
            len(dataset), seed=seed, start_position=start_iter * cfg.SOLVER.IMS_PER_BATCH
        )
        mapper = cls.build_mapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, dataset=dataset, mapper=mapper, sampler=sampler, seed=seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with :meth:`build_mapper`'s mapper."""
        return build_detection_test_loader(cfg, dataset_name, mapper=cls.build_mapper(cfg, is_train=False))

    def resume_or_load(self, resume=True):
        """As DefaultTrainer's; a resumed run also continues the image stream where it stopped."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            self._trainer.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The detection evaluator of an ID set, chosen by its metadata's evaluator_type.

        VOC-format sets get COCO-style AP / AP50 / AP75 (``"bbox"``, via a COCO json made
        from the dataset dicts) and the VOC AP (``"voc"``); COCO-format sets COCO-style AP.
        See :func:`vos_det.evaluation.records.build_detection_evaluator`.
        """
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_detection_evaluator(dataset_name, output_folder)

    @classmethod
    def evaluate_ood_of(cls, cfg, model, evaluators=None, log_report=True):
        """The OOD evaluation of a model (:func:`vos_det.engine.ood_evaluation.evaluate_model`)
        with this trainer's test loaders and evaluators.

        Returns:
            tuple[OrderedDict, dict]: (results, report) of :func:`vos_det.evaluation.evaluate_ood`.
        """
        return evaluate_model(
            cfg,
            model,
            lambda name: cls.build_test_loader(cfg, name),
            lambda name: cls.build_evaluator(cfg, name),
            evaluators,
            log_report,
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate ID detection quality and per-box OOD detection (the VOS protocol).

        One inference pass per set of ``DATASETS.TEST`` and ``DATASETS.OOD_TEST``; boxes are
        selected by ``TEST.OOD.BOX_SELECTION`` (optimal-F1 threshold of each ID set by
        default), and every OOD score gets FPR95 / AUROC / AUPR-In / AUPR-Out. With
        ``TEST.OOD.CALIBRATION_DATASET`` set, the OOD threshold is calibrated on it and the
        model saved as ``OUTPUT_DIR/model_calibrated.pth``. The table is logged, the report
        written to ``OUTPUT_DIR/ood_results.json`` and the plots to ``OUTPUT_DIR/ood_plots``.
        When the config is one of the OOD leaderboard's methods, the FPR95 / AUROC of each
        score are also logged beside the leaderboard's seed spread
        (:func:`vos_det.evaluation.leaderboard.log_leaderboard_comparison`).
        See :meth:`evaluate_ood_of` and :func:`vos_det.evaluation.evaluate_ood`.

        Args:
            cfg (CfgNode): the config.
            model (nn.Module): the detector.
            evaluators (list[DatasetEvaluator], optional): detection evaluators, one per
                set of DATASETS.TEST; built with :meth:`build_evaluator` when None.

        Returns:
            OrderedDict: nested dicts of floats: ``{id_set: {"bbox": {...}, "voc": {...}},
            "ood": {id_set: {ood_set: {score: metrics}}}, "box_selection": {id_set:
            {"score_threshold": t}}}`` (plus ``"calibration"`` when calibrated).
        """
        cls.check_datasets(cfg)
        results, _ = cls.evaluate_ood_of(cfg, model, evaluators)
        log_detection_results(results, cfg.DATASETS.TEST)
        if comm.is_main_process():
            log_leaderboard_comparison(cfg, results)
        return results
