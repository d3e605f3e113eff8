"""Backbone ensembles: the mean of several recipes' class probabilities (issue 13, section 4).

Models on different backbones see a new device differently; averaging their probabilities
(Lakshminarayanan et al., NeurIPS 2017; Dietterich 2000) evens out what one of them has learnt
of a source. :func:`average_oof` averages the out-of-fold predictions of cross-validations run
on the same folds; :func:`average_model` builds one Keras model (raw RGB in) that averages the
members' outputs, so a saved ensemble is used like any other covnb model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

KEYS = ("seed", "fold", "sample_id", "frame_index")


def average_oof(oofs: Sequence[pd.DataFrame], classes, weights: Sequence[float] | None = None) -> pd.DataFrame:
    """One out-of-fold table whose ``prob_<class>`` are the (weighted) mean of ``oofs``'s.

    Every table must hold the same rows (same seeds, folds, samples and frames: the members
    were cross-validated on the same folds); otherwise a ValueError says how they differ.
    """
    if not oofs:
        raise ValueError("no out-of-fold tables to average")
    classes = list(classes)
    columns = [f"prob_{c}" for c in classes]
    weights = np.ones(len(oofs)) if weights is None else np.asarray(weights, dtype=float)
    if len(weights) != len(oofs) or not (weights > 0).all():
        raise ValueError("one positive weight per member")
    base = oofs[0].sort_values(list(KEYS)).reset_index(drop=True)
    total = base[columns].to_numpy(dtype=float) * weights[0]
    for member, weight in zip(oofs[1:], weights[1:]):
        other = member.sort_values(list(KEYS)).reset_index(drop=True)
        if len(other) != len(base) or not (other[list(KEYS)].astype(str).to_numpy()
                                           == base[list(KEYS)].astype(str).to_numpy()).all():
            raise ValueError("the members' out-of-fold tables differ in their rows: cross-validate them on the same "
                             "folds, seeds and frames")
        total += other[columns].to_numpy(dtype=float) * weight
    averaged = base.copy()
    averaged[columns] = total / weights.sum()
    averaged["pred"] = np.asarray(classes)[averaged[columns].to_numpy().argmax(axis=1)]
    return averaged.drop(columns=[c for c in ("selected",) if c in averaged])


def average_model(models, name: str = "ensemble"):
    """A Keras model taking the members' common input (raw RGB frames) and returning the mean
    of their probabilities. Every member must take the same input shape."""
    import keras

    models = list(models)
    if not models:
        raise ValueError("no models to average")
    shape = tuple(models[0].input.shape[1:])
    for model in models[1:]:
        if tuple(model.input.shape[1:]) != shape:
            raise ValueError(f"members take different inputs: {shape} vs {tuple(model.input.shape[1:])}")
    inputs = keras.Input(shape, name="frames")
    outputs = [model(inputs) for model in models]
    averaged = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="mean_probabilities")(outputs)
    return keras.Model(inputs, averaged, name=name)
