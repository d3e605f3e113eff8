"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, overlays and CAM statistics.

Methods (all on the *logits*, never on softmax probabilities, whose gradients saturate):

- CAM, Zhou et al. 2016, "Learning Deep Features for Discriminative Localization": for a
  global-average-pooling + Dense head, the map of class c is ``sum_k w[k, c] * A_k``.
- Grad-CAM, Selvaraju et al. 2017: channel weights are the spatial mean of d logit_c / d A_k.
- Grad-CAM++, Chattopadhay et al. 2018: pixel-wise weighted positive gradients (closed form
  with the exponential-score trick; the exp(score) factor is a per-frame constant and cancels
  in the per-frame normalisation, so it is left out and cannot overflow).

Every map is ReLU'd and divided by its per-frame maximum (values 0..1, at the resolution of
the explained layer). Models are covnb's flat Keras 3 models (raw RGB 0..255 in, preprocessing
inside, a "logits" Dense followed by a softmax "probs" activation), or any Keras model whose
conv layers are reachable by name.

CAM statistics follow POCOVID-Net (Born et al., arXiv:2009.06116): peak of each heatmap after
a 19x19 box filter, scattered by class; covnb adds the fraction of heat inside the ultrasound
sector, which catches a model that looks at text, rulers or borders. The array-only parts
(post-processing, overlays, statistics) live in :mod:`covnb.heatmaps`, the layer look-up in
:mod:`covnb.cam_layers` and the compiled gradient computations in :mod:`covnb.cam_gradients`;
their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

import keras

from covnb.backbones import feature_map_layer_names, last_conv_layer_name  # noqa: F401 (API)
from covnb.cam_gradients import cam_function, forward_function
from covnb.cam_layers import (METHOD_ALIASES, METHODS, available_methods, cam_feature_layer_name,  # noqa: F401 (API)
                              canonical_method, conv_layer_names, explained_layer_name, logits_layer, resolve_layer,
                              single_output)
from covnb.frames import sector_mask  # noqa: F401 - part of this module's API (heat inside the sector)
from covnb.heatmaps import (apply_colormap, heat_inside_fraction, heatmap_peak, method_agreement,  # noqa: F401 (API)
                            normalize_heatmap, overlay, plot_peak_scatter, threshold_heatmap, upsample_heatmap)

__all__ = [
    "METHODS",
    "METHOD_ALIASES",
    "CamResult",
    "logits_layer",
    "conv_layer_names",
    "feature_map_layer_names",
    "last_conv_layer_name",
    "cam_feature_layer_name",
    "available_methods",
    "explained_layer_name",
    "resolve_layer",
    "predict_probs",
    "class_activation_map",
    "grad_cam",
    "grad_cam_plus_plus",
    "explain",
    "resize_frames",
    "normalize_heatmap",
    "upsample_heatmap",
    "threshold_heatmap",
    "apply_colormap",
    "overlay",
    "heatmap_peak",
    "cam_peaks",
    "sector_mask",
    "heat_inside_fraction",
    "plot_peak_scatter",
    "method_agreement",
]

@dataclasses.dataclass
class CamResult:
    """Heatmaps of a batch of frames and the model outputs they explain.

    heatmaps: (N, h, w) float32 in 0..1 at the explained layer's resolution.
    probs, logits: (N, C) model output and logits. class_index: (N,) explained class per frame.
    """

    heatmaps: np.ndarray
    probs: np.ndarray
    logits: np.ndarray
    class_index: np.ndarray
    layer: str
    method: str

    def __len__(self) -> int:
        return len(self.heatmaps)

    @property
    def predicted(self) -> np.ndarray:
        """(N,) predicted class per frame."""
        return self.probs.argmax(axis=-1)


# --------------------------------------------------------------------------------------------
# Public computations
# --------------------------------------------------------------------------------------------


def _as_batch(frames, model: keras.Model | None = None) -> np.ndarray:
    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be RGB images (N, H, W, 3) or one image (H, W, 3); got shape {array.shape}.")
    if model is not None:
        expected = tuple(model.input.shape[1:3])
        if all(size is not None for size in expected) and tuple(array.shape[1:3]) != expected:
            raise ValueError(
                f"frames are {array.shape[1]}x{array.shape[2]} but model {model.name!r} expects "
                f"{expected[0]}x{expected[1]}: resize them first (covnb.cam.resize_frames)."
            )
    return array.astype(np.float32, copy=False)


def resize_frames(frames, size: tuple[int, int] | int) -> np.ndarray:
    """Resize frames (N, H, W, 3) or one frame to ``size`` = (H, W) with area interpolation."""
    height, width = (size, size) if isinstance(size, int) else size
    array = np.asarray(frames)
    single = array.ndim == 3
    batch = array[None] if single else array
    if batch.shape[1:3] == (height, width):
        return array
    resized = np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in batch])
    return resized[0] if single else resized


def _class_array(class_index, n: int, n_classes: int | None) -> np.ndarray:
    if class_index is None:
        return np.full(n, -1, np.int32)
    array = np.asarray(class_index)
    if array.ndim == 0:
        array = np.full(n, int(array), np.int32)
    elif array.shape != (n,):
        raise ValueError(f"class_index must be None, an int or one int per frame ({n}); got shape {array.shape}.")
    array = array.astype(np.int32)
    if n_classes is not None and (array.min(initial=0) < -1 or array.max(initial=0) >= n_classes):
        raise ValueError(f"class_index out of range for {n_classes} classes: {np.unique(array).tolist()}")
    return array


def _n_classes(model: keras.Model) -> int | None:
    size = single_output(model).shape[-1]
    return int(size) if size is not None else None


def predict_probs(model: keras.Model, frames, batch_size: int = 32) -> np.ndarray:
    """Model output (N, C) for raw RGB frames, batched inside a compiled tf.function."""
    batch = _as_batch(frames, model)
    forward = forward_function(model)
    chunks = [np.asarray(forward(batch[start:start + batch_size])) for start in range(0, len(batch), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, _n_classes(model) or 0), np.float32)


def _run(model, frames, class_index, layer_name, method, batch_size, compiled) -> CamResult:
    batch = _as_batch(frames, model)
    classes = _class_array(class_index, len(batch), _n_classes(model))
    function = cam_function(model, layer_name, method, compiled)
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for start in range(0, len(batch), batch_size):
        outputs = function(batch[start:start + batch_size], classes[start:start + batch_size])
        for part, output in zip(parts, outputs):
            part.append(np.asarray(output))
    if not parts[0]:
        raise ValueError("frames is empty.")
    heatmaps, probs, logits, chosen = (np.concatenate(part) for part in parts)
    return CamResult(heatmaps.astype(np.float32), probs, logits, chosen.astype(np.int64), layer_name, method)


def class_activation_map(model: keras.Model, frames, *, class_index=None, layer: str | None = None,
                         batch_size: int = 16, compiled: bool = True) -> CamResult:
    """Class activation map (Zhou et al. 2016) for a GlobalAveragePooling2D + Dense head.

    The map of class c is the sum of the last feature maps weighted by the logits Dense
    weights of c. Raises ValueError for any other head, or when ``layer`` is not the layer that
    feeds the global average pooling.
    """
    feature_layer = cam_feature_layer_name(model)
    if layer is not None and resolve_layer(model, layer).name != feature_layer:
        raise ValueError(
            f"Classic CAM is defined on the maps feeding the global average pooling "
            f"({feature_layer!r}), not on {layer!r}; use Grad-CAM for other layers."
        )
    return _run(model, frames, class_index, feature_layer, "cam", batch_size, compiled)


def grad_cam(model: keras.Model, frames, *, class_index=None, layer: str | None = None,
             batch_size: int = 16, compiled: bool = True) -> CamResult:
    """Grad-CAM (Selvaraju et al. 2017) on the gradients of the logits.

    frames: raw RGB (N, H, W, 3) 0..255. class_index: None (predicted class per frame), an int,
    or one int per frame. layer: a layer name (default: the last conv feature map).
    ``compiled=False`` runs eagerly (slower; for comparison).
    """
    layer_name = resolve_layer(model, layer).name
    return _run(model, frames, class_index, layer_name, "gradcam", batch_size, compiled)


def grad_cam_plus_plus(model: keras.Model, frames, *, class_index=None, layer: str | None = None,
                       batch_size: int = 16, compiled: bool = True) -> CamResult:
    """Grad-CAM++ (Chattopadhay et al. 2018) on the gradients of the logits; arguments as grad_cam."""
    layer_name = resolve_layer(model, layer).name
    return _run(model, frames, class_index, layer_name, "gradcam++", batch_size, compiled)


def explain(model: keras.Model, frames, *, method: str = "gradcam", class_index=None, layer: str | None = None,
            batch_size: int = 16, compiled: bool = True) -> CamResult:
    """Class activation maps of ``frames`` by ``method`` (computed on the logits, never on softmax).

    Parameters
    ----------
    model : keras.Model
        A flat Keras model (raw RGB 0..255 in; a ``logits`` layer, or a final Dense, before the softmax).
    frames : array (N, H, W, 3) or (H, W, 3)
        Raw RGB frames (0..255) at the model's input size (:func:`resize_frames` otherwise).
    method : {"gradcam", "gradcam++", "cam"}
        Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018) or CAM (Zhou et al.
        2016; needs a global-average-pooling + Dense head). Spellings such as "grad-cam" are accepted.
    class_index : int or array of int, optional
        Class to explain, per batch or per frame; default the predicted class of each frame.
    layer : str, optional
        Layer to explain; default the last conv feature map (:func:`last_conv_layer_name`; for CAM
        the layer feeding the global pooling).
    batch_size : int
        Frames per model call.
    compiled : bool
        Run inside a ``tf.function`` cached per model, layer and method (faster after the first call).

    Returns
    -------
    CamResult
        Heatmaps (N, h, w) in 0..1 at the layer's resolution, probabilities, logits, explained classes.

    Examples
    --------
    >>> result = explain(model, frames, method="gradcam++", layer="top_activation")  # doctest: +SKIP
    >>> overlay(frames[0], result.heatmaps[0], alpha=0.4)  # doctest: +SKIP
    """
    function = {"gradcam": grad_cam, "gradcam++": grad_cam_plus_plus, "cam": class_activation_map}[canonical_method(method)]
    return function(model, frames, class_index=class_index, layer=layer, batch_size=batch_size, compiled=compiled)


# --------------------------------------------------------------------------------------------
# CAM statistics (POCOVID-Net evaluation) and the ultrasound sector
# --------------------------------------------------------------------------------------------


def _frames_and_index(frames) -> tuple[np.ndarray, pd.DataFrame | None]:
    if hasattr(frames, "frames") and hasattr(frames, "index"):  # covnb.frames.FrameSet
        return np.asarray(frames.frames), frames.index.reset_index(drop=True)
    return np.asarray(frames), None


def _peak_row(i: int, array: np.ndarray, result: CamResult, index: pd.DataFrame | None, class_names,
              box: int) -> dict:
    """The :func:`cam_peaks` row of frame ``i``."""
    height, width = array.shape[1:3]
    heatmap = result.heatmaps[i]
    x, y = heatmap_peak(heatmap, box=box, frame_size=(height, width))
    chosen = int(result.class_index[i])
    known = set(index) if index is not None else set()
    row = {
        "sample": index["sample_id"].iloc[i] if "sample_id" in known else i,
        "frame": int(index["frame_index"].iloc[i]) if "frame_index" in known else i,
        "class": class_names[chosen] if class_names is not None else chosen,
        "class_index": chosen,
        "prob": float(result.probs[i, chosen]),
        "peak_x": (x + 0.5) / width,
        "peak_y": (y + 0.5) / height,
        "inside": heat_inside_fraction(heatmap, sector_mask(array[i])),
    }
    if "label" in known:
        row["label"] = index["label"].iloc[i]
    return row


def cam_peaks(model: keras.Model | None, frames, *, index: pd.DataFrame | None = None,
              class_names: Sequence[str] | None = None, method: str = "gradcam", class_index=None,
              layer: str | None = None, box: int = 19, batch_size: int = 16,
              result: CamResult | None = None) -> pd.DataFrame:
    """Heatmap peak of every frame, POCOVID-Net style: one row per frame.

    frames: (N, H, W, 3) raw RGB at the model's input size, or a covnb FrameSet. index: optional
    table with ``sample_id``, ``frame_index`` and ``label`` columns (a FrameSet brings its own).
    result: heatmaps already computed by :func:`explain` for these frames (then ``model``,
    ``method``, ``class_index`` and ``layer`` are not used and ``model`` may be None).
    Columns: sample, frame, label (when known), class (explained class), class_index, prob,
    peak_x, peak_y (0..1 of the frame width / height, y downwards), inside (heat fraction inside
    the ultrasound sector).
    """
    array, own_index = _frames_and_index(frames)
    index = own_index if index is None else index.reset_index(drop=True)
    if index is not None and len(index) != len(array):
        raise ValueError(f"index has {len(index)} rows but there are {len(array)} frames.")
    if result is None:
        if model is None:
            raise ValueError("cam_peaks needs a model or a precomputed result.")
        result = explain(model, array, method=method, class_index=class_index, layer=layer, batch_size=batch_size)
    elif len(result) != len(array):
        raise ValueError(f"result has {len(result)} heatmaps but there are {len(array)} frames.")
    rows = [_peak_row(i, array, result, index, class_names, box) for i in range(len(result.heatmaps))]
    columns = ["sample", "frame", "label", "class", "class_index", "prob", "peak_x", "peak_y", "inside"]
    table = pd.DataFrame(rows)
    return table[[column for column in columns if column in table]]
