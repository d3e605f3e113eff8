"""Near-duplicate frames and the leakage they cause, for notebook 01.

The near-duplicate view uses the 256-bit difference hash of :func:`covnb.splits.perceptual_hash`
(Krawetz 2013): frames of one video are nearly identical, which is why a frame-level split
leaks (Born et al., "Accelerating detection of lung pathologies with explainable ultrasound
image analysis", Applied Sciences 11:672, 2021; Roberts et al., Nature Machine Intelligence
3:199, 2021, on data leakage in COVID-19 imaging models).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from covnb.explore_common import _check_columns, _empty_figure, _short, _short_tail
from covnb.splits import AuditReport, perceptual_hash

__all__ = ["hash_distances", "plot_near_duplicates", "plot_flagged_pairs", "audit_summary", "leak_examples",
           "per_fold_groups", "RELATION_COLOURS"]


def hash_distances(frames: np.ndarray, frame_index: pd.DataFrame, max_pairs: int = 3000,
                   seed: int = 0) -> pd.DataFrame:
    """Hamming distances between 256-bit dHash values of frame pairs, by how the pair is related.

    ``relation`` is "same file" (two frames of one video), "same patient, other file" or
    "other patient"; up to ``max_pairs`` random pairs of each kind.
    """
    _check_columns(frame_index, ["sample_id", "group"])
    if len(frame_index) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(frame_index)} index rows")
    n = len(frames)
    if n < 2:
        return pd.DataFrame(columns=["a", "b", "relation", "distance"])
    bits = np.unpackbits(np.stack([perceptual_hash(f) for f in frames]), axis=1).astype(np.int16)
    sample = np.asarray(frame_index["sample_id"], dtype=str)
    group = np.asarray(frame_index["group"], dtype=str)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size=max_pairs * 20)
    b = rng.integers(0, n, size=max_pairs * 20)
    # same-file and same-patient pairs are rare among random pairs: add them explicitly
    extra_a, extra_b = [], []
    for key in (sample, group):
        order = np.argsort(key, kind="stable")
        same = key[order][1:] == key[order][:-1]
        extra_a.append(order[:-1][same])
        extra_b.append(order[1:][same])
    a = np.concatenate([a, *extra_a])
    b = np.concatenate([b, *extra_b])
    keep = a != b
    a, b = a[keep], b[keep]
    relation = np.where(sample[a] == sample[b], "same file",
                        np.where(group[a] == group[b], "same patient, other file", "other patient"))
    table = pd.DataFrame({"a": a, "b": b, "relation": relation}).drop_duplicates(["a", "b"])
    table = pd.concat([part.sample(min(len(part), max_pairs), random_state=seed)
                       for _, part in table.groupby("relation", sort=True)])
    table["distance"] = np.abs(bits[table["a"].to_numpy()] - bits[table["b"].to_numpy()]).sum(axis=1)
    return table.reset_index(drop=True)


RELATION_COLOURS = {"same file": "tab:red", "same patient, other file": "tab:orange", "other patient": "tab:blue"}


def _near_duplicate_panels(fig, grid, frames: np.ndarray, frame_index: pd.DataFrame, distances: pd.DataFrame,
                           pair) -> None:
    """Top row of :func:`plot_near_duplicates`: the pair's two frames and the closest frame of
    another patient (same class when there is one), with their distances."""
    first, second = int(pair["a"]), int(pair["b"])
    third = _closest_other_patient(frame_index, distances, first)
    bits = {i: perceptual_hash(frames[i]) for i in (first, second, third) if i is not None}

    def distance(i, j):
        return int(np.unpackbits(np.bitwise_xor(bits[i], bits[j])).sum())

    ids = np.asarray(frame_index["sample_id"], dtype=str)
    groups = np.asarray(frame_index["group"], dtype=str)
    times = frame_index["time_s"].to_numpy() if "time_s" in frame_index else np.zeros(len(frame_index))
    videos = np.asarray(frame_index["kind"] == "video") if "kind" in frame_index else np.zeros(len(times), bool)

    def when(i):
        return f"t = {times[i]:.2f} s" if videos[i] else "image"

    panels = [(first, f"{_short(Path(ids[first]).name)}\n{when(first)}"),
              (second, f"{pair['relation']}, {when(second)}\ndistance {distance(first, second)} bits")]
    if third is not None:
        panels.append((third, f"other patient ({_short_tail(groups[third], 16)})\ndistance {distance(first, third)} bits"))
    for col, (index, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(frames[index])
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def _closest_other_patient(frame_index: pd.DataFrame, distances: pd.DataFrame, first: int) -> int | None:
    """The frame of another patient closest to frame ``first`` (same class when possible), else
    any frame of another patient, else None."""
    others = distances[(distances["relation"] == "other patient")
                       & ((distances["a"] == first) | (distances["b"] == first))]
    labels = np.asarray(frame_index["label"], dtype=str)
    same_label = others[[labels[int(x)] == labels[first] for x in np.where(others["a"] == first, others["b"], others["a"])]]
    others = same_label if len(same_label) else others
    if len(others):
        row = others.sort_values("distance").iloc[0]
        return int(row["b"] if row["a"] == first else row["a"])
    group = np.asarray(frame_index["group"], dtype=str)
    candidates = np.nonzero(group != group[first])[0]
    return int(candidates[0]) if len(candidates) else None


def plot_near_duplicates(frames: np.ndarray, frame_index: pd.DataFrame, *, max_distance: int = 12,
                         seed: int = 0, distances: pd.DataFrame | None = None) -> matplotlib.figure.Figure:
    """Two frames of one video, a frame of another patient, and the distance histogram.

    Top: the closest pair of frames of one file next to the closest frame of another patient
    of the same class, with their dHash distances. Bottom: distances of many pairs by
    relation; pairs left of the dashed line are what :func:`covnb.splits.audit_split` calls
    near-identical.
    """
    distances = hash_distances(frames, frame_index, seed=seed) if distances is None else distances
    if distances.empty:
        return _empty_figure("fewer than two frames: nothing to compare")
    fig = plt.figure(figsize=(11, 6.4))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.1, 1])
    close = distances[distances["relation"] == "same file"]
    close = (close if len(close) else distances[distances["relation"] != "other patient"]).sort_values("distance")
    if len(close):
        pair = close.iloc[len(close) // 10]  # a close pair, but not the most extreme one
        _near_duplicate_panels(fig, grid, frames, frame_index, distances, pair)
    ax = fig.add_subplot(grid[1, :])
    top = int(distances["distance"].max()) + 2
    bins = np.arange(0, max(top, max_distance + 4), 2)
    for relation, colour in RELATION_COLOURS.items():
        part = distances.loc[distances["relation"] == relation, "distance"]
        if len(part):
            ax.hist(part, bins=bins, density=True, alpha=0.55, color=colour, label=f"{relation} ({len(part)} pairs)")
    ax.axvline(max_distance + 0.5, color="black", ls="--", lw=1)
    ax.text(max_distance + 1, ax.get_ylim()[1] * 0.9, f"near-identical\n(≤ {max_distance} bits)", fontsize=8, va="top")
    ax.set_xlabel("dHash distance (bits differing out of 256)")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_flagged_pairs(frames: np.ndarray, frame_index: pd.DataFrame, report: AuditReport,
                       limit: int = 3) -> matplotlib.figure.Figure:
    """The near-identical frame pairs an audit found in two folds, side by side."""
    pairs = report.near_duplicate_frames[:limit]
    if not pairs:
        return _empty_figure("no near-identical frame pairs cross folds")
    ids = np.asarray(frame_index["sample_id"], dtype=str)
    if "frame_index" in frame_index:
        ids = np.array([f"{n}#{i}" for n, i in zip(ids, frame_index["frame_index"])])
    row_of = {name: i for i, name in enumerate(ids)}
    groups = np.asarray(frame_index["group"], dtype=str)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(6.4, 3.2 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        for col, (name, fold) in enumerate(((pair["a"], pair["fold_a"]), (pair["b"], pair["fold_b"]))):
            ax = axes[row, col]
            ax.axis("off")
            if name in row_of:
                ax.imshow(frames[row_of[name]])
                ax.set_title(f"{_short(Path(name).name, 30)}\npatient {_short_tail(groups[row_of[name]], 16)}, fold {fold}",
                             fontsize=8)
        axes[row, 0].text(1.04, 0.5, f"{pair['distance']} bits", transform=axes[row, 0].transAxes, ha="left",
                          va="center", fontsize=9, color="firebrick")
    fig.tight_layout()
    return fig


def audit_summary(report: AuditReport) -> dict:
    """Counts from an :class:`covnb.splits.AuditReport`, ready for ``metrics.json``."""
    return {"ok": bool(report.ok), "shared_groups": len(report.shared_groups),
            "identical_files": len(report.identical_files),
            "near_duplicate_frames": len(report.near_duplicate_frames)}


def leak_examples(report: AuditReport, limit: int = 5) -> pd.DataFrame:
    """The first near-identical frame pairs an audit found in two folds, as a table."""
    rows = report.near_duplicate_frames[:limit]
    return pd.DataFrame(rows, columns=["a", "fold_a", "b", "fold_b", "distance"])


def per_fold_groups(frame_index: pd.DataFrame, folds) -> pd.DataFrame:
    """For each patient group: in how many folds its frames land (1 is the only safe answer)."""
    _check_columns(frame_index, ["group"])
    work = frame_index.assign(fold=np.asarray(folds))
    spread = work.groupby("group")["fold"].nunique()
    return spread.value_counts().sort_index().rename_axis("folds_per_patient").rename("patients").to_frame()

