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
#: Frames per embedding task on a cluster (rounded down to a multiple of the batch size).
EMBEDDING_ROWS_PER_TASK = 512


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
                       log: Callable[[str], None] | None = None, client=None,
                       rows_per_task: int = EMBEDDING_ROWS_PER_TASK) -> np.ndarray:
    """Frozen, pooled backbone features ``(N, D)`` float32 of raw RGB frames ``(N, S, S, 3)``.

    Uses :func:`covnb.backbones.feature_extractor` (preprocessing inside the model), called on
    batches inside one ``tf.function``. Cached under ``cache_dir("embeddings")``, keyed by a hash
    of the frames' bytes and the backbone settings; written atomically.

    ``client``: a :class:`distributed.Client` (:mod:`covnb.cluster`) whose workers compute parts of
    ``rows_per_task`` frames (rounded down to a multiple of ``batch_size``, so every batch is the
    one of a serial run and the embeddings are the same, byte for byte); the backbone's weights
    are sent from here once, so the workers need no weights file.
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
    from covnb.backbones import feature_extractor

    started = time.perf_counter()
    model = feature_extractor(backbone, int(image_size), weights, pooling=pooling)
    dim = int(model.output.shape[-1])
    if client is None:
        chunks = _embed(model, frames, int(batch_size))
    else:
        chunks = _embeddings_on_cluster(client, model, frames, backbone=backbone, image_size=int(image_size),
                                        pooling=pooling, batch_size=int(batch_size), rows_per_task=rows_per_task)
    embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
    if folder is not None:
        write_cached_array(path, embeddings)
    if log:
        seconds = time.perf_counter() - started
        where = " on the cluster" if client is not None else ""
        log(f"embeddings: {len(frames)} frames through {backbone} at {image_size}px{where} in {seconds:.1f} s "
            f"({len(frames) / max(seconds, 1e-9):.0f} frames/s)")
    return embeddings


def _embed(model, frames: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The model's outputs for ``frames``, batch by batch, inside one ``tf.function``."""
    import tensorflow as tf

    call = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    return [np.asarray(call(tf.convert_to_tensor(frames[i:i + batch_size], dtype=tf.float32)))
            for i in range(0, len(frames), batch_size)]


def _embedding_task(payload: dict, frames: np.ndarray) -> np.ndarray:
    """On a worker: the embeddings of a part of the frames (the model rebuilt once per computation)."""
    from covnb.cluster import worker_cached

    def build():
        from covnb.backbones import feature_extractor

        model = feature_extractor(payload["backbone"], payload["image_size"], None, pooling=payload["pooling"])
        model.set_weights(payload["weights"])
        return model

    chunks = _embed(worker_cached(payload["token"], build), frames, payload["batch_size"])
    return np.concatenate(chunks).astype(np.float32)


def _embeddings_on_cluster(client, model, frames: np.ndarray, *, backbone: str, image_size: int, pooling: str,
                           batch_size: int, rows_per_task: int) -> list[np.ndarray]:
    """The embeddings of ``frames`` in parts computed by the Dask workers of ``client``, in order."""
    from covnb.cluster import map_with_payload

    per_task = max(batch_size, int(rows_per_task) // batch_size * batch_size)
    starts = range(0, len(frames), per_task)
    payload = {"backbone": backbone, "image_size": image_size, "pooling": pooling, "batch_size": batch_size,
               "weights": model.get_weights()}
    return map_with_payload(client, _embedding_task, payload, [(frames[start:start + per_task],) for start in starts],
                            name="covnb-embeddings", payload_name="covnb-embedding-weights", keys=starts)


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
