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
(post-processing, overlays, statistics) live in :mod:`covnb.heatmaps` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import pandas as pd

import keras

from covnb.backbones import (check_flat, feature_map_layer_names,  # noqa: F401 (API)
                             last_conv_layer_name, layer_output_rank)
from covnb.compiled import cached_for_model, compiled_call
from covnb.frames import sector_mask  # noqa: F401 - part of this module's API (heat inside the sector)
from covnb.heatmaps import (apply_colormap, heat_inside_fraction, heatmap_peak, method_agreement,  # noqa: F401 (API)
                            normalize_heatmap, overlay, plot_peak_scatter, threshold_heatmap, upsample_heatmap)
from covnb.registry import LOGITS

__all__ = [
    "METHODS",
    "CamResult",
    "logits_layer",
    "conv_layer_names",
    "feature_map_layer_names",
    "last_conv_layer_name",
    "cam_feature_layer_name",
    "available_methods",
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

#: Canonical method names, and the spellings ``explain`` accepts for them.
METHODS = ("gradcam", "gradcam++", "cam")
_METHOD_ALIASES = {
    "gradcam": "gradcam", "grad-cam": "gradcam", "grad_cam": "gradcam",
    "gradcam++": "gradcam++", "grad-cam++": "gradcam++", "gradcampp": "gradcam++",
    "gradcamplusplus": "gradcam++", "grad_cam_plus_plus": "gradcam++",
    "cam": "cam", "class_activation_map": "cam",
}

_CONV_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)
# Layers allowed between global average pooling and the logits Dense in a CAM head.
_IDENTITY_AT_INFERENCE = (keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise)


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
# Finding the layers: logits, conv layers, the CAM head
# --------------------------------------------------------------------------------------------


def _check_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"covnb.cam needs the TensorFlow backend of Keras (GradientTape); KERAS_BACKEND is "
            f"{keras.backend.backend()!r}."
        )


def _producer(tensor) -> keras.layers.Layer | None:
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history else None


def _activation_name(layer) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


def _single_output(model: keras.Model):
    outputs = model.outputs
    if len(outputs) != 1:
        raise ValueError(f"Model {model.name!r} has {len(outputs)} outputs; CAM needs exactly one.")
    return outputs[0]


def logits_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces the logits of ``model``.

    Looks, in order, for a layer named "logits"; the layer feeding a final softmax activation;
    the final Dense (with a linear or a built-in softmax activation: in the latter case the
    logits are recomputed from its input, kernel and bias); the last linear Dense.
    """
    try:
        return model.get_layer(LOGITS)
    except ValueError:
        pass
    final = _producer(_single_output(model))
    if final is not None and _activation_name(final) == "softmax" and not isinstance(final, keras.layers.Dense):
        before = _producer(final.input)
        if before is not None:
            return before
    if isinstance(final, keras.layers.Dense) and _activation_name(final) in ("linear", "softmax"):
        return final
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense) and _activation_name(layer) == "linear":
            return layer
    raise ValueError(
        f"Cannot find the logits of model {model.name!r}: name the last Dense layer 'logits' "
        "(linear activation) and follow it with a softmax Activation."
    )


def _logits_source(model: keras.Model) -> tuple[Any, Callable | None]:
    """(symbolic tensor, function turning its value into logits or None)."""
    layer = logits_layer(model)
    if isinstance(layer, keras.layers.Dense) and _activation_name(layer) == "softmax":
        def to_logits(features, dense=layer):
            logits = keras.ops.matmul(features, dense.kernel)
            return logits + dense.bias if dense.use_bias else logits

        return layer.input, to_logits
    return layer.output, None


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the convolution layers (Conv2D, depthwise, separable), in model order."""
    return [layer.name for layer in model.layers if isinstance(layer, _CONV_TYPES)]


def _resolve_layer(model: keras.Model, layer: str | None) -> keras.layers.Layer:
    check_flat(model)
    if layer is None:
        return model.get_layer(last_conv_layer_name(model))
    if not isinstance(layer, str):
        layer = getattr(layer, "name", layer)
    try:
        found = model.get_layer(layer)
    except ValueError:
        raise ValueError(
            f"Layer {layer!r} not found in model {model.name!r}. Conv layers: "
            f"{', '.join(conv_layer_names(model)) or '(none)'}"
        ) from None
    if layer_output_rank(found) != 4:
        raise ValueError(
            f"Layer {layer!r} of model {model.name!r} has no 4-D feature map output "
            f"({getattr(found.output, 'shape', '?')}). Conv layers: {', '.join(conv_layer_names(model))}"
        )
    return found


def cam_feature_layer_name(model: keras.Model) -> str:
    """Name of the layer whose maps feed GlobalAveragePooling2D -> (Dropout) -> logits Dense.

    Raises ValueError when the head is not GAP + Dense: classic CAM (Zhou et al. 2016) is
    defined for that head only; use Grad-CAM otherwise.
    """
    dense = logits_layer(model)
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(f"CAM needs a Dense logits layer; model {model.name!r} has {type(dense).__name__} {dense.name!r}.")
    producer = _producer(dense.input)
    path = [dense.name]
    while isinstance(producer, _IDENTITY_AT_INFERENCE):
        path.append(producer.name)
        producer = _producer(producer.input)
    if not isinstance(producer, keras.layers.GlobalAveragePooling2D) or producer.keepdims:
        what = "nothing" if producer is None else f"{type(producer).__name__} {producer.name!r}"
        raise ValueError(
            f"Classic CAM needs a GlobalAveragePooling2D -> Dense head, but the logits layer "
            f"{dense.name!r} of model {model.name!r} is fed by {what}. Use method='gradcam' or "
            "'gradcam++', which work for any head."
        )
    feature_layer = _producer(producer.input)
    if feature_layer is None:
        raise ValueError(f"Cannot find the layer feeding {producer.name!r} in model {model.name!r}.")
    return feature_layer.name


def available_methods(model: keras.Model) -> list[str]:
    """Methods that apply to ``model``: Grad-CAM and Grad-CAM++ always, CAM with a GAP head."""
    try:
        cam_feature_layer_name(model)
        return list(METHODS)
    except ValueError:
        return ["gradcam", "gradcam++"]


# --------------------------------------------------------------------------------------------
# Compiled computations (one tf.function per model, layer and method)
# --------------------------------------------------------------------------------------------

def _input_spec(model: keras.Model):
    import tensorflow as tf

    shape = tuple(model.input.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"Model {model.name!r} input must be (batch, H, W, 3) RGB; got {shape}.")
    return tf.TensorSpec((None,) + shape[1:], tf.float32)


def _build_function(model: keras.Model, layer_name: str, method: str, compiled: bool):
    import tensorflow as tf

    _check_backend()
    if isinstance(model.input, (list, tuple, dict)):
        raise ValueError(f"Model {model.name!r} has several inputs; CAM needs a single image input.")
    conv_layer = model.get_layer(layer_name)
    logits_tensor, to_logits = _logits_source(model)
    probs_tensor = _single_output(model)
    grad_model = keras.Model(model.input, [conv_layer.output, logits_tensor, probs_tensor])
    dense = logits_layer(model) if method == "cam" else None

    def pick(logits, class_index):
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.where(class_index < 0, predicted, class_index)

    def normalise(maps):
        maps = tf.nn.relu(maps)
        peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(maps, peak)

    if method == "cam":
        def run(frames, class_index):
            features, source, probs = grad_model(frames, training=False)
            logits = to_logits(source) if to_logits else source
            chosen = pick(logits, class_index)
            class_weights = tf.gather(tf.transpose(tf.convert_to_tensor(dense.kernel)), chosen)  # (N, K)
            maps = tf.einsum("nhwk,nk->nhw", features, class_weights)
            return normalise(maps), probs, logits, chosen
    else:
        def run(frames, class_index):
            with tf.GradientTape() as tape:
                features, source, probs = grad_model(frames, training=False)
                logits = to_logits(source) if to_logits else source
                chosen = pick(logits, class_index)
                # Frames are independent at inference, so the gradient of the summed scores
                # gives every frame the gradient of its own score.
                score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
            grads = tape.gradient(score, features)
            if method == "gradcam":
                weights = tf.reduce_mean(grads, axis=(1, 2))  # (N, K)
            else:  # gradcam++
                grads_2 = tf.square(grads)
                grads_3 = grads_2 * grads
                feature_sum = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
                denominator = 2.0 * grads_2 + feature_sum * grads_3
                denominator = tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
                alphas = grads_2 / denominator
                weights = tf.reduce_sum(alphas * tf.nn.relu(grads), axis=(1, 2))
            maps = tf.einsum("nhwk,nk->nhw", features, weights)
            return normalise(maps), probs, logits, chosen

    if not compiled:
        return run
    return tf.function(run, input_signature=[_input_spec(model), tf.TensorSpec((None,), tf.int32)],
                       reduce_retracing=True)


def _function(model: keras.Model, layer_name: str, method: str, compiled: bool = True):
    if not compiled:
        return _build_function(model, layer_name, method, compiled=False)
    return cached_for_model(model, ("cam", layer_name, method),
                            lambda: _build_function(model, layer_name, method, compiled=True))


def _forward_function(model: keras.Model):
    _single_output(model)  # a clear error for multi-output models
    return compiled_call(model, ("cam", "forward"), lambda frames: model(frames, training=False),
                         [_input_spec(model)], reduce_retracing=True)


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
    size = _single_output(model).shape[-1]
    return int(size) if size is not None else None


def predict_probs(model: keras.Model, frames, batch_size: int = 32) -> np.ndarray:
    """Model output (N, C) for raw RGB frames, batched inside a compiled tf.function."""
    batch = _as_batch(frames, model)
    forward = _forward_function(model)
    chunks = [np.asarray(forward(batch[start:start + batch_size])) for start in range(0, len(batch), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, _n_classes(model) or 0), np.float32)


def _run(model, frames, class_index, layer_name, method, batch_size, compiled) -> CamResult:
    batch = _as_batch(frames, model)
    classes = _class_array(class_index, len(batch), _n_classes(model))
    function = _function(model, layer_name, method, compiled)
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
    if layer is not None and _resolve_layer(model, layer).name != feature_layer:
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
    layer_name = _resolve_layer(model, layer).name
    return _run(model, frames, class_index, layer_name, "gradcam", batch_size, compiled)


def grad_cam_plus_plus(model: keras.Model, frames, *, class_index=None, layer: str | None = None,
                       batch_size: int = 16, compiled: bool = True) -> CamResult:
    """Grad-CAM++ (Chattopadhay et al. 2018) on the gradients of the logits; arguments as grad_cam."""
    layer_name = _resolve_layer(model, layer).name
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
    canonical = _METHOD_ALIASES.get(str(method).lower())
    if canonical is None:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of {', '.join(METHODS)}.")
    function = {"gradcam": grad_cam, "gradcam++": grad_cam_plus_plus, "cam": class_activation_map}[canonical]
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


#: Public names for notebook 04 and the explorer: the accepted method spellings, and the layer a method explains.
METHOD_ALIASES = _METHOD_ALIASES


def explained_layer_name(model: keras.Model, method: str = "gradcam", layer: str | None = None) -> str:
    """The layer :func:`explain` explains for ``method`` (CAM: the layer feeding the GAP head)."""
    if _METHOD_ALIASES[str(method).lower()] == "cam":
        return cam_feature_layer_name(model)
    return _resolve_layer(model, layer).name
