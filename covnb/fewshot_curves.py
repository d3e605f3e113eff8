"""How many patients does a model need: learning curves over patients, and transfer across modalities.

:func:`patient_learning_curve`: a trained recipe's balanced accuracy when only ``n`` COVID-19
patients are available for training; :func:`cross_domain_evaluation`: prototypes of one
modality applied to the other.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from covnb.fewshot_episodes import max_k
from covnb.fewshot_evaluation import accuracy_summary, evaluate_episodes
from covnb.fewshot_methods import SimpleShot, _nearest, _prototypes, simpleshot_normalize

__all__ = ["patient_learning_curve", "cross_domain_evaluation"]


def _frame_rows_by_sample(index: pd.DataFrame) -> dict[str, np.ndarray]:
    ids = np.asarray(index["sample_id"], dtype=str)
    return {s: np.nonzero(ids == s)[0] for s in dict.fromkeys(ids)}


class _LearningUnit(NamedTuple):
    """One point of one repeat of a learning curve: its training samples and its test fold."""

    fold: int
    n: int
    repeat: int
    kept: pd.DataFrame  # training samples (sample_id, label, group)
    test_rows: np.ndarray  # frame rows of the test fold
    test_ids: np.ndarray  # their sample ids
    test_samples: np.ndarray  # the test fold's sample ids, in order
    truth: np.ndarray  # their class numbers


def patient_learning_curve(index: pd.DataFrame, n_patients: Sequence[int], *, embeddings: np.ndarray | None = None,
                           frames: np.ndarray | None = None, recipe: str = "embedding_logreg",
                           positive_label: str = "covid", n_splits: int = 3, repeats: int = 2, seed: int = 0,
                           train_config=None, logreg_c: float = 0.1,
                           log: Callable[[str], None] | None = None, client=None) -> tuple[pd.DataFrame, list[str]]:
    """Balanced accuracy of a trained recipe when only ``n`` positive (COVID-19) patients train it.

    Patient-grouped stratified folds (:func:`covnb.splits.patient_folds`): in each training fold
    keep every patient of the other classes and ``n`` randomly chosen ``positive_label``
    patients (``repeats`` draws); score the untouched test fold at video level (mean of frame
    probabilities per sample), balanced accuracy over all classes. Every (fold, n, repeat) draws
    from its own generator, seeded ``[seed, fold, n, repeat]``.

    ``recipe="embedding_logreg"``: standardised, class-weighted logistic regression on frozen
    frame ``embeddings`` (fast). ``recipe`` "default" or "linear_probe": the covnb.train recipe
    (:class:`covnb.experiments.crossval.RecipeCandidates`, the frozen-feature store and fold data
    of cross-validation) on raw ``frames``, per video when the recipe says so; its inner
    validation split takes patients of the other classes, and positive patients only when n >= 3.
    ``client``: a :class:`distributed.Client` (:mod:`covnb.cluster`): the recipe's frozen features
    are computed by its workers, and every (fold, n, repeat) is fitted and scored as a task; the
    rows are gathered in the serial order, the same numbers as without a client.
    Returns ``(rows, notes)``; rows: recipe, fold, repeat, n_patients, balanced_accuracy.
    """
    from covnb.splits import patient_folds

    index = index.reset_index(drop=True)
    samples = index.drop_duplicates("sample_id")[["sample_id", "label", "group"]].reset_index(drop=True)
    classes = sorted(samples["label"].unique())
    if positive_label not in classes:
        raise ValueError(f"positive_label {positive_label!r} is not a label of the data ({', '.join(classes)})")
    class_of = {c: i for i, c in enumerate(classes)}
    frame_labels = np.array([class_of[c] for c in np.asarray(index["label"], dtype=str)])
    folds = patient_folds(samples, n_splits=n_splits, seed=seed).to_numpy()
    fit_predict, payload = _learning_curve_fitter(recipe, index, frame_labels, classes, embeddings, frames,
                                                  train_config, logreg_c, log, positive_label=positive_label,
                                                  client=client)
    units, too_many = _learning_units(index, samples, folds, class_of, n_patients, n_splits=n_splits,
                                      repeats=repeats, seed=seed, positive_label=positive_label)
    if client is None:
        scores = [_score_unit(fit_predict, unit, seed) for unit in units]
    else:
        scores = _units_on_cluster(client, payload, units, seed)
    results = [{"recipe": recipe, "fold": unit.fold, "repeat": unit.repeat, "n_patients": unit.n,
                "balanced_accuracy": score} for unit, score in zip(units, scores)]
    notes = []
    for n in sorted({n for n, _ in too_many}):
        held = sorted({m for k, m in too_many if k == n})
        notes.append(f"learning curve: n = {n} skipped in training folds that hold only "
                     f"{'/'.join(map(str, held))} {positive_label} patients.")
    return pd.DataFrame(results, columns=["recipe", "fold", "repeat", "n_patients", "balanced_accuracy"]), notes


def _learning_units(index: pd.DataFrame, samples: pd.DataFrame, folds: np.ndarray, class_of: dict, n_patients, *,
                    n_splits: int, repeats: int, seed: int, positive_label: str) -> tuple[list[_LearningUnit], set]:
    """Every (fold, n, repeat) of a learning curve in the serial order, its ``n`` positive patients
    drawn with ``default_rng([seed, fold, n, repeat])``; the (n, available) pairs skipped."""
    rows_of = _frame_rows_by_sample(index)
    units, too_many = [], set()
    for fold in range(n_splits):
        train_samples = samples[folds != fold]
        test_samples = samples[folds == fold]
        positive_patients = np.array(sorted(set(train_samples.loc[train_samples["label"] == positive_label, "group"])))
        others = train_samples[train_samples["label"] != positive_label]
        test_rows = np.concatenate([rows_of[s] for s in test_samples["sample_id"]])
        test_ids = np.asarray(index["sample_id"], dtype=str)[test_rows]
        truth = np.array([class_of[c] for c in test_samples["label"]])
        for n in n_patients:
            n = int(n)
            if n > len(positive_patients):
                too_many.add((n, len(positive_patients)))
                continue
            for repeat in range(repeats):
                rng = np.random.default_rng([seed, fold, n, repeat])
                chosen = set(rng.choice(positive_patients, n, replace=False).tolist())
                # A chosen patient's other-class samples stay; unchosen positive patients leave entirely.
                excluded = set(positive_patients.tolist()) - chosen
                kept = pd.concat([others[~others["group"].isin(excluded)],
                                  train_samples[(train_samples["label"] == positive_label)
                                                & train_samples["group"].isin(chosen)]])
                units.append(_LearningUnit(fold, n, repeat, kept, test_rows, test_ids,
                                           test_samples["sample_id"].to_numpy(), truth))
    return units, too_many


def _score_unit(fit_predict, unit: _LearningUnit, seed: int) -> float:
    """Fit on the unit's training samples (generator ``[seed, fold, n, repeat, 1]``), predict its
    test fold, average frame probabilities per sample: the balanced accuracy of the videos."""
    from sklearn.metrics import balanced_accuracy_score

    probs = fit_predict(unit.kept, unit.test_rows, np.random.default_rng([seed, unit.fold, unit.n, unit.repeat, 1]))
    per_sample = pd.DataFrame(probs).groupby(unit.test_ids, sort=False).mean()
    predicted = per_sample.reindex(unit.test_samples).to_numpy().argmax(axis=1)
    return float(balanced_accuracy_score(unit.truth, predicted))


def _unit_in_worker(payload: dict, unit: _LearningUnit, seed: int) -> float:
    from covnb.cluster import worker_cached

    return _score_unit(worker_cached(payload["token"], lambda: _fitter_from_payload(payload)), unit, seed)


def _unit_task(payload: dict, unit: _LearningUnit, seed: int) -> float:
    """A (fold, n, repeat) on a Dask worker, in the worker's one fitting thread
    (:func:`covnb.cluster.in_fit_thread`: Keras seeds per thread)."""
    from covnb.cluster import in_fit_thread

    return in_fit_thread(_unit_in_worker, payload, unit, seed)


def _units_on_cluster(client, payload: dict, units: list[_LearningUnit], seed: int) -> list[float]:
    """Every unit as a Dask task (the fitter's embeddings or weights and features sent once), in order."""
    from covnb.cluster import map_with_payload

    return map_with_payload(client, _unit_task, payload, [(unit, seed) for unit in units], name="covnb-learning",
                            keys=[f"{unit.fold}-{unit.n}-{unit.repeat}" for unit in units])


def _learning_curve_fitter(recipe, index, frame_labels, classes, embeddings, frames, train_config, logreg_c, log,
                           *, positive_label: str, client=None):
    """``(fit_predict, payload)``: ``fit_predict(train_samples, test_rows, rng) -> (len(test_rows),
    n_classes) probabilities``, and what a Dask worker rebuilds it from (:func:`_fitter_from_payload`)."""
    shared = {"recipe": recipe, "index": index, "frame_labels": frame_labels, "n_classes": len(classes)}
    if recipe == "embedding_logreg":
        if embeddings is None:
            raise ValueError("recipe 'embedding_logreg' needs the frame embeddings (embeddings=...)")
        payload = {**shared, "x": np.asarray(embeddings, np.float32), "logreg_c": logreg_c}
        return _fitter_from_payload(payload), payload
    if recipe not in ("default", "linear_probe"):
        raise ValueError(f"recipe must be 'embedding_logreg', 'default' or 'linear_probe', not {recipe!r}")
    if frames is None:
        raise ValueError(f"recipe {recipe!r} trains through covnb.train and needs the frames (frames=...)")
    from covnb.experiments.crossval import RecipeCandidates
    from covnb.experiments.recipes import recipe_config

    config = train_config or recipe_config(recipe)
    if config.engine != "cached" or config.trainable != "head" or config.fine_tune_epochs:
        raise ValueError("the learning curve trains recipes on cached features: engine='cached', "
                         "trainable='head', fine_tune_epochs=0")
    # The same models and stored features as covnb.train's cross-validation; every fit goes
    # through RecipeCandidates.fit_best, whose FoldData carries the recipe's training unit.
    candidates = RecipeCandidates(frames, config, len(classes), log, client=client)
    payload = {**shared, "config": config, "positive_label": positive_label, "parts": candidates.parts(),
               "frames": frames if candidates.needs_frames else None}
    return _recipe_fitter(candidates, payload), payload


def _fitter_from_payload(payload: dict):
    """The ``fit_predict`` of :func:`_learning_curve_fitter` from its payload (on a worker: the
    recipe's candidates rebuilt from their sent weights and features)."""
    if payload["recipe"] == "embedding_logreg":
        return _logreg_fitter(payload)
    from covnb.experiments.crossval import RecipeCandidates

    return _recipe_fitter(RecipeCandidates.from_parts(payload["frames"], payload["n_classes"], payload["parts"]),
                          payload)


def _logreg_fitter(payload: dict):
    """Standardised, class-weighted logistic regression on the frame embeddings ``payload["x"]``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows_of = _frame_rows_by_sample(payload["index"])
    x, frame_labels, n_classes = payload["x"], payload["frame_labels"], payload["n_classes"]

    def fit_predict(kept, test_rows, rng):
        rows = np.concatenate([rows_of[s] for s in kept["sample_id"]])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=payload["logreg_c"], class_weight="balanced",
                                                                   max_iter=2000))
        model.fit(x[rows], frame_labels[rows])
        probs = np.zeros((len(test_rows), n_classes))
        probs[:, model.classes_] = model.predict_proba(x[test_rows])
        return probs

    return fit_predict


def _recipe_fitter(candidates, payload: dict):
    """The recipe of ``payload["config"]`` fitted through ``candidates.fit_best`` on the kept samples."""
    index, config, positive_label = payload["index"], payload["config"], payload["positive_label"]
    rows_of = _frame_rows_by_sample(index)
    frame_labels = payload["frame_labels"]
    groups = np.asarray(index["group"], dtype=str)
    videos = np.asarray(index["sample_id"], dtype=str)  # the recipe's training unit may be the video

    def fit_predict(kept, test_rows, rng):
        from covnb.splits import inner_validation

        kept = kept.reset_index(drop=True)
        positives = kept["label"] == positive_label
        candidates_for_validation = (kept if positives.sum() and kept.loc[positives, "group"].nunique() >= 3
                                     else kept[~positives]).reset_index(drop=True)
        mask = inner_validation(candidates_for_validation, config.validation_fraction,
                                seed=int(rng.integers(1 << 30)))
        # in the table's order (a set's order of strings changes with the process's hash seed)
        validation_ids = list(candidates_for_validation.loc[mask.to_numpy(), "sample_id"])
        held_out = set(validation_ids)
        fit_ids = [s for s in kept["sample_id"] if s not in held_out]
        entry, data, _ = candidates.fit_best(frame_labels, np.concatenate([rows_of[s] for s in fit_ids]),
                                             np.concatenate([rows_of[s] for s in validation_ids]), videos=videos,
                                             groups=groups, seed=int(rng.integers(1 << 30)), log=None)
        return candidates.predict(entry, data, test_rows)

    return fit_predict


# ============================================================================ cross-domain


def cross_domain_evaluation(source_x, source_labels, target_x, target_labels, *, target_groups,
                            source_name: str = "source", target_name: str = "target", positive_label: str = "covid",
                            k_shot: int = 5, q_query: int = 2, n_episodes: int = 600, seed: int = 0) -> pd.DataFrame:
    """Prototypes (class means) of one modality applied to the other, next to in-domain few-shot.

    Labels become ``positive_label`` vs "other" on both sides. Rows: "transfer, source-centred"
    (source prototypes, source mean: nothing from the target), "transfer, target-centred"
    (the unlabelled target mean re-centres both sides), and "in-domain K-shot SimpleShot" on
    target episodes (patient-disjoint, leave-episode-out mean) when the target allows K.
    """
    from sklearn.metrics import balanced_accuracy_score

    def binary(labels):
        return np.where(np.asarray(labels, dtype=str) == positive_label, positive_label, "other")

    source_y, target_y = binary(source_labels), binary(target_labels)
    for name, y in ((source_name, source_y), (target_name, target_y)):
        if len(set(y)) < 2:
            raise ValueError(f"{name}: cross-domain evaluation needs both {positive_label!r} and other samples")
    classes = [positive_label, "other"]
    source_x, target_x = np.asarray(source_x, np.float64), np.asarray(target_x, np.float64)
    if source_x.shape[1] != target_x.shape[1]:
        raise ValueError(f"embedding sizes differ ({source_x.shape[1]} vs {target_x.shape[1]}): use one backbone")
    truth = np.array([classes.index(c) for c in target_y])
    source_index = np.array([classes.index(c) for c in source_y])
    rows = []
    for centring, source_mean, target_mean in (("source-centred", source_x.mean(0), source_x.mean(0)),
                                               ("target-centred", source_x.mean(0), target_x.mean(0))):
        protos = _prototypes(simpleshot_normalize(source_x, source_mean), source_index, 2)
        predicted = _nearest(simpleshot_normalize(target_x, target_mean), protos)
        rows.append({"direction": f"{source_name} -> {target_name}", "protocol": f"transfer, {centring}",
                     "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)), "ci95": np.nan,
                     "n_target": len(truth)})
    limit = max_k(target_y, target_groups, q_query)
    k = min(int(k_shot), limit)
    if k >= 1:
        table = evaluate_episodes(target_x, target_y, target_groups, {"simpleshot": SimpleShot()}, n_way=2, k_shot=k,
                                  q_query=q_query, n_episodes=n_episodes, seed=seed)
        summary = accuracy_summary(table["accuracy"])
        rows.append({"direction": f"{target_name} -> {target_name}", "protocol": f"in-domain {k}-shot SimpleShot",
                     "balanced_accuracy": summary["mean"], "ci95": summary["ci95"], "n_target": len(truth)})
    return pd.DataFrame(rows)
