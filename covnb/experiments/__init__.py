"""Experiments: what turns frames into a trained, cross-validated model.

One concept per module, data flowing one way:

* :mod:`~covnb.experiments.recipes` -- :class:`TrainConfig` and the named recipes;
* :mod:`~covnb.experiments.features` -- the frozen-feature store (cached per frame and view);
* :mod:`~covnb.experiments.fitting` -- :class:`FoldData` and fitting a head on one fold;
* :mod:`~covnb.experiments.crossval` -- grouped cross-validation and the final model;
* :mod:`~covnb.experiments.training` -- a whole run (``covnb train``) and its result.

:mod:`covnb.train` re-exports every name (and documents why the recipes are what they are).
"""

from covnb.experiments.crossval import CVResult, RecipeCandidates, fit_final_model, run_cross_validation
from covnb.experiments.features import compute_features, predict_frames, recipe_features
from covnb.experiments.fitting import FoldData, fit_fold
from covnb.experiments.recipes import RECIPES, SELECTION_CANDIDATES, TrainConfig, recipe_config
from covnb.experiments.training import TrainingResult, run_training

__all__ = ["RECIPES", "SELECTION_CANDIDATES", "TrainConfig", "recipe_config", "compute_features", "predict_frames",
           "recipe_features", "FoldData", "fit_fold", "CVResult", "RecipeCandidates", "run_cross_validation",
           "fit_final_model", "TrainingResult", "run_training"]
