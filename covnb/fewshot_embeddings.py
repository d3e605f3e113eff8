"""Frozen-backbone embeddings for few-shot learning, computed once and cached on disk.

:func:`compute_embeddings`: pooled features of a frozen covnb backbone, computed in batches
inside a ``tf.function`` and cached (keyed by the frames and the backbone);
:func:`sample_embeddings` averages them per sample (video or image): a *shot* is one patient's
sample, never a frame of a video the query also uses.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from covnb.cache import read_cached_array, usable_cache_dir, write_cached_array

__all__ = ["EMBEDDING_CACHE_VERSION", "compute_embeddings", "sample_embeddings"]

EMBEDDING_CACHE_VERSION = 1


def _frames_of(frame_set_or_frames) -> np.ndarray:
    frames = getattr(frame_set_or_frames, "frames", frame_set_or_frames)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be an array (N, S, S, 3) of RGB images (or a FrameSet); got shape "
                         f"{frames.shape}")
    return frames


def _weights_key(weights) -> str:
    if weights is None or weights == "imagenet":
        return str(weights)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist (use 'imagenet', None or a file)")
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _embedding_key(frames: np.ndarray, backbone: str, image_size: int, weights, pooling: str) -> str:
    digest = hashlib.sha1(str((frames.shape, str(frames.dtype))).encode())
    digest.update(np.ascontiguousarray(frames).data)
    spec = {"v": EMBEDDING_CACHE_VERSION, "frames": digest.hexdigest(), "backbone": backbone,
            "image_size": int(image_size), "weights": _weights_key(weights), "pooling": pooling}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def compute_embeddings(frame_set_or_frames, *, backbone: str = "efficientnet_lite0", image_size: int = 224,
                       weights="imagenet", batch_size: int = 32, pooling: str = "avg", cache: bool = True,
                       log: Callable[[str], None] | None = None) -> np.ndarray:
    """Frozen, pooled backbone features ``(N, D)`` float32 of raw RGB frames ``(N, S, S, 3)``.

    Uses :func:`covnb.backbones.feature_extractor` (preprocessing inside the model), called on
    batches inside one ``tf.function``. Cached under ``cache_dir("embeddings")``, keyed by a hash
    of the frames' bytes and the backbone settings; written atomically.
    """
    frames = _frames_of(frame_set_or_frames)
    if frames.shape[1] != int(image_size) or frames.shape[2] != int(image_size):
        raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]} but image_size is {image_size}: "
                         "extract frames with FrameSettings(image_size=...) at the backbone's size")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    folder = usable_cache_dir("embeddings") if cache else None
    path = (folder or Path(".")) / f"{_embedding_key(frames, backbone, image_size, weights, pooling)}.npy"
    if folder is not None:
        embeddings = read_cached_array(path, rows=len(frames))
        if embeddings is not None:
            if log:
                log(f"embeddings: {len(frames)} frames read from cache {path.name}")
            return embeddings
    import tensorflow as tf

    from covnb.backbones import feature_extractor

    started = time.perf_counter()
    model = feature_extractor(backbone, int(image_size), weights, pooling=pooling)
    call = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    chunks = [np.asarray(call(tf.convert_to_tensor(frames[i:i + batch_size], dtype=tf.float32)))
              for i in range(0, len(frames), int(batch_size))]
    dim = int(model.output.shape[-1])
    embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
    if folder is not None:
        write_cached_array(path, embeddings)
    if log:
        seconds = time.perf_counter() - started
        log(f"embeddings: {len(frames)} frames through {backbone} at {image_size}px in {seconds:.1f} s "
            f"({len(frames) / max(seconds, 1e-9):.0f} frames/s)")
    return embeddings


def sample_embeddings(embeddings: np.ndarray, index: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Mean frame embedding per sample (video or image): ``(X, table)``.

    ``index`` is a FrameSet's index (one row per frame, aligned with ``embeddings``); the table
    holds sample_id, label, group and n_frames, in first-appearance order.
    """
    embeddings = np.asarray(embeddings)
    if len(index) != len(embeddings):
        raise ValueError(f"index has {len(index)} rows but embeddings {len(embeddings)}: they must be aligned")
    sample_ids = np.asarray(index["sample_id"], dtype=str)
    unique, first, inverse = np.unique(sample_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    position = rank[inverse]
    sums = np.zeros((len(unique), embeddings.shape[1]), np.float64)
    np.add.at(sums, position, embeddings)
    counts = np.bincount(position, minlength=len(unique))
    table = pd.DataFrame({
        "sample_id": unique[order],
        "label": np.asarray(index["label"], dtype=str)[first[order]],
        "group": np.asarray(index["group"], dtype=str)[first[order]],
        "n_frames": counts,
    })
    return (sums / counts[:, None]).astype(np.float32), table
