"""Which OOD scores inference computes: the score behind ``is_ood`` alone, or every score.

A box predictor with OOD scores (``VOSOutputLayers``) has a boolean attribute
``compute_all_ood_scores``: False (its default), inference computes the score behind
``is_ood`` only; True, every OOD score the model has, each in an ``ood_scores_<name>``
field. An evaluation that tabulates them all runs the model inside
:func:`computing_all_ood_scores`. This module imports nothing of the package, so the
evaluation asks for the scores without importing the model code.
"""
import contextlib

from torch import nn

__all__ = ["computing_all_ood_scores"]

# The boolean attribute of a box predictor that asks it for every OOD score.
_ATTRIBUTE = "compute_all_ood_scores"


@contextlib.contextmanager
def computing_all_ood_scores(model: nn.Module):
    """A context in which the box predictors of ``model`` compute every OOD score they have.

    Args:
        model: a detector, or a module wrapping one (e.g. DistributedDataParallel); its
            modules with a ``compute_all_ood_scores`` attribute get it set to True
            and, on exit, back to their value.
    """
    predictors = [module for module in model.modules() if hasattr(module, _ATTRIBUTE)]
    previous = [getattr(predictor, _ATTRIBUTE) for predictor in predictors]
    for predictor in predictors:
        setattr(predictor, _ATTRIBUTE, True)
    try:
        yield
    finally:
        for predictor, value in zip(predictors, previous):
            setattr(predictor, _ATTRIBUTE, value)
