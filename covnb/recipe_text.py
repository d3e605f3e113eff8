"""Recipes in words, and the one rule for the class headline numbers are about.

Notebook 02 prints what sets each recipe apart (:func:`describe`); its log of a training run keeps
one line per fold (:func:`fold_log`).
"""

from __future__ import annotations

__all__ = ["HEADLINE_CLASS", "headline_class", "describe", "fold_log"]

#: The class the headline numbers (sensitivity, specificity, source-held-out folds) are about.
HEADLINE_CLASS = "covid"

_HEADS = {"gap": "top layer, average pool", "midlevel": "middle layers, average + max pools",
          "multiscale": "several layers, average pools", "pocovid": "POCOVID-Net head"}
_IMBALANCE = {"none": "no imbalance correction", "class_weight": "class weights", "oversample": "oversampling",
              "source_balanced": "every source of a class weighed the same",
              "source_sqrt": "sources of a class weighed by the square root of their size"}


def headline_class(classes) -> str:
    """``"covid"`` when it is one of ``classes``, else the first class in sorted order."""
    names = sorted(str(c) for c in classes)
    return HEADLINE_CLASS if HEADLINE_CLASS in names else names[0]


def describe(config) -> str:
    """The settings that tell a :class:`covnb.train.TrainConfig` apart from the other recipes, in one line."""
    parts = [_HEADS.get(config.head, config.head)]
    logistic = config.recipe == "linear_probe" or config.solver == "logistic"
    parts.append("logistic regression (C by inner patient CV)" if logistic
                 else f"Adam, up to {config.epochs} epochs, early stopping on an inner patient split")
    if config.train_unit == "video":
        parts.append("one example per video (mean feature)")
    if config.mirror_view:
        parts.append("a mirrored copy of every frame")
    if config.aug_views and config.augmentation:
        parts.append(f"{config.aug_views} random augmented view(s) per frame")
    elif not config.mirror_view:
        parts.append("no augmentation")
    parts.append(_IMBALANCE[config.imbalance])
    select = tuple(getattr(config, "select", ()))
    if select and all(name.startswith("nap") for name in select):
        parts.append(f"{' / '.join(name[3:] for name in select)} within-class between-source direction(s) "
                     "projected out (NAP), the number chosen inside every training fold by its inner CV")
    elif select:
        parts.append(f"one of {', '.join(select)} chosen inside every training fold by its inner CV")
    if getattr(config, "nuisance_dims", 0):
        parts.append(f"{config.nuisance_dims} within-class between-source direction(s) projected out (NAP)")
    if config.recipe == "pocovid":
        parts.append("every augmented batch through the backbone")
    elif config.fine_tune_epochs:
        parts.append(f"then the last block fine-tuned for up to {config.fine_tune_epochs} epochs")
    return ", ".join(parts)


def fold_log(message: str) -> None:
    """A compact training log: one line per test fold and per feature computation, no per-epoch lines."""
    if "test frame balanced accuracy" in message or message.startswith(("features:", "final model:", "baseline (", "--- ")):
        print(message)
