"""What a saved model's trust block says about new predictions: calibrated probabilities and uncertainty.

A training run (:func:`covnb.trust.trust_outputs`) stores a calibration map and uncertainty
thresholds in the model's sidecar and the fold heads and feature density in ``model.trust.npz``;
:func:`annotate_predictions` applies them to the tables of :func:`covnb.predict.predict_paths`
(calibration: :mod:`covnb.calibration`; signals: :mod:`covnb.uncertainty`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from covnb.calibration import calibrate_table
from covnb.uncertainty import (feature_distance, fold_agreement, fold_head_probabilities, predictive_entropy,
                               uncertainty_flags, video_mean_features)

__all__ = ["TRUST_SUFFIX", "trust_arrays_path", "load_trust_arrays", "annotate_predictions"]

TRUST_SUFFIX = ".trust.npz"


def trust_arrays_path(model_path: str | os.PathLike) -> Path:
    """``model.keras`` -> ``model.trust.npz`` (fold heads and feature density)."""
    path = Path(model_path)
    if path.is_dir():
        candidates = sorted(path.glob("*.keras"))
        path = candidates[0] if len(candidates) == 1 else path / "model.keras"
    return path.with_name(path.stem + TRUST_SUFFIX)


def load_trust_arrays(model_path) -> dict | None:
    """The arrays of ``model.trust.npz`` beside a model, or None when there is none."""
    path = trust_arrays_path(model_path)
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def annotate_predictions(frames: pd.DataFrame, videos: pd.DataFrame, classes, metadata: dict, *,
                         frame_features: np.ndarray | None = None, arrays: dict | None = None,
                         raw: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibrated probabilities (unless ``raw``) and uncertainty columns for predict's tables.

    ``frames``/``videos`` hold raw probabilities (video = mean frame probability). Video columns
    added: ``probabilities`` ("calibrated (<method>)" or "raw"), ``confidence``, ``uncertainty``
    (normalised predictive entropy), and with the model's ``trust`` block ``fold_agreement``,
    ``ood_score``, ``uncertain`` and ``uncertain_reason``.
    """
    columns = [f"prob_{c}" for c in classes]
    calibration = metadata.get("calibration")
    label = f"calibrated ({(calibration.get('video') or calibration)['method']})" if calibration and not raw else "raw"
    calibrated_videos = calibrate_table(videos, classes, calibration.get("video")) if calibration else videos
    if calibration and not raw:
        frames = calibrate_table(frames, classes, calibration.get("frame"))
        videos = calibrated_videos
    frames = frames.assign(probabilities=label)
    videos = videos.assign(probabilities=label)
    if videos.empty:
        return frames, videos
    # Confidence, uncertainty and the flags always use the calibrated probabilities (when the model has a map).
    probs = calibrated_videos[columns].to_numpy(dtype=float)
    videos["confidence"] = probs.max(axis=1)
    videos["uncertainty"] = predictive_entropy(probs)
    trust = metadata.get("trust")
    if not trust:
        return frames, videos
    agreement = ood = None
    if arrays and frame_features is not None and len(frame_features):
        agreement, ood = _feature_signals(frames, videos, probs, arrays, frame_features)
    thresholds = trust.get("thresholds", {})
    flags, reasons = uncertainty_flags(videos["confidence"].to_numpy(), thresholds=thresholds, agreement=agreement,
                                       ood=ood)
    videos["uncertain"] = flags
    videos["uncertain_reason"] = reasons
    return frames, videos


def _feature_signals(frames: pd.DataFrame, videos: pd.DataFrame, probs: np.ndarray, arrays: dict,
                     frame_features: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Agreement of the fold heads with the prediction and the OOD score of each video, added to
    ``videos`` (``fold_agreement``, ``ood_score``) when the trust arrays have them."""
    agreement = ood = None
    ids, means = video_mean_features(frame_features, frames["path"].to_numpy())
    order = pd.Index(ids).get_indexer(videos["path"].astype(str))
    means = means[order]
    if "fold_kernels" in arrays:
        fold_probs = fold_head_probabilities(frame_features, arrays["fold_kernels"], arrays["fold_biases"])
        per_video = np.stack([video_mean_features(p, frames["path"].to_numpy())[1][order] for p in fold_probs])
        predicted = probs.argmax(axis=1)
        agreement = fold_agreement(per_video, predicted)
        videos["fold_agreement"] = agreement
    if "density_mean" in arrays:
        density = {k[len("density_"):]: v for k, v in arrays.items() if k.startswith("density_")}
        ood = feature_distance(density, means)
        videos["ood_score"] = ood
    return agreement, ood
