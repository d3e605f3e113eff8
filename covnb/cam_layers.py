"""Which layers a class activation map uses: the logits, the convolution layers, the CAM head.

Every method of :mod:`covnb.cam` differentiates the *logits* (never the softmax, whose gradients
saturate) with respect to the 4-D output of one convolution layer. This module finds both in a
Keras 3 model: the logits layer (named ``logits`` in covnb's models, or the Dense feeding the final
softmax), the layer a user names or the last conv feature map (:func:`covnb.backbones.last_conv_layer_name`),
and for classic CAM (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization")
the layer feeding the GlobalAveragePooling2D -> Dense head. Nothing is computed here.
"""

from __future__ import annotations

from typing import Any, Callable

import keras

from covnb.backbones import check_flat, last_conv_layer_name, layer_output_rank
from covnb.registry import LOGITS

__all__ = ["METHODS", "METHOD_ALIASES", "canonical_method", "logits_layer", "logits_source", "single_output",
           "conv_layer_names", "resolve_layer", "cam_feature_layer_name", "available_methods", "explained_layer_name"]

#: Canonical method names, and the spellings ``explain`` accepts for them.
METHODS = ("gradcam", "gradcam++", "cam")
METHOD_ALIASES = {
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


def check_backend() -> None:
    """Raise RuntimeError unless Keras runs on TensorFlow (the gradients use GradientTape)."""
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


def single_output(model: keras.Model):
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
    final = _producer(single_output(model))
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


def logits_source(model: keras.Model) -> tuple[Any, Callable | None]:
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


def resolve_layer(model: keras.Model, layer: str | None) -> keras.layers.Layer:
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




def canonical_method(method: str) -> str:
    """The canonical name (one of :data:`METHODS`) of ``method``, any accepted spelling; ValueError otherwise."""
    canonical = METHOD_ALIASES.get(str(method).lower())
    if canonical is None:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of {', '.join(METHODS)}.")
    return canonical


def explained_layer_name(model: keras.Model, method: str = "gradcam", layer: str | None = None) -> str:
    """The layer :func:`covnb.cam.explain` explains for ``method`` (CAM: the layer feeding the GAP head)."""
    if canonical_method(method) == "cam":
        return cam_feature_layer_name(model)
    return resolve_layer(model, layer).name
