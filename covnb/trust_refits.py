"""Refitting every outer fold's head on its own training data, as the cross-validation fitted it.

Two uses in the trust step (:mod:`covnb.trust`): the fold heads kept with the model for fold
agreement (:func:`fold_heads`), and the inner refits of nested calibration
(:func:`inner_fold_predictions`): every outer fold's training patients split again, the head
refitted on all inner folds but one and predicting that one; the outer test fold is never touched.
Each refit uses the C (and, for a recipe that chooses, the candidate) its outer fold chose
(``training_history.csv``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

import keras

from covnb.cluster import in_fit_thread, map_with_payload, worker_cached
from covnb.experiments.crossval import encode_frames, frame_sources
from covnb.experiments.features import recipe_model
from covnb.experiments.fitting import FoldData, fit_fold, predict_rows
from covnb.experiments.recipes import FIT_TIME_SETTINGS, SELECTION_CANDIDATES

__all__ = ["INNER_FOLDS", "fold_heads", "inner_fold_predictions"]


def fold_heads(frameset, config, classes, folds: pd.DataFrame, *, history: pd.DataFrame, features: dict,
                model) -> tuple[np.ndarray, np.ndarray] | None:
    """Refit the linear head of every outer fold of the first split seed with the C its inner CV
    chose (``training_history.csv``): the same deterministic fit as in the cross-validation."""
    if config.solver != "logistic" or "C" not in history or not _refittable_selection(config, history):
        return None
    index, classes, labels, groups, sample_ids, _ = encode_frames(frameset, classes)
    seed = folds["seed"].iloc[0]
    kernels, biases = [], []
    of_seed = folds[folds["seed"] == seed]
    for fold in sorted(of_seed["fold"].unique()):
        roles = of_seed[of_seed["fold"] == fold].set_index("sample_id")["role"]
        role_of = roles.reindex(sample_ids).to_numpy()
        fold_config = _outer_fold_config(config, history, seed, fold)
        if fold_config is None:
            return None
        data = FoldData.for_recipe(fold_config, frameset.frames, labels, train_rows=np.nonzero(role_of == "train")[0],
                                   validation_rows=np.nonzero(role_of == "validation")[0], features=features,
                                   videos=sample_ids, sources=frame_sources(index))
        fit_fold(model, data, fold_config, groups, n_classes=len(classes),
                 seed=int(config.seed) + 1000 * int(seed) + int(fold), log=None)
        kernel, bias = model.get_layer("logits").get_weights()
        kernels.append(kernel)
        biases.append(bias)
    return np.stack(kernels).astype(np.float32), np.stack(biases).astype(np.float32)


INNER_FOLDS = 5


def inner_fold_predictions(frameset, config, classes, folds: pd.DataFrame, *, history: pd.DataFrame,
                           features: dict, model, n_inner: int = INNER_FOLDS, client=None) -> dict | None:
    """Out-of-fold frame predictions INSIDE every outer fold's training data, for nested calibration.

    For each split seed and outer fold: the training patients (roles train and validation in
    ``folds.csv``) are split into ``n_inner`` patient-grouped, label-stratified inner folds
    (scikit-learn ``StratifiedGroupKFold``, seeded by split seed and fold); the fold's head is
    refitted (the same recipe and the C its outer fold chose, ``training_history.csv``) on all
    inner folds but one and predicts that one. The outer test fold is never touched. Returns
    ``{(seed, fold): frame table (fold = inner fold, sample_id, group, label, prob_<class>)}``,
    or None when the recipe's head is not a refittable logistic head.

    ``client``: a :class:`distributed.Client` (:mod:`covnb.cluster`); every (seed, fold, inner
    fold) refit is then a Dask task (``model``'s weights and ``features`` sent once), gathered in
    the serial order with the same seeds: the tables are the same, byte for byte, as without it.
    """
    if config.solver != "logistic" or "C" not in history or not _refittable_selection(config, history):
        return None
    index, classes, labels, groups, sample_ids, _ = encode_frames(frameset, classes)
    units = _inner_units(config, classes, folds, history, labels, groups, sample_ids, n_inner)
    if units is None:
        return None
    shared = {"labels": labels, "groups": groups, "sample_ids": sample_ids, "n_classes": len(classes),
              "sources": frame_sources(index)}
    if client is None:
        probs = [_inner_refit(model, frameset.frames, features, shared, unit) for unit in units]
    else:
        probs = _inner_refits_on_cluster(client, config, model, features, shared, units)
    parts: dict[tuple, list[pd.DataFrame]] = {}
    for unit, unit_probs in zip(units, probs):
        part = index.iloc[unit.test_rows][["sample_id", "group", "label"]].copy()
        part.insert(0, "fold", unit.inner)
        for k, name in enumerate(classes):
            part[f"prob_{name}"] = unit_probs[:, k]
        parts.setdefault((unit.seed, unit.fold), []).append(part)
    return {key: pd.concat(tables, ignore_index=True) for key, tables in parts.items()}


@dataclasses.dataclass(frozen=True)
class _InnerUnit:
    """One inner refit: outer (seed, fold), inner fold, its recipe (the outer fold's C), rows and fit seed."""

    seed: object
    fold: object
    inner: int
    config: object
    fit_rows: np.ndarray
    test_rows: np.ndarray
    fit_seed: int


def _inner_units(config, classes, folds, history, labels, groups, sample_ids, n_inner) -> list[_InnerUnit] | None:
    """Every inner refit in the serial order (None when an outer fold has no chosen C)."""
    first_frame = pd.Series(np.arange(len(sample_ids))).groupby(sample_ids, sort=False).first()
    units = []
    for (seed, fold), of_fold in folds.groupby(["seed", "fold"]):
        fold_config = _outer_fold_config(config, history, seed, fold)
        if fold_config is None:
            return None
        training = sorted(set(of_fold.loc[of_fold["role"].isin(["train", "validation"]), "sample_id"]))
        rows_of = first_frame.reindex(training).to_numpy()
        video_labels, video_groups = labels[rows_of], groups[rows_of]
        # every inner fold should hold each class: at most as many folds as the rarest class has patients
        patients_per_class = pd.Series(video_groups).groupby(video_labels).nunique()
        n_splits = int(min(n_inner, patients_per_class.min())) if len(patients_per_class) == len(classes) else 0
        if n_splits < 2:
            continue
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(seed) * 100 + int(fold))
        for inner, (fit_videos, test_videos) in enumerate(splitter.split(rows_of, video_labels, video_groups)):
            units.append(_InnerUnit(
                seed, fold, inner, fold_config,
                fit_rows=np.nonzero(np.isin(sample_ids, np.asarray(training)[fit_videos]))[0],
                test_rows=np.nonzero(np.isin(sample_ids, np.asarray(training)[test_videos]))[0],
                fit_seed=int(config.seed) + 1000 * int(seed) + 100 * int(fold) + inner))
    return units


def _refittable_selection(config, history: pd.DataFrame) -> bool:
    """No selection, or one among candidates that differ only in fit-time settings, each outer fold's
    choice recorded in ``history`` (``selected``)."""
    if not config.select:
        return True
    same_features = all(set(SELECTION_CANDIDATES[name]) <= set(FIT_TIME_SETTINGS) for name in config.select)
    return same_features and "selected" in history and history["selected"].notna().all()


def _outer_fold_config(config, history: pd.DataFrame, seed, fold):
    """The recipe as the outer fold (seed, fold) fitted it: its chosen C and, when selecting, its
    chosen candidate (None when the history has no C for it)."""
    rows = history[(history["seed"] == seed) & (history["fold"] == fold)]
    c_values = rows["C"].dropna()
    if c_values.empty:
        return None
    fold_config = dataclasses.replace(config, linear_probe_cs=(float(c_values.iloc[0]),))
    if config.select:
        fold_config = dataclasses.replace(fold_config, **SELECTION_CANDIDATES[rows["selected"].iloc[0]], select=())
    return fold_config


def _inner_refit(model, frames, features: dict, shared: dict, unit: _InnerUnit) -> np.ndarray:
    """Refit ``model``'s head on ``unit``'s fit rows; its test rows' probabilities."""
    data = FoldData.for_recipe(unit.config, frames, shared["labels"], train_rows=unit.fit_rows,
                               validation_rows=np.zeros(0, dtype=int), features=features,
                               videos=shared["sample_ids"], sources=shared["sources"])
    fit_fold(model, data, unit.config, shared["groups"], n_classes=shared["n_classes"], seed=unit.fit_seed,
             log=None)
    return predict_rows(model, data, unit.test_rows, unit.config)


def _inner_in_worker(payload: dict, unit: _InnerUnit) -> np.ndarray:
    def build() -> keras.Model:
        config = payload["config"]
        keras.utils.set_random_seed(int(config.seed))
        model = recipe_model(dataclasses.replace(config, weights=None), payload["shared"]["n_classes"], config.seed)
        model.set_weights(payload["weights"])
        return model

    model = worker_cached(payload["token"], build, keep=2)
    return _inner_refit(model, None, payload["features"], payload["shared"], unit)


def _inner_task(payload: dict, unit: _InnerUnit) -> np.ndarray:
    """One inner refit on a Dask worker: the model rebuilt once per worker and trust step (from
    its config, the sent weights), fitted in the worker's one fit thread
    (:func:`covnb.cluster.in_fit_thread`: Keras seeds per thread)."""
    return in_fit_thread(_inner_in_worker, payload, unit)


def _inner_refits_on_cluster(client, config, model, features: dict, shared: dict,
                             units: list[_InnerUnit]) -> list[np.ndarray]:
    """Every inner refit as a Dask task (weights and cached features sent once); probabilities
    in the units' order."""
    payload = {"config": config, "weights": model.get_weights(), "features": features, "shared": shared}
    return map_with_payload(client, _inner_task, payload, [(unit,) for unit in units], name="covnb-inner",
                            keys=[f"{unit.seed}-{unit.fold}-{unit.inner}" for unit in units])
