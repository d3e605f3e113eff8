"""Patient- or source-grouped cross-validation of a recipe, and the final model on all the data.

Every training fold is split again (:func:`covnb.splits.inner_validation`, never the test fold)
for early stopping and model selection; with ``config.select`` the candidate recipes are
compared by the inner CV of each training fold (nested selection: only the outer result counts).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import pandas as pd

import keras

from covnb.experiments.features import recipe_features, recipe_model
from covnb.experiments.fitting import FoldData, fit_fold, predict_rows
from covnb.experiments.recipes import GROUPINGS, SELECTION_CANDIDATES, TrainConfig, recipe_config, selection_configs
from covnb.splits import cv_folds, inner_validation

__all__ = ["CVResult", "RecipeCandidates", "encode_frames", "frame_sources", "inner_cv_groups", "run_cross_validation",
           "fit_final_model"]


@dataclasses.dataclass
class CVResult:
    """Out-of-fold predictions (one row per frame, seed) and what produced them."""

    oof: pd.DataFrame  # seed, fold, sample_id, group, label, frame_index, prob_<class>..., pred
    classes: list[str]
    config: TrainConfig
    histories: pd.DataFrame  # seed, fold, stage, epoch, loss, val_loss, ...
    folds: pd.DataFrame  # seed, sample_id, group, label, fold, role counts
    seconds: float
    group_by: str = "patient"
    protocol: dict = dataclasses.field(default_factory=dict)  # per seed: protocol, held_out, notes of the split

    def summary(self, n_boot: int = 1000) -> dict:
        """Metrics at frame and video level (see :func:`covnb.evaluate.summarize_cv`)."""
        from covnb.evaluate import summarize_cv

        return summarize_cv(self.oof, self.classes, n_boot=n_boot)


def _split_samples(index: pd.DataFrame) -> pd.DataFrame:
    columns = ["sample_id", "group", "label"] + [c for c in ("source", "kind") if c in index]
    samples = index.drop_duplicates("sample_id")[columns].reset_index(drop=True)
    return samples


def encode_frames(frameset, classes=None):
    """Frame table, class list, integer labels, groups, sample ids and the per-sample table."""
    index = frameset.index.reset_index(drop=True)
    if len(index) == 0:
        raise ValueError("No frames to train on")
    classes = list(classes or sorted(index["label"].unique()))
    class_of = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_of[c] for c in np.asarray(index["label"], dtype=str)])
    groups = np.asarray(index["group"], dtype=str)
    sample_ids = np.asarray(index["sample_id"], dtype=str)
    return index, classes, labels, groups, sample_ids, _split_samples(index)


def inner_cv_groups(index: pd.DataFrame, group_by: str = "patient", positive_label: str = "covid") -> np.ndarray:
    """Groups of the inner CV that chooses C and candidates: patient groups, or with
    ``group_by="source"`` every source that sent ``positive_label`` files as one group (so the
    inner folds, like the outer ones, test positives of sources absent from their training)."""
    groups = np.asarray(index["group"], dtype=str)
    if group_by == "patient" or "source" not in index:
        return groups
    if group_by != "source":
        raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")
    sources = np.asarray(index["source"].fillna("unknown"), dtype=str)
    positive_sources = set(sources[np.asarray(index["label"], dtype=str) == positive_label])
    return np.where(np.isin(sources, list(positive_sources)), np.char.add("source:", sources), groups)


def frame_sources(index: pd.DataFrame) -> np.ndarray | None:
    """The source of every frame (``"unknown"`` where missing), or None without a ``source`` column."""
    if "source" not in index:
        return None
    return np.asarray(index["source"].fillna("unknown"), dtype=str)


class RecipeCandidates:
    """Models, initial weights and stored features (:func:`~covnb.experiments.features.recipe_features`)
    of each candidate of a recipe (``config`` alone unless ``config.select``), for ``frames``.

    The one way a recipe is fitted on a set of rows, by cross-validation, the final model and
    the few-shot learning curve alike: :meth:`fit_best`, then :meth:`predict`.
    """

    def __init__(self, frames: np.ndarray, config: TrainConfig, n_classes: int, log: Callable[[str], None] | None):
        self.frames, self.n_classes = frames, n_classes
        self.entries = []
        for name, candidate in selection_configs(config):
            keras.utils.set_random_seed(candidate.seed)
            model = recipe_model(candidate, n_classes, candidate.seed)
            self.entries.append((name, candidate, model, model.get_weights(),
                                 recipe_features(frames, candidate, model, log)))

    def fit_best(self, labels: np.ndarray, train_rows: np.ndarray, validation_rows: np.ndarray, *,
                 videos: np.ndarray, groups: np.ndarray, seed: int, log: Callable[[str], None] | None = None,
                 prefix: str = "", sources: np.ndarray | None = None):
        """Fit every candidate on ``train_rows`` (``validation_rows`` for early stopping; inner CV
        grouped by ``groups``); keep the one with the best inner-CV score. ``sources`` (per frame)
        serves recipes that weigh or project out sources.

        Returns ``(entry, data, histories)``: ``entry`` is ``(name, config, model, initial
        weights, features)``, ``data`` the :class:`FoldData` it was fitted on.
        """
        best = None
        for entry in self.entries:
            name, candidate, model, initial, features = entry
            model.set_weights(initial)
            data = FoldData.for_recipe(candidate, self.frames, labels, train_rows=train_rows,
                                       validation_rows=validation_rows, features=features, videos=videos,
                                       sources=sources)
            histories = fit_fold(model, data, candidate, groups, n_classes=self.n_classes, seed=seed,
                                 log=log if len(self.entries) == 1 else None, prefix=prefix)
            score = histories.get("linear_probe", [{}])[-1].get("inner_cv_balanced_accuracy", 0.0)
            if best is None or score > best[3]:
                best = (entry, data, histories, score)
            if len(self.entries) == 1:
                break
        entry, data, histories, score = best
        if len(self.entries) > 1:
            for stage in histories.values():
                for row in stage:
                    row["selected"] = entry[0]
            if log:
                log(f"{prefix}: selected {entry[0]} (inner CV video balanced accuracy {score:.3f})")
        return entry, data, histories

    @staticmethod
    def predict(entry, data: FoldData, rows: np.ndarray) -> np.ndarray:
        """Class probabilities of ``rows`` by a fitted ``entry`` (from :meth:`fit_best`)."""
        return predict_rows(entry[2], data, rows, entry[1])


def _fold_assignment(samples: pd.DataFrame, folds, *, group_by: str, n_folds: int, seed: int,
                     positive_label: str) -> tuple[np.ndarray, dict | None]:
    """The test fold of every sample (and the split's attributes), or the given ``folds``."""
    if folds is not None:
        fold_of = pd.Series(folds).reindex(samples["sample_id"]).to_numpy()
        if np.isnan(fold_of.astype(float)).any():
            raise ValueError("folds does not cover every sample_id")
        return fold_of.astype(int), None
    split = cv_folds(samples, group_by=group_by, n_splits=n_folds, seed=seed, positive_label=positive_label)
    return split.to_numpy(), dict(split.attrs)


def _fold_rows(samples: pd.DataFrame, fold_of: np.ndarray, frame_fold: np.ndarray, sample_ids: np.ndarray, *,
               fold: int, seed: int, validation_fraction: float):
    """Frame rows of the training, inner-validation and test parts of one fold."""
    train_samples = samples[fold_of != fold].reset_index(drop=True)
    validation_mask = inner_validation(train_samples, validation_fraction, seed=seed * 100 + fold)
    validation_ids = set(train_samples.loc[validation_mask.to_numpy(), "sample_id"])
    test_rows = np.nonzero(frame_fold == fold)[0]
    in_train = frame_fold != fold
    is_validation = np.array([s in validation_ids for s in sample_ids])
    return np.nonzero(in_train & ~is_validation)[0], np.nonzero(in_train & is_validation)[0], test_rows


def _check_disjoint(groups, train_rows, validation_rows, test_rows, seed, fold):
    train_g, validation_g, test_g = set(groups[train_rows]), set(groups[validation_rows]), set(groups[test_rows])
    if train_g & test_g or validation_g & test_g or train_g & validation_g:
        raise AssertionError(f"seed {seed} fold {fold}: patient groups shared between train/validation/test")


def _oof_part(index: pd.DataFrame, test_rows: np.ndarray, probs: np.ndarray, classes, *, seed: int, fold: int,
              selected: str | None) -> pd.DataFrame:
    part = index.iloc[test_rows][["sample_id", "group", "label", "frame_index"]].copy()
    for column in ("source", "kind"):
        if column in index:
            part[column] = index[column].to_numpy()[test_rows]
    part.insert(0, "fold", fold)
    part.insert(0, "seed", seed)
    for k, class_name in enumerate(classes):
        part[f"prob_{class_name}"] = probs[:, k]
    part["pred"] = np.asarray(classes)[probs.argmax(axis=1)]
    if selected is not None:
        part["selected"] = selected
    return part


def _log_fold_sizes(log, prefix, groups, train_rows, validation_rows, test_rows):
    log(f"{prefix}: train {len(train_rows)} frames ({len(set(groups[train_rows]))} patients), "
        f"validation {len(validation_rows)} ({len(set(groups[validation_rows]))}), "
        f"test {len(test_rows)} ({len(set(groups[test_rows]))})")


def _log_fold_result(log, prefix, labels, test_rows, probs, fold_started):
    from sklearn.metrics import balanced_accuracy_score

    frame_bacc = balanced_accuracy_score(labels[test_rows], probs.argmax(axis=1))
    log(f"{prefix}: test frame balanced accuracy {frame_bacc:.3f} ({time.perf_counter() - fold_started:.0f} s)")


def run_cross_validation(frameset, config: TrainConfig | None = None, *, n_folds: int = 5, seeds=(0,),
                         folds: pd.Series | None = None, log: Callable[[str], None] | None = print,
                         classes: list[str] | None = None, group_by: str = "patient",
                         positive_label: str = "covid") -> CVResult:
    """Grouped stratified K-fold CV of a recipe on a :class:`covnb.frames.FrameSet`.

    For each split seed: folds by patient group (:func:`covnb.splits.patient_folds`) or, with
    ``group_by="source"``, source-held-out folds (:func:`covnb.splits.source_held_out_folds`);
    inside each training fold an inner split (never the test fold; grouped the same way) serves
    early stopping and model selection -- C, and with ``config.select`` the candidate recipe
    (nested CV: only the outer result is reported). Frozen features are computed once.

    Parameters
    ----------
    frameset : covnb.frames.FrameSet
        Frames and their index (``sample_id``, ``group``, ``label``; ``source``, ``kind`` if known).
    config : TrainConfig, optional
        The recipe (default: ``recipe_config("default")``).
    n_folds : int
        Outer folds per split seed.
    seeds : sequence of int
        Split seeds; each gives a full K-fold split.
    folds : pandas.Series, optional
        Fold per ``sample_id`` (indexed by sample_id): overrides the split, for a single seed.
    log : callable or None
        Receives one progress line at a time (None: silent).
    classes : list of str, optional
        Class order of the probability columns (default: the sorted labels).
    group_by : {"patient", "source"}
        Patient-grouped folds, or source-held-out folds for ``positive_label``.
    positive_label : str
        The class whose sources are held out under ``group_by="source"``.

    Returns
    -------
    CVResult
        ``oof`` (one row per test frame and seed: probabilities and prediction), ``histories``,
        ``folds`` (the role of every sample in every fold), the split notes (``protocol``).

    Example
    -------
    >>> cv = run_cross_validation(frameset, recipe_config("linear_probe"), n_folds=3, log=None)
    >>> cv.summary(n_boot=0)["video_mean"]["pooled_mean"]["balanced_accuracy"]  # doctest: +SKIP
    """
    config = config or recipe_config("default")
    started = time.perf_counter()
    index, classes, labels, groups, sample_ids, samples = encode_frames(frameset, classes)
    selection_groups = inner_cv_groups(index, group_by, positive_label)
    candidates = RecipeCandidates(frameset.frames, config, len(classes), log)
    oof_parts, history_rows, fold_rows, protocol = [], [], [], {}
    for seed in seeds:
        fold_of, attrs = _fold_assignment(samples, folds, group_by=group_by, n_folds=n_folds, seed=seed,
                                          positive_label=positive_label)
        if attrs is not None:
            protocol[int(seed)] = attrs
        sample_fold = dict(zip(samples["sample_id"], fold_of))
        frame_fold = np.array([sample_fold[s] for s in sample_ids])
        n_made = len(set(fold_of))
        for fold in sorted(int(f) for f in set(fold_of)):
            fold_started = time.perf_counter()
            train_rows, validation_rows, test_rows = _fold_rows(samples, fold_of, frame_fold, sample_ids, fold=fold,
                                                                seed=seed,
                                                                validation_fraction=config.validation_fraction)
            _check_disjoint(groups, train_rows, validation_rows, test_rows, seed, fold)
            prefix = f"seed {seed} fold {fold + 1}/{n_made}"
            if log:
                _log_fold_sizes(log, prefix, groups, train_rows, validation_rows, test_rows)
            entry, data, histories = candidates.fit_best(labels, train_rows, validation_rows, videos=sample_ids,
                                                         groups=selection_groups,
                                                         seed=config.seed + 1000 * seed + fold, log=log,
                                                         prefix=prefix, sources=frame_sources(index))
            probs = candidates.predict(entry, data, test_rows)
            oof_parts.append(_oof_part(index, test_rows, probs, classes, seed=seed, fold=fold,
                                       selected=entry[0] if config.select else None))
            for stage, rows in histories.items():
                history_rows += [{"seed": seed, "fold": fold, "stage": stage, **row} for row in rows]
            for role, rows in (("train", train_rows), ("validation", validation_rows), ("test", test_rows)):
                fold_rows += [{"seed": seed, "fold": fold, "role": role, "sample_id": sample}
                              for sample in sorted(set(sample_ids[rows]))]
            if log:
                _log_fold_result(log, prefix, labels, test_rows, probs, fold_started)
    fold_table = pd.DataFrame(fold_rows).merge(samples, on="sample_id", how="left")
    return CVResult(pd.concat(oof_parts, ignore_index=True), classes, config, pd.DataFrame(history_rows), fold_table,
                    time.perf_counter() - started, group_by, protocol)


def fit_final_model(frameset, config: TrainConfig | None = None, classes: list[str] | None = None, *,
                    log: Callable[[str], None] | None = print, group_by: str = "patient",
                    positive_label: str = "covid") -> tuple[keras.Model, dict]:
    """Fit ``config``'s recipe on all frames (an inner patient split for early stopping; with
    ``config.select`` the candidate with the best inner CV, grouped by ``group_by``, is kept).

    Returns ``(model, histories)``; the model takes raw RGB frames and returns probabilities.
    ``histories["selected"]`` names the chosen candidate and its settings when selecting.
    """
    config = config or recipe_config("default")
    index, classes, labels, groups, sample_ids, samples = encode_frames(frameset, classes)
    candidates = RecipeCandidates(frameset.frames, config, len(classes), log)
    validation_mask = inner_validation(samples, config.validation_fraction, seed=config.seed)
    validation_ids = set(samples.loc[validation_mask.to_numpy(), "sample_id"])
    is_validation = np.array([s in validation_ids for s in sample_ids])
    if log:
        log(f"final model: train {int((~is_validation).sum())} frames, validation {int(is_validation.sum())} frames")
    (name, _, model, _, _), _, histories = candidates.fit_best(
        labels, np.nonzero(~is_validation)[0], np.nonzero(is_validation)[0], videos=sample_ids,
        groups=inner_cv_groups(index, group_by, positive_label), seed=config.seed, log=log, prefix="final",
        sources=frame_sources(index))
    if config.select:
        histories = {**histories, "selected": [{"candidate": name, **SELECTION_CANDIDATES[name]}]}
    return model, histories
