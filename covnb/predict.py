"""Apply a saved covnb model to videos, images or folders: per-frame and per-video probabilities.

Frames are taken exactly as in training (:mod:`covnb.frames`, with the frame rate, frame
count, size, crop and CLAHE stored in the model's sidecar JSON). Frames of several files are
batched together and the model is called inside one ``tf.function``; the next files are decoded
in worker threads while the model runs (``model.predict`` adds tens of milliseconds per call).
A file that cannot be read is reported in ``errors``; the others are still predicted. Video
level: mean frame probability (and the majority vote), the two rules of POCOVID-Net (Born et
al., arXiv:2004.12084).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import keras

from covnb.aggregate import video_level
from covnb.compiled import cached_for_model
from covnb.frames import FrameCache, FrameError, frame_settings_from_metadata, read_frames  # noqa: F401 (API)
from covnb.io_utils import atomic_write_text, error_reason
from covnb.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from covnb.models import load_model
from covnb.prediction_trust import annotate_predictions, load_trust_arrays
from covnb.registry import HEAD_FEATURES

__all__ = ["Predictions", "predict_paths", "frame_settings_from_metadata", "expand_paths",
           "OutputInsideInputError", "refuse_output_inside_inputs"]


class OutputInsideInputError(ValueError):
    """An output path inside an input folder (covnb never writes into input folders)."""


def refuse_output_inside_inputs(out, inputs, what: str = "output") -> None:
    """Raise :class:`OutputInsideInputError` when ``out`` lies inside an input folder or is the
    folder of an input file (or an input file itself)."""
    resolved = Path(out).expanduser().resolve()
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if item.is_dir() and (resolved == item or item in resolved.parents):
            raise OutputInsideInputError(f"{what} {out} is inside the input folder {item}: choose another --out "
                                         "(covnb never writes into input folders)")
        if item.is_file() and (resolved == item or resolved == item.parent):
            raise OutputInsideInputError(f"{what} {out} is {'the input' if resolved == item else 'the folder of the input'} "
                                         f"{item}: choose another --out (covnb never writes into input folders)")


@dataclasses.dataclass
class Predictions:
    """``frames``: one row per frame; ``videos``: one row per file; ``errors``: path, reason."""

    frames: pd.DataFrame
    videos: pd.DataFrame
    errors: pd.DataFrame
    classes: list[str]

    def to_csv(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the per-file table to ``path``, the per-frame table to ``<stem>_frames.csv`` and the
        files that were skipped, with why, to ``<stem>_skipped.csv``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        frames_path = path.with_name(f"{path.stem}_frames{path.suffix or '.csv'}")
        self.videos.to_csv(path, index=False)
        self.frames.to_csv(frames_path, index=False)
        self.errors.to_csv(path.with_name(f"{path.stem}_skipped{path.suffix or '.csv'}"), index=False)
        return path, frames_path

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text with classes, videos, frames and errors (written to ``path`` when given)."""
        payload = {"classes": self.classes,
                   "videos": json.loads(self.videos.to_json(orient="records")),
                   "frames": json.loads(self.frames.to_json(orient="records")),
                   "errors": json.loads(self.errors.to_json(orient="records"))}
        text = json.dumps(payload, indent=2)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        return text


def expand_paths(paths) -> tuple[list[Path], list[dict]]:
    """Files to predict (folders searched recursively for videos/images) and missing paths."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    media = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    files, errors = [], []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in media
                           and not p.name.startswith("."))
            if not found:
                errors.append({"path": str(item), "reason": "folder holds no video or image file"})
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            errors.append({"path": str(item), "reason": "no such file or folder"})
    return files, errors


def predict_paths(model_path, paths, *, batch_size: int = 32, use_cache: bool = False,
                  log=None, raw_probabilities: bool = False) -> Predictions:
    """Class probabilities of every frame and every file in ``paths`` (files and/or folders).

    Parameters
    ----------
    model_path : path or (keras.Model, dict)
        A ``.keras`` file (with its sidecar JSON), a folder holding one, or an already loaded
        ``(model, metadata)`` pair.
    paths : path or list of paths
        Videos, images and folders (searched recursively).
    batch_size : int
        Frames per model call (frames of several files are batched together).
    use_cache : bool
        Keep decoded frames in covnb's frame cache (:class:`covnb.frames.FrameCache`).
    log : callable, optional
        Called with a line per skipped file.
    raw_probabilities : bool
        Skip the calibration map of the sidecar (``calibration`` block, :mod:`covnb.calibration`).

    Returns
    -------
    Predictions
        ``frames`` (one row per frame), ``videos`` (one row per file: mean frame probability, majority
        vote, ``confidence``, ``uncertainty``, and with the model's ``trust`` block the ``uncertain``
        flag and its reason, :func:`covnb.prediction_trust.annotate_predictions`) and ``errors``
        (unreadable files, with why; the others are still predicted).

    Examples
    --------
    >>> result = predict_paths("runs/pocus/model.keras", ["clips/"], batch_size=16)  # doctest: +SKIP
    >>> result.videos[["path", "pred", "confidence", "uncertain"]]  # doctest: +SKIP
    """
    model, metadata, arrays = _model_and_trust_arrays(model_path)
    with_features = bool(arrays) and HEAD_FEATURES in [layer.name for layer in model.layers]
    classes = [str(c) for c in metadata["classes"]]
    settings = frame_settings_from_metadata(metadata)
    size = int(model.input.shape[1])
    if int(settings.image_size) != size:
        raise ValueError(f"model input is {size} px but its metadata says image_size {settings.image_size}")
    batches = _Batches(_inference_function(model, size, with_features), int(batch_size), with_features)
    cache = FrameCache() if use_cache else None
    files, errors = expand_paths(paths)
    frame_rows = []
    read = (lambda path: cache.get(path, settings)) if cache else (lambda path: read_frames(path, settings))
    for path, result, error in _read_ahead(files, read, (FrameError, OSError, cv2.error, ValueError)):
        if error is not None:
            reason = error_reason(error, path)
            errors.append({"path": str(path), "reason": reason})
            if log:
                log(f"skipped {path}: {reason}")
            continue
        frames, info = result
        kind = "image" if info.get("fps_source") == "image" else "video"
        for frame_index, time_s in zip(info["frame_index"], info["time_s"]):
            frame_rows.append({"path": str(path), "kind": kind, "frame_index": int(frame_index),
                               "time_s": float(time_s)})
        batches.add(frames)
    batches.flush()
    probs = np.concatenate(batches.outputs) if batches.outputs else np.zeros((0, len(classes)), np.float32)
    frame_table = _frame_table(frame_rows, probs, classes)
    video_table = _video_table(frame_table, classes)
    frame_table, video_table = annotate_predictions(
        frame_table, video_table, classes, metadata, arrays=arrays, raw=raw_probabilities,
        frame_features=np.concatenate(batches.features) if batches.features else None)
    error_table = pd.DataFrame(errors, columns=["path", "reason"])
    return Predictions(frame_table, video_table, error_table, classes)


def _model_and_trust_arrays(model_path) -> tuple:
    """(model, metadata, trust arrays or None) of a model file, a folder holding one, or a loaded pair."""
    if isinstance(model_path, tuple):  # a loaded (model, metadata) pair may carry the trust arrays third
        model, metadata, *loaded_arrays = model_path
        return model, metadata, (loaded_arrays[0] if loaded_arrays and metadata.get("trust") else None)
    model, metadata = load_model(model_path)
    return model, metadata, load_trust_arrays(model_path) if metadata.get("trust") else None


class _Batches:
    """Frames of several files gathered into batches of ``batch_size`` for one compiled ``call``."""

    def __init__(self, call, batch_size: int, with_features: bool):
        self.call, self.batch_size, self.with_features = call, batch_size, with_features
        self.pending: list[np.ndarray] = []
        self.buffered = 0
        self.outputs: list[np.ndarray] = []
        self.features: list[np.ndarray] = []

    def add(self, frames: np.ndarray) -> None:
        start = 0
        while start < len(frames):
            take = min(self.batch_size - self.buffered, len(frames) - start)
            self.pending.append(frames[start:start + take])
            self.buffered += take
            start += take
            if self.buffered >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        import tensorflow as tf

        if self.pending:
            result = self.call(tf.constant(np.concatenate(self.pending), dtype=tf.float32))
            if self.with_features:
                result, features = result
                self.features.append(np.asarray(features))
            self.outputs.append(np.asarray(result))
            self.pending.clear()
        self.buffered = 0


def _frame_table(frame_rows: list[dict], probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    frame_table = pd.DataFrame(frame_rows, columns=["path", "kind", "frame_index", "time_s"])
    for k, column in enumerate(f"prob_{c}" for c in classes):
        frame_table[column] = probs[:, k] if len(probs) else []
    frame_table["pred"] = np.asarray(classes)[probs.argmax(axis=1)] if len(probs) else []
    return frame_table


def _read_ahead(files, read, expected_errors, depth: int = 4, workers: int = 2):
    """Yield ``(path, read(path), None)`` or ``(path, None, error)`` in order, decoding up to
    ``depth`` files ahead in ``workers`` threads while the caller runs the model (OpenCV decoding
    and TensorFlow both release the GIL, so they overlap). Decoding every frame of a 30-60 fps
    video to keep 3 per second costs more CPU than the model itself: on 2 cores two decoding
    threads gave 92-96 frames/s against 74-79 with one (20 videos, EfficientNet-Lite0 224 px)."""
    queue = collections.deque()
    remaining = iter(files)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="covnb-decode") as pool:
        for path in remaining:
            queue.append((path, pool.submit(read, path)))
            if len(queue) >= depth:
                break
        while queue:
            path, future = queue.popleft()
            following = next(remaining, None)
            if following is not None:
                queue.append((following, pool.submit(read, following)))
            try:
                result = future.result()
            except expected_errors as error:
                yield path, None, error
                continue
            yield path, result, None


def _inference_function(model, size: int, with_features: bool = False):
    """One traced ``tf.function`` per model (tracing costs about a second; reuse it across calls).

    ``with_features``: it returns ``(probabilities, head_features)`` (for the uncertainty signals)."""
    def build():
        import tensorflow as tf

        target = keras.Model(model.input, [model.output, model.get_layer(HEAD_FEATURES).output]) \
            if with_features else model
        return tf.function(lambda x: target(x, training=False),
                           input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])

    return cached_for_model(model, ("predict", with_features), build)


def _video_table(frames: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    columns = [f"prob_{c}" for c in classes]
    if frames.empty:
        return pd.DataFrame(columns=["path", "kind", "n_frames", *columns, "pred", "pred_vote", "vote_fraction"])
    videos = video_level(frames, columns, ["path"], carry=("kind",)).set_index("path")
    videos = videos[["kind", "n_frames", *columns]]
    videos["pred"] = np.asarray(classes)[videos[columns].to_numpy().argmax(axis=1)]
    # Majority vote, ties broken by the mean probability.
    vote_counts = frames.pivot_table(index="path", columns="pred", values="frame_index", aggfunc="count",
                                     fill_value=0).reindex(columns=classes, fill_value=0).reindex(videos.index)
    tie_break = vote_counts.to_numpy() + 1e-6 * videos[columns].to_numpy()
    videos["pred_vote"] = np.asarray(classes)[tie_break.argmax(axis=1)]
    videos["vote_fraction"] = vote_counts.max(axis=1).to_numpy() / videos["n_frames"].to_numpy()
    return videos.reset_index()
