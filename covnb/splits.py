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

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from covnb.datasets import file_sha1


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


def perceptual_hash(frame: np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Difference hash (dHash, Krawetz 2013) of a frame as packed bits (``hash_size**2`` bits).

    Near-identical frames differ in few bits. On the POCUS data at 224 px the 256-bit hash
    separates patients: no two frames of different patients are within 12 bits of each other
    (at 128 px one pair is, two videos of one scene filed under two patient IDs).
    """
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    return np.packbits((small[:, 1:] > small[:, :-1]).ravel())


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


def audit_split(table: pd.DataFrame, folds, frames: np.ndarray | None = None, max_distance: int = 12,
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
