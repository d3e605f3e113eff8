"""Files that are copies of one recording: byte-identical files and near-identical first frames.

A 256-bit difference hash of the first frame (dHash, Krawetz 2013) finds near-duplicates;
:func:`merge_duplicate_groups` joins the patient groups of such files so that no fold split puts
copies of one recording into training and test (Roberts et al., Nat Mach Intell 3:199, 2021, on
leakage in COVID-19 imaging models). Used by :func:`covnb.datasets.load_dataset` and the split audit.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covnb.media import VIDEO_EXTENSIONS, file_sha1

__all__ = ["NEAR_DUPLICATE_BITS", "MIN_HASH_BITS", "perceptual_hash", "first_frame_hash", "merge_duplicate_groups",
           "describe_merge"]

NEAR_DUPLICATE_BITS = 12  # the split audit's threshold (covnb.splits.audit_split)
MIN_HASH_BITS = 32  # a first frame whose hash has fewer set (or unset) bits has too little texture to compare
_FIRST_FRAME_HASHES: dict[tuple, np.ndarray | None] = {}


def perceptual_hash(frame: np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Difference hash (dHash, Krawetz 2013) of a frame as packed bits (``hash_size**2`` bits).

    Near-identical frames differ in few bits. On the POCUS data at 224 px the 256-bit hash
    separates patients: no two frames of different patients are within 12 bits of each other
    (at 128 px one pair is, two videos of one scene filed under two patient IDs).
    """
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA)
    return np.packbits((small[:, 1:] > small[:, :-1]).ravel())


def first_frame_hash(path: str | Path) -> np.ndarray | None:
    """256-bit difference hash of a file's first frame (the split audit's dHash), or None (unreadable,
    or too little texture to tell frames apart)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FIRST_FRAME_HASHES:
        frame = None
        try:
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                cap = cv2.VideoCapture(str(path))
                try:
                    ok, frame = cap.read()
                finally:
                    cap.release()
            else:
                frame = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
        except (cv2.error, OSError):
            frame = None
        if frame is None:
            _FIRST_FRAME_HASHES[key] = None
        else:
            if frame.dtype != np.uint8:
                frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
            gray = frame if frame.ndim == 2 else cv2.cvtColor(frame[..., :3], cv2.COLOR_BGR2GRAY)
            packed = perceptual_hash(gray)
            set_bits = int(np.unpackbits(packed).sum())
            # A frame without texture (black, uniform, a fade-in) hashes to nearly all zeros and
            # would match every other such frame: it says nothing, so it is not compared.
            _FIRST_FRAME_HASHES[key] = packed if MIN_HASH_BITS <= set_bits <= 256 - MIN_HASH_BITS else None
    return _FIRST_FRAME_HASHES[key]


def merge_duplicate_groups(samples: pd.DataFrame, max_distance: int = NEAR_DUPLICATE_BITS,
                           near: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Join the patient groups of byte-identical files, and of files whose first frames are
    near-identical (difference hashes within ``max_distance`` of 256 bits, the split audit's rule),
    so that no fold split puts copies of one recording into training and test.

    Returns ``(samples with merged groups, merges)``; each merge: ``{"groups", "into", "reason"}``.
    The joined group is named after its first group in sorted order. Used by :func:`load_dataset`
    and so by train, split, few-shot and the notebooks.
    """
    if len(samples) < 2 or "path" not in samples or "group" not in samples:
        return samples, []
    table = samples.reset_index(drop=True)
    paths = [Path(p) for p in table["path"]]
    union = _GroupUnion([str(g) for g in table["group"]])
    _join_identical_files(union, paths, table["sample_id"])
    if near:
        _join_near_duplicates(union, paths, table["sample_id"], max_distance)
    if not union.evidence:
        return samples, []
    merged = samples.copy()
    merged["group"] = [union.find(str(g)) for g in samples["group"]]
    return merged, union.merges()


class _GroupUnion:
    """Union-find over patient groups, keeping why each pair of rows was joined."""

    def __init__(self, groups: list[str]):
        self.groups = groups  # the group of each row
        self.parent = {g: g for g in groups}
        self.evidence: dict[tuple, list[str]] = {}

    def find(self, g: str) -> str:
        parent = self.parent
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def join(self, i: int, j: int, why: str) -> None:
        """Join the groups of rows ``i`` and ``j`` (the smaller name becomes the group's name)."""
        a, b = self.find(self.groups[i]), self.find(self.groups[j])
        if a == b:
            return
        self.parent[max(a, b)] = min(a, b)
        self.evidence.setdefault((self.groups[i], self.groups[j]), []).append(why)

    def merges(self) -> list[dict]:
        """``{"groups", "into", "reason"}`` of every joined group, by name."""
        members: dict[str, list[str]] = {}
        for g in dict.fromkeys(self.groups):
            members.setdefault(self.find(g), []).append(g)
        merges = []
        for root_group, joined in sorted(members.items()):
            if len(joined) < 2:
                continue
            reasons = [why for (a, b), whys in self.evidence.items() if self.find(a) == root_group for why in whys]
            merges.append({"groups": sorted(joined), "into": root_group, "reason": "; ".join(reasons)})
        return merges


def _join_identical_files(union: _GroupUnion, paths: list[Path], sample_ids) -> None:
    digests: dict[str, int] = {}
    for i, path in enumerate(paths):
        try:
            digest = file_sha1(path)
        except OSError:
            continue
        if digest in digests:
            union.join(digests[digest], i, f"identical files {sample_ids[digests[digest]]} and {sample_ids[i]}")
        else:
            digests[digest] = i


def _join_near_duplicates(union: _GroupUnion, paths: list[Path], sample_ids, max_distance: int) -> None:
    hashes = [first_frame_hash(p) for p in paths]
    usable = [i for i, h in enumerate(hashes) if h is not None]
    if len(usable) < 2:
        return
    bits = np.unpackbits(np.stack([hashes[i] for i in usable]), axis=1)
    groups = union.groups
    for a in range(len(usable)):
        distance = (bits[a + 1:] != bits[a]).sum(axis=1)
        for b in np.nonzero(distance <= max_distance)[0]:
            i, j = usable[a], usable[a + 1 + int(b)]
            if groups[i] != groups[j]:
                union.join(i, j, f"near-identical first frames ({int(distance[b])} of 256 bits differ): "
                                 f"{sample_ids[i]} and {sample_ids[j]}")


def describe_merge(merge: dict) -> str:
    return f"merged patient groups {', '.join(merge['groups'])} into {merge['into']!r}: {merge['reason']}"
