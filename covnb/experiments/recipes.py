"""Training recipes: :class:`TrainConfig` (every knob), the named recipes and the "auto" candidates.

The dataclass defaults ARE the ``"midlevel"`` recipe (``TrainConfig() == recipe_config("midlevel")``);
the other recipes are overrides of it. The ``"default"`` recipe is ``"midlevel"`` with the number of
projected-out source directions (NAP) chosen inside every training fold: re-selected on
source-held-out folds (issue 13; README). Why each default was chosen, with the numbers measured on
POCUS, is told in :mod:`covnb.train`'s docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from covnb.models import POOLED_TAP_HEADS, augmentation_spec

__all__ = ["RECIPES", "DISTRIBUTE_CHOICES", "IMBALANCE_CHOICES", "SOURCE_WEIGHTINGS", "ENGINES", "TRAIN_UNITS",
           "SOLVERS", "GROUPINGS", "SELECTION_CANDIDATES", "AUTO_CANDIDATES", "NAP_CANDIDATES",
           "UNMIRRORABLE_MODALITIES", "TrainConfig", "recipe_config", "selection_configs", "mirror_is_plausible",
           "needs_sources", "FIT_TIME_SETTINGS", "same_features"]

RECIPES = ("pocovid", "default", "midlevel", "linear_probe", "auto", "nap")
IMBALANCE_CHOICES = ("none", "class_weight", "oversample", "source_balanced", "source_sqrt")
#: Imbalance corrections that weigh sources inside each class (:func:`covnb.nuisance.source_balanced_weights`:
#: the power of the source size divided out), logistic head only.
SOURCE_WEIGHTINGS = {"source_balanced": 1.0, "source_sqrt": 0.5}
ENGINES = ("cached", "plain")
TRAIN_UNITS = ("frame", "video")
SOLVERS = ("keras", "logistic")
GROUPINGS = ("patient", "source")
#: tf.distribute strategies of the Keras heads and fine-tuning (covnb.experiments.fitting.distribution_strategy).
DISTRIBUTE_CHOICES = ("none", "mirrored", "multiworker")

#: The declared candidates of ``select`` (recipe "auto"): each a set of overrides of the logistic
#: recipe, compared by the inner (source-aware when grouping by source) CV of every training fold.
#: Listed from the sturdiest: ties go to the earlier one.
SELECTION_CANDIDATES: dict[str, dict[str, Any]] = {
    "top_probe": dict(head="gap", mirror_view=False, train_unit="frame"),
    "top_probe_video_mirror": dict(head="gap", mirror_view=True, train_unit="video"),
    "midlevel_no_mirror": dict(head="midlevel", mirror_view=False, train_unit="video"),
    "midlevel": dict(head="midlevel", mirror_view=True, train_unit="video"),
    # source-aware variants of the recipe they are applied to (issue 13; covnb.nuisance): they keep its
    # head, views and training unit. "nap0" is the recipe itself.
    "nap0": dict(nuisance_dims=0),
    "nap2": dict(nuisance_dims=2),
    "nap4": dict(nuisance_dims=4),
    "nap8": dict(nuisance_dims=8),
    "source_balanced": dict(imbalance="source_balanced"),
    "strong_c": dict(linear_probe_cs=(1e-5, 1e-4, 1e-3)),
}
#: The candidates of recipe "nap": how many within-class between-source directions to project out.
NAP_CANDIDATES = ("nap0", "nap2", "nap4", "nap8")
#: The candidates of recipe "auto" (and ``covnb train --preset auto``).
AUTO_CANDIDATES = ("top_probe", "top_probe_video_mirror", "midlevel_no_mirror", "midlevel")


def _check_choices(config: "TrainConfig") -> None:
    for name, choices in (("imbalance", IMBALANCE_CHOICES), ("train_unit", TRAIN_UNITS), ("solver", SOLVERS),
                          ("engine", ENGINES), ("distribute", DISTRIBUTE_CHOICES)):
        if getattr(config, name) not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {getattr(config, name)!r}")


def _check_combinations(config: "TrainConfig") -> None:
    if config.solver == "logistic" and (config.engine != "cached" or config.trainable != "head"
                                        or config.fine_tune_epochs):
        raise ValueError("solver='logistic' fits a linear head on cached features: engine='cached', trainable='head', "
                         "fine_tune_epochs=0 (use solver='keras' to fine-tune)")
    if config.engine == "cached" and config.trainable == "all":
        raise ValueError("trainable='all' cannot use cached features: use engine='plain'")
    if config.solver != "logistic" and (config.imbalance in SOURCE_WEIGHTINGS or config.nuisance_dims):
        raise ValueError("source-balanced weights and nuisance projection (imbalance='source_balanced'/'source_sqrt', "
                         "nuisance_dims) are implemented for the logistic head: solver='logistic'")
    if int(config.nuisance_dims) < 0:
        raise ValueError(f"nuisance_dims must be >= 0, got {config.nuisance_dims}")
    if int(config.epochs) < 1 or int(config.batch_size) < 1:
        raise ValueError("epochs and batch_size must be positive")


def _check_selection(config: "TrainConfig") -> None:
    unknown = sorted(set(config.select) - set(SELECTION_CANDIDATES))
    if unknown:
        raise ValueError(f"unknown selection candidates {unknown}; known: {sorted(SELECTION_CANDIDATES)}")
    if config.select and config.solver != "logistic":
        raise ValueError("select compares inner-CV scores of logistic heads: solver='logistic'")


def _check_head(config: "TrainConfig") -> None:
    augmentation_spec(config.augmentation)  # validates
    if config.head in POOLED_TAP_HEADS and config.engine == "cached" and (config.trainable != "head"
                                                                         or config.fine_tune_epochs > 0):
        raise ValueError(f"the {config.head!r} head pools layers before the backbone's last block, so the last block "
                         "cannot be fine-tuned on cached features: use head='gap' (or engine='plain')")


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the ``"midlevel"`` recipe.

    Build one with :func:`recipe_config` (a named recipe with overrides).
    """

    recipe: str = "midlevel"
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    alpha: float | None = None
    image_size: int = 224
    head: str = "midlevel"  # pooled taps (covnb.models.POOLED_TAP_HEADS) or "gap", "pocovid"
    dropout: float | None = None
    augmentation: Any = "default"  # None, "pocovid", "default" or a dict (covnb.models.AUGMENTATIONS)
    aug_views: int = 0  # cached engine: random augmented views precomputed per frame (plus the clean one)
    mirror_view: bool = True  # cached engine: one more view, the exact left-right mirror of each frame
    device_views: int = 0  # cached engine: views rendered as another device might (device_appearance)
    feature_pca: int = 0  # logistic head: fit on this many principal components of the standardised features (0: all)
    nuisance_dims: int = 0  # logistic head: project out this many within-class between-source directions (NAP)
    engine: str = "cached"  # "cached" (features computed once) or "plain" (keras fit through the backbone)
    trainable: str = "head"  # first stage: "head" or "last_block" (or "all", plain engine only)
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 8
    reduce_lr: bool = False  # ReduceLROnPlateau(factor 0.7, patience 7), as POCOVID-Net
    fine_tune_epochs: int = 0  # second stage: last block + head, from the first stage's weights
    fine_tune_learning_rate: float = 1e-4
    fine_tune_patience: int = 3
    imbalance: str = "class_weight"  # "none", "class_weight", "oversample"; "source_balanced"/"source_sqrt" (logistic)
    train_unit: str = "video"  # cached head: "frame" (one example per frame) or "video" (mean features per video)
    solver: str = "logistic"  # cached head: "keras" (Adam, early stopping) or "logistic" (scikit-learn, C by inner
    #                           CV; imbalance "class_weight" or "oversample" -> balanced class weights)
    validation_fraction: float = 0.2
    linear_probe_cs: tuple = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    select: tuple = ()  # names of SELECTION_CANDIDATES chosen between inside each training fold (nested CV)
    seed: int = 0
    distribute: str = "none"  # Keras heads / fine-tuning under a tf.distribute strategy: "mirrored" (this machine's
    #                           devices) or "multiworker" (machines named by $TF_CONFIG); the logistic head ignores it

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {self.recipe!r}; choose one of {RECIPES}")
        _check_choices(self)
        _check_combinations(self)
        self.linear_probe_cs = tuple(float(c) for c in self.linear_probe_cs)
        self.select = tuple(str(name) for name in self.select)
        _check_selection(self)
        _check_head(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Each recipe as overrides of the dataclass defaults (the "default" recipe).
_RECIPE_OVERRIDES: dict[str, dict[str, Any]] = {
    "pocovid": dict(head="pocovid", augmentation="pocovid", engine="plain", trainable="last_block", epochs=20,
                    batch_size=16, learning_rate=1e-4, patience=20, reduce_lr=True, fine_tune_epochs=0,
                    imbalance="none", dropout=0.5, aug_views=4, mirror_view=False, solver="keras",
                    train_unit="frame"),
    # The default: the mid-level recipe with 0, 2, 4 or 8 nuisance directions (NAP) chosen inside every
    # training fold by its inner CV (source-aware under source-held-out folds). Chosen on POCUS,
    # source-held-out, split seeds 10-14 (issue 13): video balanced accuracy 0.764 +- 0.012 against
    # 0.718 +- 0.029 for "midlevel", patient-grouped 0.793 against 0.788 (README).
    "default": dict(select=NAP_CANDIDATES),
    # The default until issue 13: middle layers, mirrored view, one example per video, no source step.
    "midlevel": dict(),
    "linear_probe": dict(head="gap", augmentation=None, aug_views=0, mirror_view=False, imbalance="class_weight",
                         dropout=0.0, solver="logistic", train_unit="frame"),
    "auto": dict(head="gap", augmentation="default", aug_views=0, mirror_view=False, imbalance="class_weight",
                 solver="logistic", train_unit="frame", select=AUTO_CANDIDATES),
    # The name the default had while it was an option (kept for scripts): the same settings.
    "nap": dict(select=NAP_CANDIDATES),
}

_DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


#: Modalities whose left-right mirror is not a plausible image: a mirrored chest radiograph or CT
#: slice puts the heart on the right. An ultrasound probe has no fixed left or right.
UNMIRRORABLE_MODALITIES = ("X-ray", "CT")


def mirror_is_plausible(samples: pd.DataFrame) -> bool:
    """Whether the default recipe's mirrored view suits these samples (no chest X-ray or CT among them).

    Measured on the chest X-ray / CT data (COVID-19 vs other, 3 split seeds): balanced accuracy
    0.645 without the mirrored view, 0.621 with it; on POCUS the mirror helps (0.780 -> 0.789).
    """
    if "modality" not in samples:
        return True
    modalities = {str(m).lower() for m in samples["modality"].dropna().unique()}
    return not modalities & {m.lower() for m in UNMIRRORABLE_MODALITIES}


def recipe_config(recipe: str = "default", **overrides) -> TrainConfig:
    """The settings of a recipe (:data:`RECIPES`), with overrides.

    The pooled-tap heads of the default recipe (``"midlevel"``, :data:`covnb.models.POOLED_TAP_HEADS`)
    need a frozen backbone with known taps: asking for fine-tuning (``fine_tune_epochs > 0`` or
    ``trainable="last_block"``), or a backbone without taps, without naming a head gives the "gap"
    head; fine-tuning also switches the default's logistic head to the Keras solver (Adam, early
    stopping) and, unless named, the training unit to frames.
    """
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; choose one of {RECIPES}")
    unknown = set(overrides) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown training settings {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    settings = {**_DEFAULTS, **_RECIPE_OVERRIDES[recipe], **overrides, "recipe": recipe}
    fine_tunes = int(settings["fine_tune_epochs"] or 0) > 0 or settings["trainable"] != "head"
    head = settings["head"]
    unknown_taps = head in POOLED_TAP_HEADS and settings["backbone"] not in POOLED_TAP_HEADS[head]
    if "head" not in overrides and head in POOLED_TAP_HEADS and (fine_tunes or unknown_taps):
        settings["head"] = "gap"
    if "solver" not in overrides and settings["solver"] == "logistic" and fine_tunes and recipe in _MIDLEVEL_RECIPES:
        settings["solver"] = "keras"  # fine-tuning needs the Keras head (Adam, early stopping on inner validation)
        if "train_unit" not in overrides:
            settings["train_unit"] = "frame"
    if "select" not in overrides and settings["select"] == NAP_CANDIDATES and (
            settings["solver"] != "logistic" or "nuisance_dims" in overrides):
        settings["select"] = ()  # a Keras head, or a number of directions given: nothing to choose
    return TrainConfig(**settings)


#: The recipes built on the mid-level head (the default and its variants).
_MIDLEVEL_RECIPES = ("default", "midlevel", "nap")


#: Settings that change only how the head is fitted, not the model or its cached features (NAP
#: directions, source weights, the C grid): candidates differing only in these share features.
FIT_TIME_SETTINGS = ("nuisance_dims", "imbalance", "linear_probe_cs")


def same_features(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs build the same model and features (they differ in fit-time settings only)."""
    return a == dataclasses.replace(b, **{name: getattr(a, name) for name in FIT_TIME_SETTINGS},
                                    recipe=a.recipe, select=a.select)


def needs_sources(config: TrainConfig) -> bool:
    """Whether fitting ``config``'s head needs the source of every example (NAP, source weights)."""
    return bool(config.nuisance_dims) or config.imbalance in SOURCE_WEIGHTINGS


def selection_configs(config: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """``(name, config)`` of every candidate of ``config.select`` (or ``config`` alone)."""
    if not config.select:
        return [(config.recipe, config)]
    # Candidates whose head needs taps this backbone lacks are left out.
    return [(name, dataclasses.replace(config, **SELECTION_CANDIDATES[name], select=())) for name in config.select
            if SELECTION_CANDIDATES[name].get("head") not in POOLED_TAP_HEADS
            or config.backbone in POOLED_TAP_HEADS[SELECTION_CANDIDATES[name]["head"]]]
