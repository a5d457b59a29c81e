"""The trainer of a model, chosen by its meta-architecture.

A task whose model needs its own trainer registers it under the name of its meta-architecture
(``MODEL.META_ARCHITECTURE``), as :mod:`vos_det.classification` does for
``VOSImageClassifier``; every other model is trained by the detection :class:`Trainer`. The
engine thus builds any model without importing the packages that define them::

    @register_trainer("VOSImageClassifier")
    class ClassificationTrainer(Trainer):
        ...

    trainer_for(cfg).build_model(cfg)
"""
from .trainer import Trainer

__all__ = ["register_trainer", "trainer_for"]

# META_ARCHITECTURE name -> the Trainer subclass that trains and tests it.
_TRAINERS = {}


def register_trainer(meta_architecture: str):
    """A class decorator registering a :class:`Trainer` subclass for ``meta_architecture``.

    Raises:
        ValueError: another trainer is registered for that name already.
    """

    def register(trainer_class):
        if _TRAINERS.get(meta_architecture, trainer_class) is not trainer_class:
            raise ValueError(f"a trainer is registered for {meta_architecture} already: {_TRAINERS[meta_architecture]}")
        _TRAINERS[meta_architecture] = trainer_class
        return trainer_class

    return register


def trainer_for(cfg):
    """The trainer class of the model ``cfg.MODEL.META_ARCHITECTURE``: the one registered for
    it, else :class:`Trainer`."""
    return _TRAINERS.get(cfg.MODEL.META_ARCHITECTURE, Trainer)
