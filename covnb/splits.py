"""Cross-validation splits that cannot leak patients, and an audit that proves it.

Frames of one video, and videos of one patient, are nearly identical: a split by frame or by
video puts the same patient in training and test and inflates every metric (the flaw of
several papers on the POCUS data, Born et al. 2021). Folds here are by patient group,
stratified by label (scikit-learn's ``StratifiedGroupKFold``), seeded; an inner split by
patient inside each training fold serves early stopping and model selection, so the test fold
is never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from covnb.datasets import file_sha1, perceptual_hash  # noqa: F401 (the audit's hash, re-exported)


class LeakageError(AssertionError):
    """Raised by :func:`audit_split` when something appears in two folds."""


def patient_folds(samples: pd.DataFrame, n_splits: int = 5, seed: int = 0) -> pd.Series:
    """Fold number (0..n_splits-1) of every row: groups never span folds, labels stratified."""
    n_groups = samples["group"].nunique()
    if n_splits < 2:
        raise ValueError(f"need at least 2 folds, got {n_splits}")
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} patient groups cannot fill {n_splits} folds")
    if samples["label"].value_counts().max() < n_splits:
        raise ValueError(f"every label has fewer than {n_splits} samples: use fewer folds")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(samples), -1, dtype=int)
    for fold, (_, test) in enumerate(splitter.split(samples, samples["label"], samples["group"])):
        folds[test] = fold
    return pd.Series(folds, index=samples.index, name="fold")


GROUPINGS = ("patient", "source")


def source_held_out_folds(samples: pd.DataFrame, *, positive_label: str = "covid", n_splits: int = 5,
                          seed: int = 0) -> pd.Series:
    """Folds in which every test fold's ``positive_label`` files come from sources absent from its training data.

    A patient-grouped split keeps patients apart but lets every source sit on both sides, so a
    model can score by recognising the source (Zech et al., PLOS Medicine 2018; on the POCUS data
    33 of 41 bacterial-pneumonia files come from one source). Here each source that sent
    positive files is held out WHOLE (all its files, every class) in one fold: leave one source
    out when there are at most ``n_splits`` of them, otherwise sources are packed largest first
    into the fold with the fewest positives so folds stay usable. Files of sources without
    positives are split by patient group, stratified by label (``StratifiedGroupKFold``, seeded).
    Patients never span folds (a group spanning sources joins them into one block).

    Returns fold numbers indexed like ``samples``; ``.attrs`` holds ``"protocol"`` ("source", or
    "patient" when fewer than two sources sent positives: a source-held-out test is then
    impossible and patient-grouped folds are returned), ``"held_out"`` (fold -> held-out positive
    sources) and ``"notes"`` (plain sentences: fallback, dominant sources, folds without a class).
    """
    if n_splits < 2:
        raise ValueError(f"need at least 2 folds, got {n_splits}")
    for column in ("label", "group", "source"):
        if column not in samples:
            raise ValueError(f"source-held-out folds need a {column!r} column")
    labels = samples["label"].astype(str).to_numpy()
    sources = samples["source"].fillna("unknown").astype(str).to_numpy()
    groups = samples["group"].astype(str).to_numpy()
    positive = labels == str(positive_label)
    notes = _source_dominance_notes(labels, sources, positive_label)
    positive_sources = pd.Series(sources[positive]).value_counts()
    if len(positive_sources) < 2:
        what = (f"all {positive.sum()} {positive_label} files come from one source ({positive_sources.index[0]})"
                if len(positive_sources) else f"there are no {positive_label} files")
        folds = patient_folds(samples, n_splits, seed)
        folds.attrs.update(protocol="patient", held_out={}, notes=[
            f"{what}: no source can be held out, so these are patient-grouped folds (source-held-out impossible)"] + notes)
        return folds
    # Blocks that must stay whole: each positive source (all its files), joined with any patient group it touches.
    block = np.where(np.isin(sources, positive_sources.index), "source:" + sources, "group:" + groups)
    block = _merge_blocks_sharing_groups(block, groups)
    held_blocks = pd.Series(positive).groupby(block).sum()
    held_blocks = held_blocks[held_blocks > 0]
    n_folds = min(n_splits, len(held_blocks))
    if n_folds < n_splits:
        notes.append(f"{len(held_blocks)} {positive_label} source block(s) -> {n_folds} folds instead of {n_splits}")
    fold_of_block = _pack_blocks(held_blocks, n_folds, seed)
    folds = np.full(len(samples), -1, dtype=int)
    in_held = np.isin(block, list(fold_of_block))
    folds[in_held] = [fold_of_block[b] for b in block[in_held]]
    _split_other_blocks(folds, np.nonzero(~in_held)[0], block, labels, n_folds, seed)
    held_out = {int(f): sorted(b.split(":", 1)[1] for b, g in fold_of_block.items() if g == f and b.startswith("source:"))
                for f in range(n_folds)}
    for fold in range(n_folds):
        missing = sorted(set(labels) - set(labels[folds == fold]))
        if missing:
            notes.append(f"fold {fold} has no test files of {', '.join(missing)}")
    result = pd.Series(folds, index=samples.index, name="fold")
    result.attrs.update(protocol="source", held_out=held_out, notes=notes)
    return result


def _pack_blocks(held_blocks: pd.Series, n_folds: int, seed: int) -> dict[str, int]:
    """{block: fold}: blocks (positive files each) largest first into the emptiest fold, ties broken by the seed."""
    rng = np.random.default_rng(seed)
    order = sorted(held_blocks.index, key=lambda b: (-held_blocks[b], rng.random()))
    load, fold_of_block = np.zeros(n_folds), {}
    for name in order:
        fold = int(np.argmin(load + rng.random(n_folds) * 1e-3))
        fold_of_block[name] = fold
        load[fold] += held_blocks[name]
    return fold_of_block


def _split_other_blocks(folds: np.ndarray, rest: np.ndarray, block: np.ndarray, labels: np.ndarray, n_folds: int,
                        seed: int) -> None:
    """Fill ``folds`` at rows ``rest`` (files of sources without positives): blocks split stratified by label."""
    if not len(rest):
        return
    rest_blocks = block[rest]
    n_rest = min(n_folds, len(set(rest_blocks)))
    if n_rest < 2:
        folds[rest] = 0
        return
    splitter = StratifiedGroupKFold(n_splits=n_rest, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(rest, labels[rest], rest_blocks)):
        folds[rest[test]] = fold


def _merge_blocks_sharing_groups(block: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Union of blocks that share a patient group (a patient filed under two sources)."""
    parent = {b: b for b in set(block)}

    def root(b):
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    for group in set(groups):
        members = sorted(set(block[groups == group]))
        for other in members[1:]:
            parent[root(other)] = root(members[0])
    return np.array([root(b) for b in block], dtype=object)


def _source_dominance_notes(labels: np.ndarray, sources: np.ndarray, positive_label: str,
                            share: float = 0.5) -> list[str]:
    """Sentences naming every class of which one source sent more than ``share`` of the files."""
    notes = []
    if len(set(sources)) < 2:
        return notes  # one source for everything: nothing to single out
    table = pd.crosstab(labels, sources)
    for label, row in table.iterrows():
        ranked = row[row > 0].sort_values(ascending=False)
        tail = "" if label == str(positive_label) else \
            "; its test files mostly share their source with training files (patient-grouped only)"
        if ranked.iloc[0] / row.sum() > share and row.sum() >= 2:
            notes.append(f"{label}: {int(ranked.iloc[0])} of {int(row.sum())} files come from source {ranked.index[0]}"
                         + tail)
        elif len(ranked) > 2 and ranked.iloc[:2].sum() / row.sum() > (1 + share) / 2:
            notes.append(f"{label}: {int(ranked.iloc[:2].sum())} of {int(row.sum())} files come from two sources "
                         f"({ranked.index[0]}, {ranked.index[1]})" + tail)
    return notes


def cv_folds(samples: pd.DataFrame, *, group_by: str = "patient", n_splits: int = 5, seed: int = 0,
             positive_label: str = "covid") -> pd.Series:
    """Folds by ``group_by``: ``"patient"`` (:func:`patient_folds`) or ``"source"`` (:func:`source_held_out_folds`)."""
    if group_by == "patient":
        folds = patient_folds(samples, n_splits, seed)
        folds.attrs.update(protocol="patient", held_out={}, notes=[])
        return folds
    if group_by == "source":
        return source_held_out_folds(samples, positive_label=positive_label, n_splits=n_splits, seed=seed)
    raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")


def audit_sources(samples: pd.DataFrame, folds, positive_label: str = "covid") -> list[str]:
    """Problems of a source-held-out split: a test fold's positive source also present in its training data."""
    work = samples.assign(_fold=np.asarray(folds))
    problems = []
    for fold, test in work.groupby("_fold"):
        train_sources = set(work.loc[work["_fold"] != fold, "source"].astype(str))
        shared = sorted(set(test.loc[test["label"] == positive_label, "source"].astype(str)) & train_sources)
        if shared:
            problems.append(f"fold {fold}: {positive_label} source(s) {', '.join(shared)} also in its training data")
    return problems


def inner_validation(train: pd.DataFrame, fraction: float = 0.2, seed: int = 0) -> pd.Series:
    """Boolean mask of a validation part of a training fold, by patient group, stratified.

    Used for early stopping and checkpoint selection instead of the test fold.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if train["group"].nunique() < 2:
        raise ValueError("an inner validation split needs at least 2 patient groups")
    groups_per_label = train.groupby("label")["group"].nunique()
    n_splits = min(int(round(1 / fraction)), train["group"].nunique(), int(groups_per_label.min()))
    mask = np.zeros(len(train), dtype=bool)
    if n_splits >= 2:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, validation = next(splitter.split(train, train["label"], train["group"]))
        mask[validation] = True
    else:
        # A class with a single patient cannot be stratified: hold out a random share of groups.
        rng = np.random.default_rng(seed)
        groups = np.asarray(sorted(train["group"].unique()), dtype=object)
        n_held = max(1, int(round(fraction * len(groups))))
        held = set(rng.choice(groups, size=n_held, replace=False))
        mask[:] = train["group"].isin(held).to_numpy()
    return pd.Series(mask, index=train.index, name="validation")


def frame_level_folds(n_rows: int, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """A deliberately WRONG split: rows (frames) shuffled into folds ignoring patients.

    Only for showing how leakage inflates results; :func:`audit_split` rejects it.
    """
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n_rows) % n_splits)


# ----------------------------------------------------------------------------- audit


@dataclass
class AuditReport:
    """What :func:`audit_split` found; ``ok`` is True when nothing crosses folds."""

    shared_groups: list[dict] = field(default_factory=list)
    identical_files: list[dict] = field(default_factory=list)
    near_duplicate_frames: list[dict] = field(default_factory=list)
    checked: list[str] = field(default_factory=lambda: ["patient groups"])

    @property
    def ok(self) -> bool:
        return not (self.shared_groups or self.identical_files or self.near_duplicate_frames)

    def describe(self, limit: int = 10) -> str:
        if self.ok:
            return f"split audit passed: checked {', '.join(self.checked)}; nothing is in two folds"
        lines = [f"split audit FAILED: {len(self.shared_groups)} patient groups, {len(self.identical_files)} identical "
                 f"files and {len(self.near_duplicate_frames)} near-identical frame pairs cross folds"]
        for item in self.shared_groups[:limit]:
            lines.append(f"  group {item['group']!r} is in folds {item['folds']}")
        for item in self.identical_files[:limit]:
            lines.append(f"  identical files in folds {item['folds']}: {', '.join(item['paths'])}")
        for item in self.near_duplicate_frames[:limit]:
            lines.append(f"  near-identical frames (distance {item['distance']}): {item['a']} (fold {item['fold_a']}) "
                         f"and {item['b']} (fold {item['fold_b']})")
        return "\n".join(lines)


def audit_split(table: pd.DataFrame, folds, frames: np.ndarray | None = None, *, max_distance: int = 12,
                check_files: bool = True, raise_on_leak: bool = True) -> AuditReport:
    """Check that no patient group, identical file or near-identical frame appears in two folds.

    ``table`` has ``group`` (and ``path`` for the file check) per row; rows may be samples or
    frames. With ``frames`` (one per row) their 256-bit dHash values are compared across folds:
    a Hamming distance of at most ``max_distance`` bits counts as near-identical.
    Raises :class:`LeakageError` naming what leaks unless ``raise_on_leak`` is False.
    """
    folds = np.asarray(folds)
    if len(folds) != len(table):
        raise ValueError(f"{len(folds)} fold numbers for {len(table)} rows")
    report = AuditReport()
    work = table.reset_index(drop=True).assign(_fold=folds)
    for group, fold_set in work.groupby("group")["_fold"].agg(lambda f: sorted(set(f))).items():
        if len(fold_set) > 1:
            report.shared_groups.append({"group": group, "folds": [int(f) for f in fold_set]})
    if check_files and "path" in work:
        unique = work.drop_duplicates("path")
        report.checked.append("identical files")
        hashes = pd.Series([file_sha1(p) for p in unique["path"]], index=unique["path"])
        work["_sha1"] = work["path"].map(hashes)
        for _, rows in work.groupby("_sha1"):
            fold_set = sorted(set(rows["_fold"]))
            if len(fold_set) > 1:
                report.identical_files.append({"folds": [int(f) for f in fold_set],
                                               "paths": sorted(set(rows["path"]))})
    if frames is not None:
        report.checked.append("near-identical frames")
        report.near_duplicate_frames = _near_duplicates(work, frames, folds, max_distance)
    if raise_on_leak and not report.ok:
        raise LeakageError(report.describe())
    return report


def _near_duplicates(work: pd.DataFrame, frames: np.ndarray, folds: np.ndarray, max_distance: int,
                     limit: int = 1000) -> list[dict]:
    bytes_view = np.stack([perceptual_hash(f) for f in frames]) if len(frames) else np.zeros((0, 32), np.uint8)
    names = np.asarray(work["sample_id"] if "sample_id" in work else work.index, dtype=str)
    if "frame_index" in work:
        names = np.array([f"{n}#{i}" for n, i in zip(names, work["frame_index"])])
    found = []
    # Compare each frame only with frames of later folds: bit counts of XORed packed hashes.
    for i in range(len(bytes_view)):
        later = np.nonzero(folds > folds[i])[0]
        if not len(later):
            continue
        xor = np.bitwise_xor(bytes_view[later], bytes_view[i])
        distance = np.unpackbits(xor, axis=1).sum(axis=1)
        for j in later[distance <= max_distance]:
            found.append({"a": names[i], "b": names[j], "fold_a": int(folds[i]), "fold_b": int(folds[j]),
                          "distance": int(distance[np.searchsorted(later, j)])})
            if len(found) >= limit:
                return found
    return found


def fold_table(samples: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """Rows and groups per label and fold: shows the stratification at a glance."""
    work = samples.assign(fold=folds.values)
    rows = work.pivot_table(index="fold", columns="label", values="sample_id", aggfunc="count", fill_value=0)
    groups = work.groupby("fold")["group"].nunique().rename("patients")
    return rows.join(groups)
