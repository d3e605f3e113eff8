"""Removing per-video and per-source style from frozen features or frames (issue 13, section 4).

A new hospital's scanner changes the gain, dynamic range and grain of every frame, and with them
the frozen features of every file it sends. Two label-free normalisations act on that:

* feature standardisation within a group (:func:`standardise_within`): every feature centred
  and scaled by the group's own mean and standard deviation, the group being a video
  (``"video"``) or a source (``"source"``: at test time the new hospital's own batch of files,
  a transductive step that must be stated with any figure it gives). This is per-domain
  feature standardisation, the linear cousin of adaptive batch normalisation (AdaBN, Li et al.,
  Pattern Recognition 2018). ``"source_scale"`` only divides by the source's scale (keeps
  where the source lies); ``"video_scale"`` divides each video's features by their mean norm.
* intensity standardisation per video (:func:`standardise_video_intensity`): every video's
  ultrasound pixels mapped to one mean and spread before the backbone (removes gain and
  dynamic range; Nyul & Udupa, IEEE TMI 2000, in its simplest linear form).

All of them use no label, so computing them once over the whole table equals computing them in
every fold (a group's statistics depend only on that group's own files).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_NORMALISATIONS = ("none", "video", "video_scale", "source", "source_scale")


def _codes(groups) -> np.ndarray:
    return pd.factorize(np.asarray(groups, dtype=str))[0]


def standardise_within(features: np.ndarray, groups, *, center: bool = True, scale: bool = True,
                       eps: float = 1e-6) -> np.ndarray:
    """``features`` ``(V, N, D)`` (views x rows x dimensions), each group of rows standardised
    by its own statistics over every view (``center``: minus the mean; ``scale``: divided by the
    standard deviation, floored at ``eps`` times the largest one). Returns float32."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3:
        raise ValueError(f"features must be (views, rows, dims), got shape {features.shape}")
    codes = _codes(groups)
    if len(codes) != features.shape[1]:
        raise ValueError(f"{len(codes)} group labels for {features.shape[1]} rows")
    out = np.empty_like(features)
    for code in np.unique(codes):
        rows = codes == code
        block = features[:, rows].astype(np.float64)
        flat = block.reshape(-1, block.shape[-1])
        mean = flat.mean(axis=0) if center else 0.0
        if scale:
            std = flat.std(axis=0)
            std = np.maximum(std, eps * max(float(std.max()), 1e-30))
        else:
            std = 1.0
        out[:, rows] = ((block - mean) / std).astype(np.float32)
    return out


def scale_within(features: np.ndarray, groups) -> np.ndarray:
    """Each group's features divided by the group's mean L2 norm of a row (over every view):
    one positive number per group, so directions and ratios stay."""
    features = np.asarray(features, dtype=np.float32)
    codes = _codes(groups)
    out = np.empty_like(features)
    for code in np.unique(codes):
        rows = codes == code
        norm = float(np.linalg.norm(features[:, rows].astype(np.float64), axis=-1).mean())
        out[:, rows] = features[:, rows] / max(norm, 1e-30)
    return out


def normalise_features(features: np.ndarray, index: pd.DataFrame, mode: str) -> np.ndarray:
    """Apply normalisation ``mode`` (:data:`FEATURE_NORMALISATIONS`) to ``features`` ``(V, N, D)``
    whose rows are ``index``'s rows (``sample_id`` per row; ``source`` for the source modes)."""
    if mode not in FEATURE_NORMALISATIONS:
        raise ValueError(f"feature normalisation must be one of {FEATURE_NORMALISATIONS}, got {mode!r}")
    if mode == "none":
        return features
    column = "sample_id" if mode.startswith("video") else "source"
    if column not in index:
        raise ValueError(f"feature normalisation {mode!r} needs a {column!r} column")
    groups = index[column].fillna("unknown").to_numpy()
    if mode in ("video_scale",):
        return scale_within(features, groups)
    return standardise_within(features, groups, center=mode in ("video", "source"), scale=True)


def standardise_video_intensity(frames: np.ndarray, videos, *, target_mean: float = 100.0, target_std: float = 50.0,
                                floor: int = 8) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` uint8 with every video's image pixels (brighter than ``floor``;
    the black background stays black) linearly mapped to mean ``target_mean`` and standard
    deviation ``target_std`` over the whole video. Returns uint8 frames."""
    from covnb.frames import standardise_intensity

    frames = np.asarray(frames)
    codes = _codes(videos)
    if len(codes) != len(frames):
        raise ValueError(f"{len(codes)} video labels for {len(frames)} frames")
    out = np.empty_like(frames)
    for code in np.unique(codes):
        rows = np.nonzero(codes == code)[0]
        out[rows] = standardise_intensity(frames[rows], target_mean=target_mean, target_std=target_std, floor=floor)
    return out
