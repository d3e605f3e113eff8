"""Scoring few-shot methods on episodes: accuracy with a 95% confidence interval, accuracy against K.

:func:`evaluate_episodes` / :func:`shot_curve`: >= 600 episodes, mean accuracy with a 95%
confidence interval (1.96 std / sqrt(n)); :func:`base_novel_split`: the base patients that
trainable parts are fitted on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from covnb.fewshot_episodes import EpisodeSampler, _patients_per_class, max_k

__all__ = ["evaluate_episodes", "accuracy_summary", "summarize_episodes", "shot_curve", "base_novel_split"]


def accuracy_summary(accuracies) -> dict:
    """Mean accuracy and its 95% confidence interval half-width 1.96 * std / sqrt(n)."""
    acc = np.asarray(accuracies, dtype=float)
    if acc.size == 0:
        raise ValueError("no episode accuracies to summarise")
    std = float(acc.std(ddof=1)) if acc.size > 1 else 0.0
    return {"mean": float(acc.mean()), "ci95": 1.96 * std / np.sqrt(acc.size), "std": std, "n_episodes": int(acc.size)}


class _LeaveEpisodeOutMean:
    """Mean of the pool without the episode's patients, from per-patient sums (fast)."""

    def __init__(self, x: np.ndarray, groups: np.ndarray):
        names, position = np.unique(groups, return_inverse=True)
        self.index = {g: i for i, g in enumerate(names)}
        self.sums = np.zeros((len(names), x.shape[1]))
        np.add.at(self.sums, position, x)
        self.counts = np.bincount(position, minlength=len(names)).astype(float)
        self.total, self.n = self.sums.sum(0), self.counts.sum()

    def __call__(self, episode_groups) -> np.ndarray:
        idx = np.array(sorted({self.index[g] for g in episode_groups}))
        remaining = self.n - self.counts[idx].sum()
        if remaining <= 0:
            return self.total / self.n
        return (self.total - self.sums[idx].sum(0)) / remaining


def _refuse_methods_trained_on(methods: dict, groups: np.ndarray) -> None:
    """A ValueError when a method was trained on patients of the episode pool."""
    pool_groups = set(np.asarray(groups, dtype=str).tolist())
    for name, method in methods.items():
        overlap = set(getattr(method, "trained_groups", frozenset())) & pool_groups
        if overlap:
            raise ValueError(f"method {name!r} was trained on {len(overlap)} patients of the episode pool "
                             f"(e.g. {sorted(overlap)[:3]}): evaluate it on held-out patients only")


def evaluate_episodes(x, labels, groups, methods: dict, *, n_way: int = 3, k_shot: int = 5, q_query: int = 2,
                      n_episodes: int = 600, seed: int = 0, base_mean: np.ndarray | None = None,
                      disjoint: str = "patient") -> pd.DataFrame:
    """Accuracy of every method on the same ``n_episodes`` episodes drawn from the pool.

    ``base_mean``: the SimpleShot centre fitted on base (training) patients; ``None`` uses, per
    episode, the mean of the pool's patients *not* in the episode (leave-episode-out), so no
    query item ever shapes its own normalisation. Methods that were trained on patients of the
    pool (``trained_groups``) are refused. Returns one row per (episode, method).
    """
    x = np.asarray(x, dtype=np.float64)
    groups = np.asarray(groups, dtype=str)
    _refuse_methods_trained_on(methods, groups)
    sampler = EpisodeSampler(labels, groups, n_way, k_shot, q_query, seed=seed, disjoint=disjoint)
    centre = _LeaveEpisodeOutMean(x, groups) if base_mean is None else None
    rows = []
    # Episodes are tiny: one BLAS/OpenMP thread avoids thread start-up and spinning on busy CPUs
    # (sklearn's k-NN is ~20x faster so on two shared cores).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for number, episode in enumerate(sampler.episodes(n_episodes)):
            mean = base_mean if centre is None else centre(np.concatenate([episode.support_groups,
                                                                           episode.query_groups]))
            support_x, query_x = x[episode.support_rows], x[episode.query_rows]
            for name, method in methods.items():
                predicted = method.predict(support_x, episode.support_labels, query_x, n_way, base_mean=mean)
                rows.append((number, name, float(np.mean(predicted == episode.query_labels))))
    table = pd.DataFrame(rows, columns=["episode", "method", "accuracy"])
    table.attrs.update(n_way=n_way, k_shot=k_shot, q_query=q_query, disjoint=disjoint)
    return table


def summarize_episodes(table: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy, 95% CI, std and episode count per method (rows in the methods' order)."""
    order = list(dict.fromkeys(table["method"]))
    summary = pd.DataFrame([{"method": m, **accuracy_summary(table.loc[table["method"] == m, "accuracy"])}
                            for m in order])
    return summary


def shot_curve(x, labels, groups, methods: dict, *, shots: Sequence[int] = (1, 2, 3, 5, 10), n_way: int = 3,
               q_query: int = 2, n_episodes: int = 600, seed: int = 0, base_mean=None,
               pool_name: str = "pool", client=None) -> tuple[pd.DataFrame, list[str]]:
    """Accuracy against K for every method; K values beyond :func:`max_k` are skipped with a note.

    The episodes of K are drawn with seed ``seed + K``. ``client``: a :class:`distributed.Client`
    (:mod:`covnb.cluster`) on whose workers every (K, method) cell runs as a task (each cell draws
    the same episodes from its own seeded sampler); the cells are gathered in the serial order, so
    the curve is the same, number for number, as without a client.

    Returns ``(curve, notes)``: curve rows method, k_shot, mean, ci95, std, n_episodes.
    """
    limit = max_k(labels, groups, q_query)
    counts = _patients_per_class(np.asarray(labels, dtype=str), np.asarray(groups, dtype=str))
    smallest = min(counts, key=counts.get)
    parts, notes = [], []
    feasible = [k for k in sorted({int(k) for k in shots}) if k <= limit]
    skipped = [k for k in sorted({int(k) for k in shots}) if k > limit]
    settings = dict(n_way=n_way, q_query=q_query, n_episodes=n_episodes, base_mean=base_mean)
    if client is None or not methods:
        tables = [evaluate_episodes(x, labels, groups, methods, k_shot=k, seed=seed + k, **settings)
                  for k in feasible]
    else:
        tables = _episode_cells_on_cluster(client, x, labels, groups, methods, shots=feasible, seed=seed,
                                           settings=settings)
    for k, table in zip(feasible, tables):
        summary = summarize_episodes(table)
        summary.insert(1, "k_shot", k)
        parts.append(summary)
    if skipped:
        notes.append(f"{pool_name}: K = {', '.join(map(str, skipped))} skipped: the smallest class "
                     f"{smallest!r} has {counts[smallest]} patients, and K support + Q={q_query} query "
                     f"patients must be distinct, so K <= {limit}.")
    curve = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["method", "k_shot", "mean", "ci95", "std", "n_episodes"])
    return curve, notes


def _episode_cell(payload, k_shot: int, name: str) -> pd.DataFrame:
    """On a worker: one (K, method) cell of :func:`shot_curve`, the episodes of seed ``seed + K``."""
    return evaluate_episodes(payload["x"], payload["labels"], payload["groups"], {name: payload["methods"][name]},
                             k_shot=k_shot, seed=payload["seed"] + k_shot, **payload["settings"])


def _episode_cells_on_cluster(client, x, labels, groups, methods: dict, *, shots, seed: int,
                              settings: dict) -> list[pd.DataFrame]:
    """Every (K, method) cell as a Dask task (embeddings and methods sent once); per K, the
    episode table of :func:`evaluate_episodes` with every method, rows in its order."""
    from covnb.cluster import map_with_payload

    _refuse_methods_trained_on(methods, np.asarray(groups, dtype=str))  # here, before any task
    payload = {"x": np.asarray(x), "labels": np.asarray(labels), "groups": np.asarray(groups), "methods": methods,
               "seed": int(seed), "settings": settings}
    cells = [(k, name) for k in shots for name in methods]
    results = dict(zip(cells, map_with_payload(client, _episode_cell, payload, cells, name="covnb-episodes",
                                               keys=[f"{k}-{position}" for position, (k, _) in enumerate(cells)])))
    tables = []
    for k in shots:
        per_method = [results[(k, name)] for name in methods]
        # the serial table: episode by episode, the methods in their order within each episode
        table = pd.concat(per_method, keys=range(len(per_method)), names=["_method", None]).reset_index(level=0)
        table = table.sort_values(["episode", "_method"], kind="stable").drop(columns="_method")
        table = table.reset_index(drop=True)
        table.attrs.update(per_method[0].attrs)
        tables.append(table)
    return tables


def base_novel_split(table: pd.DataFrame, base_fraction: float = 1 / 3, seed: int = 0) -> np.ndarray:
    """Boolean mask of *base* rows: a patient-grouped, label-stratified share of the patients.

    With only three classes (POCUS) there are no separate novel classes: trainable parts are
    fitted on the base patients and episodes are drawn from the other (held-out) patients.
    """
    from covnb.splits import patient_folds

    if not 0 < base_fraction < 1:
        raise ValueError(f"base_fraction must be in (0, 1), got {base_fraction}")
    smallest_class = int(table.groupby("label")["group"].nunique().min())
    n_splits = max(2, min(int(round(1 / base_fraction)), smallest_class))
    folds = patient_folds(table[["label", "group"]].reset_index(drop=True), n_splits=n_splits, seed=seed)
    return folds.to_numpy() == 0
