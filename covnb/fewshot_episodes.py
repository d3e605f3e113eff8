"""N-way K-shot Q-query episodes, seeded, support and query disjoint by patient.

:class:`EpisodeSampler` draws the episodes (classes without replacement); :func:`max_k` says how
far the K curve can go on a pool.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import pandas as pd

__all__ = ["Episode", "EpisodeSampler", "max_k"]


@dataclasses.dataclass
class Episode:
    """One N-way K-shot Q-query episode: rows of the pool and episode-local labels 0..N-1."""

    classes: list[str]
    support_rows: np.ndarray
    support_labels: np.ndarray
    query_rows: np.ndarray
    query_labels: np.ndarray
    support_groups: np.ndarray
    query_groups: np.ndarray


def _patients_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    table = pd.DataFrame({"label": labels, "group": groups})
    return {str(k): int(v) for k, v in table.groupby("label")["group"].nunique().items()}


def max_k(labels, groups, q_query: int, disjoint: str = "patient") -> int:
    """Largest K for which every class has K + Q disjoint patients (items if ``disjoint="item"``).

    0 or less means not even 1-shot episodes can be drawn.
    """
    labels = np.asarray(labels, dtype=str)
    if disjoint == "item":
        counts = pd.Series(labels).value_counts()
        return int(counts.min()) - int(q_query)
    return min(_patients_per_class(labels, np.asarray(groups, dtype=str)).values()) - int(q_query)



def _check_episode_shape(labels: np.ndarray, groups: np.ndarray, n_way, k_shot, q_query, disjoint: str) -> None:
    """Aligned 1-D labels and groups, a known ``disjoint`` and integer N, K, Q of at least 2, 1, 1."""
    if labels.ndim != 1 or len(labels) != len(groups):
        raise ValueError(f"labels ({len(labels)}) and groups ({len(groups)}) must be 1-D and aligned")
    if disjoint not in ("patient", "item"):
        raise ValueError(f"disjoint must be 'patient' or 'item', not {disjoint!r}")
    for name, value, low in (("n_way", n_way, 2), ("k_shot", k_shot, 1), ("q_query", q_query, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_pool_size(labels: np.ndarray, groups: np.ndarray, k_shot: int, q_query: int, disjoint: str) -> None:
    """Every class has K + Q disjoint patients (items if ``disjoint="item"``), else a ValueError listing the short ones."""
    need = k_shot + q_query
    if disjoint == "patient":
        counts = _patients_per_class(labels, groups)
        unit = "patients"
    else:
        counts = {str(k): int(v) for k, v in pd.Series(labels).value_counts().items()}
        unit = "items"
    short = {c: n for c, n in counts.items() if n < need}
    if short:
        listing = ", ".join(f"{c!r} has {n}" for c, n in sorted(short.items()))
        raise ValueError(
            f"{k_shot}-shot {q_query}-query episodes need {need} {unit} per class "
            f"(K support + Q query, disjoint): {listing}. Largest feasible K here is "
            f"{min(counts.values()) - q_query} (max_k).")


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes, support and query disjoint by patient.

    For each of ``n_way`` classes drawn without replacement, ``k_shot`` support patients and
    ``q_query`` other query patients are drawn, and one item (row) of each of these patients:
    a patient contributes to support or query, never both, and once per episode.
    ``disjoint="item"`` ignores patients (support and query may share a patient or a video):
    the optimistic, leaky protocol, only for showing what it inflates.
    """

    def __init__(self, labels, groups, n_way: int, k_shot: int, q_query: int, seed: int = 0,
                 disjoint: str = "patient"):
        self.labels = np.asarray(labels, dtype=str)
        self.groups = np.asarray(groups, dtype=str)
        _check_episode_shape(self.labels, self.groups, n_way, k_shot, q_query, disjoint)
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        self.disjoint, self.seed = disjoint, seed
        self.classes = sorted(set(self.labels))
        if self.n_way > len(self.classes):
            raise ValueError(f"{self.n_way}-way episodes need {self.n_way} classes; the pool has "
                             f"{len(self.classes)} ({', '.join(self.classes)})")
        _check_pool_size(self.labels, self.groups, self.k_shot, self.q_query, disjoint)
        self.rng = np.random.default_rng(seed)
        rows = np.arange(len(self.labels))
        self._rows_by_class = {c: rows[self.labels == c] for c in self.classes}
        self._rows_by_class_patient = {
            c: {g: r for g, r in pd.Series(self._rows_by_class[c]).groupby(self.groups[self._rows_by_class[c]])
                .apply(np.asarray).items()}
            for c in self.classes}
        self._patients_by_class = {c: np.array(sorted(self._rows_by_class_patient[c])) for c in self.classes}

    def sample(self) -> Episode:
        """Draw one episode."""
        rng = self.rng
        chosen = [self.classes[i] for i in np.sort(rng.choice(len(self.classes), self.n_way, replace=False))]
        support, query, used = [], [], set()
        for local, cls in enumerate(chosen):
            if self.disjoint == "item":
                rows = rng.choice(self._rows_by_class[cls], self.k_shot + self.q_query, replace=False)
                support += [(r, local) for r in rows[:self.k_shot]]
                query += [(r, local) for r in rows[self.k_shot:]]
                continue
            rows = self._patient_rows(rng, cls, used)
            support += [(r, local) for r in rows[:self.k_shot]]
            query += [(r, local) for r in rows[self.k_shot:]]
        support_rows = np.array([r for r, _ in support], dtype=int)
        query_rows = np.array([r for r, _ in query], dtype=int)
        return Episode(chosen, support_rows, np.array([y for _, y in support], dtype=int), query_rows,
                       np.array([y for _, y in query], dtype=int), self.groups[support_rows], self.groups[query_rows])

    def _patient_rows(self, rng: np.random.Generator, cls: str, used: set) -> list:
        """K + Q patients of ``cls`` not yet ``used`` in this episode (added to it), one row of each."""
        candidates = [g for g in self._patients_by_class[cls] if g not in used]
        if len(candidates) < self.k_shot + self.q_query:  # only if patients carry several labels
            raise RuntimeError(f"class {cls!r}: patients shared with other classes of this episode leave "
                               f"{len(candidates)} patients, fewer than K+Q={self.k_shot + self.q_query}")
        patients = [candidates[i] for i in rng.choice(len(candidates), self.k_shot + self.q_query, replace=False)]
        used.update(patients)
        rows = []
        for patient in patients:
            patient_rows = self._rows_by_class_patient[cls][patient]
            rows.append(patient_rows[rng.integers(len(patient_rows))])
        return rows

    def episodes(self, n: int) -> Iterator[Episode]:
        """``n`` episodes, one after the other, from this sampler's random stream."""
        for _ in range(int(n)):
            yield self.sample()
