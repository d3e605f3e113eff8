"""Patient- or source-grouped cross-validation of a recipe, and the final model on all the data.

Every training fold is split again (:func:`covnb.splits.inner_validation`, never the test fold)
for early stopping and model selection; with ``config.select`` the candidate recipes are
compared by the inner CV of each training fold (nested selection: only the outer result counts).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

import keras

from covnb.cluster import in_fit_thread, map_with_payload, worker_cached
from covnb.experiments.features import recipe_features, recipe_model
from covnb.experiments.fitting import FoldData, fit_fold, predict_rows
from covnb.experiments.recipes import (GROUPINGS, SELECTION_CANDIDATES, TrainConfig, needs_sources, recipe_config,
                                      same_features, selection_configs)
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


def _seed_states(model: keras.Model) -> list:
    """The random-generator states of a model's layers (dropout, augmentation): variables that
    are not weights, advanced by every training step."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


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

    def __init__(self, frames: np.ndarray, config: TrainConfig, n_classes: int, log: Callable[[str], None] | None,
                 client=None):
        self.frames, self.n_classes = frames, n_classes
        self.entries, self.random_states = [], []
        for name, candidate in selection_configs(config):
            keras.utils.set_random_seed(candidate.seed)
            model = recipe_model(candidate, n_classes, candidate.seed)
            # candidates that differ only in how the head is fitted (NAP) share one features object
            shared = next((entry[4] for entry in self.entries if same_features(entry[1], candidate)), None)
            self.entries.append((name, candidate, model, model.get_weights(), shared if shared is not None
                                 else recipe_features(frames, candidate, model, log, client=client)))
            self.random_states.append([np.asarray(v.numpy()) for v in _seed_states(model)])

    @property
    def needs_frames(self) -> bool:
        """Whether fitting reads the frames themselves (a candidate without cached features)."""
        return any(features is None for _, _, _, _, features in self.entries)

    def parts(self) -> list[tuple]:
        """``(name, config, initial weights, features)`` of every candidate: what a Dask worker
        needs to rebuild them (:meth:`from_parts`) without the backbone's weights file."""
        return [(name, candidate, initial, features, states)
                for (name, candidate, _, initial, features), states in zip(self.entries, self.random_states)]

    @classmethod
    def from_parts(cls, frames: np.ndarray | None, n_classes: int, parts: list[tuple]) -> "RecipeCandidates":
        """Candidates from :meth:`parts`: each model built from its config (random weights, then
        the sent initial weights), its features as sent; nothing is computed or read from disk."""
        self = cls.__new__(cls)
        self.frames, self.n_classes, self.entries, self.random_states = frames, n_classes, [], []
        for name, candidate, initial, features, states in parts:
            keras.utils.set_random_seed(candidate.seed)
            model = recipe_model(dataclasses.replace(candidate, weights=None), n_classes, candidate.seed)
            model.set_weights(initial)
            self.entries.append((name, candidate, model, initial, features))
            self.random_states.append(states)
        return self

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
        usable = [(entry, states) for entry, states in zip(self.entries, self.random_states)
                  if sources is not None or not needs_sources(entry[1])]  # no sources: NAP 0 only
        if not usable:
            raise ValueError(f"every candidate of recipe {self.entries[0][1].recipe!r} needs the source of every "
                             "file (a 'source' column / Source ID), and this data has none")
        for entry, states in usable:
            name, candidate, model, initial, features = entry
            model.set_weights(initial)
            for variable, state in zip(_seed_states(model), states):
                variable.assign(state)  # dropout / augmentation draw as in a fresh model: folds independent
            data = FoldData.for_recipe(candidate, self.frames, labels, train_rows=train_rows,
                                       validation_rows=validation_rows, features=features, videos=videos,
                                       sources=sources)
            histories = fit_fold(model, data, candidate, groups, n_classes=self.n_classes, seed=seed,
                                 log=log if len(usable) == 1 else None, prefix=prefix)
            score = histories.get("linear_probe", [{}])[-1].get("inner_cv_balanced_accuracy", 0.0)
            if best is None or score > best[3]:
                best = (entry, data, histories, score)
            if len(usable) == 1:
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
                         positive_label: str = "covid", client=None) -> CVResult:
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
    client : distributed.Client, optional
        Run every (seed, fold) as a task on this Dask cluster (:mod:`covnb.cluster`); the frozen
        features are computed once, by the workers too (:func:`~covnb.experiments.features.features_on_cluster`),
        and sent to the fold tasks. Results are assembled in the serial order:
        the out-of-fold table is the same, byte for byte, as without a client.

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
    candidates = RecipeCandidates(frameset.frames, config, len(classes), log, client=client)
    jobs, protocol = _plan_folds(samples, sample_ids, groups, folds, config, seeds=seeds, group_by=group_by,
                                 n_folds=n_folds, positive_label=positive_label)
    shared = _FoldInputs(labels, sample_ids, selection_groups, frame_sources(index))
    if client is None:
        results = [_run_fold_here(candidates, shared, job, log, groups) for job in jobs]
    else:
        results = _run_folds_on_cluster(client, candidates, shared, jobs, log, groups)
    oof_parts, history_rows, fold_rows = [], [], []
    for job, (selected, probs, histories) in zip(jobs, results):
        oof_parts.append(_oof_part(index, job.test_rows, probs, classes, seed=job.seed, fold=job.fold,
                                   selected=selected if config.select else None))
        for stage, rows in histories.items():
            history_rows += [{"seed": job.seed, "fold": job.fold, "stage": stage, **row} for row in rows]
        for role, rows in (("train", job.train_rows), ("validation", job.validation_rows), ("test", job.test_rows)):
            fold_rows += [{"seed": job.seed, "fold": job.fold, "role": role, "sample_id": sample}
                          for sample in sorted(set(sample_ids[rows]))]
    fold_table = pd.DataFrame(fold_rows).merge(samples, on="sample_id", how="left")
    return CVResult(pd.concat(oof_parts, ignore_index=True), classes, config, pd.DataFrame(history_rows), fold_table,
                    time.perf_counter() - started, group_by, protocol)


class _FoldJob(NamedTuple):
    """One (split seed, fold) of a cross-validation: its rows and its training seed."""

    seed: int
    fold: int
    prefix: str
    train_rows: np.ndarray
    validation_rows: np.ndarray
    test_rows: np.ndarray
    fit_seed: int


class _FoldInputs(NamedTuple):
    """What every fold shares besides the candidates: labels, videos, inner-CV groups, sources."""

    labels: np.ndarray
    sample_ids: np.ndarray
    selection_groups: np.ndarray
    sources: np.ndarray | None = None


def _plan_folds(samples, sample_ids, groups, folds, config: TrainConfig, *, seeds, group_by: str, n_folds: int,
                positive_label: str) -> tuple[list[_FoldJob], dict]:
    """Every (seed, fold) in the serial order, with its rows; the split notes per seed."""
    jobs, protocol = [], {}
    for seed in seeds:
        fold_of, attrs = _fold_assignment(samples, folds, group_by=group_by, n_folds=n_folds, seed=seed,
                                          positive_label=positive_label)
        if attrs is not None:
            protocol[int(seed)] = attrs
        sample_fold = dict(zip(samples["sample_id"], fold_of))
        frame_fold = np.array([sample_fold[s] for s in sample_ids])
        n_made = len(set(fold_of))
        for fold in sorted(int(f) for f in set(fold_of)):
            train_rows, validation_rows, test_rows = _fold_rows(samples, fold_of, frame_fold, sample_ids, fold=fold,
                                                                seed=seed,
                                                                validation_fraction=config.validation_fraction)
            _check_disjoint(groups, train_rows, validation_rows, test_rows, seed, fold)
            jobs.append(_FoldJob(seed, fold, f"seed {seed} fold {fold + 1}/{n_made}", train_rows, validation_rows,
                                 test_rows, config.seed + 1000 * seed + fold))
    return jobs, protocol


def _fit_one(candidates: "RecipeCandidates", shared: _FoldInputs, job: _FoldJob, log):
    """Fit the recipe on one fold and predict its test rows: ``(selected name, probabilities, histories)``."""
    entry, data, histories = candidates.fit_best(shared.labels, job.train_rows, job.validation_rows,
                                                 videos=shared.sample_ids, groups=shared.selection_groups,
                                                 seed=job.fit_seed, log=log, prefix=job.prefix,
                                                 sources=shared.sources)
    return entry[0], candidates.predict(entry, data, job.test_rows), histories


def _run_fold_here(candidates, shared: _FoldInputs, job: _FoldJob, log, groups):
    fold_started = time.perf_counter()
    if log:
        _log_fold_sizes(log, job.prefix, groups, job.train_rows, job.validation_rows, job.test_rows)
    result = _fit_one(candidates, shared, job, log)
    if log:
        _log_fold_result(log, job.prefix, shared.labels, job.test_rows, result[1], fold_started)
    return result


def _fold_in_worker(payload: dict, job: _FoldJob):
    candidates = worker_cached(payload["token"], lambda: RecipeCandidates.from_parts(
        payload["frames"], payload["n_classes"], payload["parts"]), keep=2)
    started = time.perf_counter()
    selected, probs, histories = _fit_one(candidates, payload["shared"], job, None)
    return selected, probs, histories, time.perf_counter() - started


def _fold_task(payload: dict, job: _FoldJob):
    """A (seed, fold) on a Dask worker: the candidates are rebuilt once per worker and
    cross-validation (models from their configs, the sent initial weights, the sent features).

    Everything Keras does runs in one thread of the worker process, always the same: Keras keeps
    its global seed per thread (:func:`~covnb.experiments.fitting.fit_fold` seeds the thread that
    fits), and the worker's executor may hand a task any of its threads. The worker's event loop
    runs meanwhile: nothing of a fold may draw from a process-wide generator (Python's ``random``,
    NumPy's global state), which the loop shares -- the Keras head's batches come from the fold's
    own generator, Keras's shuffle is off (:func:`~covnb.experiments.fitting._fit_stage`).
    """
    return in_fit_thread(_fold_in_worker, payload, job)


def _run_folds_on_cluster(client, candidates, shared: _FoldInputs, jobs: list[_FoldJob], log, groups):
    """Every fold as a Dask task (the candidates' weights and features sent once); the
    results in the jobs' order, each fold logged as it finishes."""
    payload = {"frames": candidates.frames if candidates.needs_frames else None,
               "n_classes": candidates.n_classes, "parts": candidates.parts(), "shared": shared}
    started = time.perf_counter()

    def logged(position: int, result) -> None:
        job = jobs[position]
        _log_fold_sizes(log, job.prefix, groups, job.train_rows, job.validation_rows, job.test_rows)
        _log_fold_result(log, job.prefix, shared.labels, job.test_rows, result[1], time.perf_counter() - result[3])

    if log:
        log(f"cluster: {len(jobs)} fold task(s) submitted")
    results = map_with_payload(client, _fold_task, payload, [(job,) for job in jobs], name="covnb-fold",
                               payload_name="covnb-candidates", keys=[f"{job.seed}-{job.fold}" for job in jobs],
                               on_done=logged if log else None)
    if log:
        log(f"cluster: {len(jobs)} fold(s) in {time.perf_counter() - started:.0f} s")
    return [result[:3] for result in results]


def fit_final_model(frameset, config: TrainConfig | None = None, classes: list[str] | None = None, *,
                    log: Callable[[str], None] | None = print, group_by: str = "patient",
                    positive_label: str = "covid", client=None) -> tuple[keras.Model, dict]:
    """Fit ``config``'s recipe on all frames (an inner patient split for early stopping; with
    ``config.select`` the candidate with the best inner CV, grouped by ``group_by``, is kept).

    Returns ``(model, histories)``; the model takes raw RGB frames and returns probabilities.
    ``histories["selected"]`` names the chosen candidate and its settings when selecting.
    ``client``: a :class:`distributed.Client` (:mod:`covnb.cluster`) whose workers compute the
    frozen features the feature store does not hold yet (after a cross-validation of the same
    recipe and frames it holds them all); the one fit runs here. The model is the same as without.
    """
    config = config or recipe_config("default")
    index, classes, labels, groups, sample_ids, samples = encode_frames(frameset, classes)
    candidates = RecipeCandidates(frameset.frames, config, len(classes), log, client=client)
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
