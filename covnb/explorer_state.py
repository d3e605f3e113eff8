"""What the CAM explorer computes and keeps, without any widget: the frames at the model's input
size, the per-frame class probabilities (calibrated as ``covnb predict`` reports them), the whole
file's summary with its ``uncertain`` flag, and a least-recently-used cache of heatmaps keyed by
(sample, frame, layer, class, method), so that opacity, colormap and threshold only re-blend.

Heatmaps come from :func:`covnb.cam.explain` (Grad-CAM, Selvaraju et al. 2017; Grad-CAM++,
Chattopadhay et al. 2018; CAM, Zhou et al. 2016). :class:`covnb.widgets.CamExplorer` builds its
controls on top of :class:`ExplorerCache`.
"""

from __future__ import annotations

import collections
import time
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

import keras

from covnb import cam
from covnb.calibration import calibrate_file_probabilities
from covnb.prediction_trust import annotate_predictions
from covnb.registry import HEAD_FEATURES

__all__ = ["ExplorerCache", "PREDICTED", "check_samples", "png_bytes"]

#: The class value meaning "the predicted class of the frame".
PREDICTED = -1


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB image (fast compression: the explorer encodes one per redraw)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]  # fast, still small
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def check_samples(samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``samples`` as name -> uint8 frames (T, H, W, 3) (one image becomes T=1); ValueError naming the bad sample."""
    if not isinstance(samples, Mapping) or not samples:
        raise ValueError("samples must be a non-empty dict: name -> frames (T, H, W, 3) uint8.")
    checked = {}
    for name, frames in samples.items():
        array = np.asarray(frames)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or len(array) == 0:
            raise ValueError(f"Sample {name!r}: frames must be (T, H, W, 3) RGB or one image (H, W, 3); "
                             f"got shape {np.asarray(frames).shape}.")
        if array.dtype != np.uint8:
            if array.min() < 0 or array.max() > 255:
                raise ValueError(f"Sample {name!r}: pixel values must be 0..255 (uint8 RGB); got "
                                 f"{array.min()}..{array.max()}.")
            array = np.rint(array).astype(np.uint8)
        checked[str(name)] = array
    return checked


class ExplorerCache:
    """Frames, probabilities, file summaries and heatmaps of a set of samples for one model, cached.

    Parameters
    ----------
    model : keras.Model
        A flat Keras model (raw RGB 0..255 in, logits + softmax out).
    samples : dict of str to ndarray
        Name -> uint8 frames (T, H, W, 3) (an image is T=1).
    class_names : sequence of str
        One per model output.
    batch_size : int
        Frames per model call.
    max_cached_heatmaps : int
        Heatmaps kept in memory (least recently used ones go first).
    calibration, metadata, trust_arrays : dict, optional
        As :class:`covnb.widgets.CamExplorer`: the sidecar's calibration block, the whole sidecar and
        the trust arrays, for calibrated probabilities and the ``uncertain`` flag.
    """

    def __init__(self, model: keras.Model, samples: Mapping[str, np.ndarray], class_names: Sequence[str], *,
                 batch_size: int = 16, max_cached_heatmaps: int = 512, calibration: dict | None = None,
                 metadata: dict | None = None, trust_arrays: dict | None = None):
        self.model = model
        self.metadata = dict(metadata or {})
        if calibration is None:
            calibration = self.metadata.get("calibration")
        self.calibration = calibration  # a model sidecar's "calibration" block: probabilities shown calibrated
        self.trust_arrays = trust_arrays
        self.samples = check_samples(samples)
        self.class_names = [str(name) for name in class_names]
        n_outputs = model.outputs[0].shape[-1]
        if n_outputs is not None and len(self.class_names) != int(n_outputs):
            raise ValueError(f"class_names has {len(self.class_names)} names but model {model.name!r} "
                             f"outputs {n_outputs} classes.")
        self.batch_size = int(batch_size)
        self.methods = cam.available_methods(model)
        self.cam_layer = cam.cam_feature_layer_name(model) if "cam" in self.methods else None
        self._input_size = tuple(model.input.shape[1:3])
        self._summaries: dict[str, dict] = {}
        self._model_frames: dict[str, np.ndarray] = {}
        self._probs: dict[str, np.ndarray] = {}
        self._raw_probs: dict[str, np.ndarray] = {}
        self._heatmaps: collections.OrderedDict = collections.OrderedDict()
        self._max_cached = int(max_cached_heatmaps)
        self._inside: dict[tuple, float] = {}
        self._sectors: dict[str, np.ndarray] = {}
        #: Wall time (ms) of the last heatmap computation, overlay render and plot render.
        self.timings = {"heatmap": 0.0, "overlay": 0.0, "plot": 0.0}
        self.stats = {"model_calls": 0, "heatmaps_computed": 0, "heatmap_cache_hits": 0,
                      "overlay_renders": 0, "plot_renders": 0}

    def model_frames(self, sample: str) -> np.ndarray:
        """Frames of ``sample`` resized to the model input (cached)."""
        if sample not in self._model_frames:
            frames = self.samples[sample]
            if all(size is not None for size in self._input_size):
                frames = cam.resize_frames(frames, self._input_size)
            self._model_frames[sample] = frames
        return self._model_frames[sample]

    def probabilities(self, sample: str) -> np.ndarray:
        """(T, C) class probabilities of every frame of ``sample``: one batched pass, then cached."""
        if sample not in self._probs:
            self.stats["model_calls"] += 1
            self._raw_probs[sample] = cam.predict_probs(self.model, self.model_frames(sample), batch_size=self.batch_size)
            self._probs[sample] = calibrate_file_probabilities({"calibration": self.calibration},
                                                               self._raw_probs[sample])[0]
        return self._probs[sample]

    def file_summary(self, sample: str) -> dict:
        """The whole file as ``covnb predict`` reports it: ``probabilities`` (the video map on the mean
        raw frame probability), ``predicted``, ``probability``, ``label`` ("calibrated (<method>)" or
        "raw"), and with the model's ``trust`` block ``uncertain`` and ``reason``
        (:func:`covnb.prediction_trust.annotate_predictions`)."""
        if sample not in self._summaries:
            frames = self.model_frames(sample)
            features = None
            if self.trust_arrays and HEAD_FEATURES in [layer.name for layer in self.model.layers]:
                tap = keras.Model(self.model.input, self.model.get_layer(HEAD_FEATURES).output)
                features = np.asarray(tap.predict(np.asarray(frames, dtype="float32"), batch_size=self.batch_size,
                                                  verbose=0))
            self.probabilities(sample)
            raw = self._raw_probs[sample]
            columns = {f"prob_{name}": raw[:, k] for k, name in enumerate(self.class_names)}
            frame_table = pd.DataFrame({"path": sample, "frame_index": np.arange(len(raw)), **columns})
            video_table = pd.DataFrame({"path": [sample], **{c: [v.mean()] for c, v in columns.items()}})
            metadata = {**self.metadata, "calibration": self.calibration}
            _, videos = annotate_predictions(frame_table, video_table, self.class_names, metadata,
                                             frame_features=features, arrays=self.trust_arrays)
            row = videos.iloc[0]
            probs = np.array([row[f"prob_{name}"] for name in self.class_names], dtype=float)
            self._summaries[sample] = {
                "probabilities": probs, "predicted": self.class_names[int(probs.argmax())],
                "probability": float(probs.max()), "label": str(row["probabilities"]),
                "uncertain": bool(row["uncertain"]) if "uncertain" in row else None,
                "reason": str(row.get("uncertain_reason", "") or "")}
        return self._summaries[sample]

    def cached_heatmap(self, sample: str, frame: int, *, layer: str, class_index: int, method: str) -> np.ndarray:
        """Heatmap (h, w) 0..1 at conv resolution of one frame (``class_index`` may be :data:`PREDICTED`). Cached."""
        layer = self.cam_layer if method == "cam" else layer
        if class_index == PREDICTED:
            class_index = int(self.probabilities(sample)[frame].argmax())
        key = (sample, frame, layer, int(class_index), method)
        if key in self._heatmaps:
            self.stats["heatmap_cache_hits"] += 1
            self._heatmaps.move_to_end(key)
            return self._heatmaps[key]
        self.stats["model_calls"] += 1
        self.stats["heatmaps_computed"] += 1
        frames = self.model_frames(sample)[frame:frame + 1]
        start = time.perf_counter()
        result = cam.explain(self.model, frames, method=method, class_index=int(class_index), layer=layer)
        self.timings["heatmap"] = (time.perf_counter() - start) * 1000.0
        self._heatmaps[key] = result.heatmaps[0]
        while len(self._heatmaps) > self._max_cached:
            self._heatmaps.popitem(last=False)
        return self._heatmaps[key]

    def sector(self, sample: str) -> np.ndarray:
        """Ultrasound sector mask of ``sample`` (over all its frames: the sector does not move)."""
        if sample not in self._sectors:
            self._sectors[sample] = cam.sector_mask(self.samples[sample])
        return self._sectors[sample]

    def cached_heat_inside(self, key: tuple, heatmap: np.ndarray, sample: str) -> float:
        """Fraction of ``heatmap`` inside the sector of ``sample``, cached under ``key``."""
        if key not in self._inside:
            self._inside[key] = cam.heat_inside_fraction(heatmap, self.sector(sample))
        return self._inside[key]
