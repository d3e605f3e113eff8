"""Classification models on a flat backbone: heads, augmentation layers, save/load with metadata.

A covnb model takes raw RGB frames (float32, 0..255) and returns class probabilities. It is
one flat Keras graph: ``image`` -> augmentation layers (active only in training) -> backbone
(built by :func:`covnb.backbones.build_backbone` with ``input_tensor``, preprocessing inside)
-> head -> ``logits`` -> ``probs``. Every conv layer is reachable by name (Grad-CAM needs it).

Heads:

* ``"pocovid"``: the POCOVID-Net head (Born et al., arXiv:2004.12084): AveragePooling2D(4x4)
  -> Flatten -> Dense(64) -> BatchNorm -> ReLU -> Dropout(0.5) -> Dense -> softmax.
* ``"gap"``: GlobalAveragePooling2D -> Dropout -> Dense -> softmax, the architecture of class
  activation maps (CAM, Zhou et al., CVPR 2016): the Dense weights weigh the last feature maps.
* ``"multiscale"``: global average pools of several depths of the backbone
  (:data:`MULTISCALE_TAPS`: the last stages and the top layer), concatenated -> Dropout -> Dense
  -> softmax. Mid-level features transfer better than the ImageNet-specific last layer to a
  distant domain (Yosinski et al., NeurIPS 2014; multi-layer pooled features as in Zheng et al.,
  "Good practice in CNN feature transfer", arXiv:1604.00133). Grad-CAM works; classic CAM does not.
* ``"midlevel"``: global average AND global max pools of the expanded inputs of the middle
  stages (:data:`MIDLEVEL_TAPS`; EfficientNet-Lite0: the 240-, 480- and 672-channel expansions
  that open stages 4, 5 and 6), concatenated -> Dropout -> Dense -> softmax. The later,
  ImageNet-specific layers are left out, so the model also runs faster. Max pooling keeps a
  strong local pattern (a B-line, a consolidation) that averaging over the frame dilutes
  (Razavian et al., CVPR-W 2014, "CNN features off-the-shelf"; Zheng et al., arXiv:1604.00133).
  Grad-CAM works; classic CAM does not.

Both heads start with a parameter-free pooling whose output is the layer ``head_features``:
:mod:`covnb.train` caches frozen features there (or at the input of the backbone's last block,
:data:`LAST_BLOCK_INPUT`) and trains only what comes after.

A saved model is ``name.keras`` plus a sidecar ``name.json`` (classes, frame settings,
backbone, training parameters, CV metrics, data fingerprint, covnb version).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import keras

from covnb import __version__
from covnb.backbones import build_backbone
from covnb.frames import frame_settings_from_metadata
from covnb.io_utils import atomic_write_text, to_jsonable
from covnb.registry import (HEAD_DENSE, HEAD_FEATURES, HEAD_PREFIX, IMAGE_INPUT, LAST_BLOCK_INPUT, LOGITS,
                            MIDLEVEL_TAPS, MULTISCALE_TAPS, POOLED_TAP_HEADS, PROBS)

__all__ = [
    "HEADS",
    "AUGMENTATIONS",
    "LAST_BLOCK_INPUT",
    "MULTISCALE_TAPS",
    "MIDLEVEL_TAPS",
    "POOLED_TAP_HEADS",
    "TRAINABLE_CHOICES",
    "build_model",
    "augmentation_spec",
    "set_trainable",
    "last_block_input_layer",
    "head_feature_layer",
    "save_model",
    "load_model",
    "sidecar_path",
    "validate_sidecar",
    "SIDECAR_FIELDS",
    "FRAME_SETTINGS_FIELDS",
    "ModelFileError",
]

HEADS = ("pocovid", "gap", "multiscale", "midlevel")
TRAINABLE_CHOICES = ("head", "last_block", "all")

#: Augmentations: rotation (degrees), shift (fraction of the size), flips, zoom, contrast.
#: "pocovid" is POCOVID-Net's ImageDataGenerator setting redone as Keras layers; "default" drops
#: the vertical flip (the pleural line is at the top of a lung ultrasound frame).
AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "pocovid": {"rotation_deg": 10.0, "shift": 0.1, "flip": "horizontal_and_vertical", "fill_mode": "nearest"},
    "default": {"rotation_deg": 10.0, "shift": 0.1, "flip": "horizontal", "zoom": 0.1, "contrast": 0.1,
                "fill_mode": "nearest"},
}
_AUGMENTATION_KEYS = {"rotation_deg", "shift", "flip", "zoom", "contrast", "fill_mode"}

# LAST_BLOCK_INPUT, MULTISCALE_TAPS, MIDLEVEL_TAPS and POOLED_TAP_HEADS are derived from the backbone
# specs of :mod:`covnb.registry` (imported above; kept here for the code that reads them from models).


class ModelFileError(ValueError):
    """A model file or its sidecar JSON that cannot be read; the message names the file."""


def augmentation_spec(augmentation) -> dict[str, Any]:
    """Normalise ``None``/``False``/a preset name/a dict into an augmentation dict."""
    if augmentation is None or augmentation is False:
        return {}
    if augmentation is True:
        augmentation = "default"
    if isinstance(augmentation, str):
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {augmentation!r}; choose one of {sorted(AUGMENTATIONS)} or a dict")
        return dict(AUGMENTATIONS[augmentation])
    spec = dict(augmentation)
    unknown = set(spec) - _AUGMENTATION_KEYS
    if unknown:
        raise ValueError(f"Unknown augmentation keys {sorted(unknown)}; allowed: {sorted(_AUGMENTATION_KEYS)}")
    return spec


def _augmentation_layers(spec: dict[str, Any], seed: int | None) -> list[keras.layers.Layer]:
    fill = spec.get("fill_mode", "nearest")
    layers = []
    if spec.get("rotation_deg"):
        layers.append(keras.layers.RandomRotation(spec["rotation_deg"] / 360.0, fill_mode=fill, seed=seed,
                                                  name="augment_rotation"))
    if spec.get("shift"):
        layers.append(keras.layers.RandomTranslation(spec["shift"], spec["shift"], fill_mode=fill, seed=seed,
                                                     name="augment_shift"))
    if spec.get("zoom"):
        layers.append(keras.layers.RandomZoom(spec["zoom"], fill_mode=fill, seed=seed, name="augment_zoom"))
    if spec.get("flip"):
        layers.append(keras.layers.RandomFlip(spec["flip"], seed=seed, name="augment_flip"))
    if spec.get("contrast"):
        # RandomContrast expects 0..255 input with value_range; keep values in range afterwards.
        layers.append(keras.layers.RandomContrast(spec["contrast"], value_range=(0, 255), seed=seed,
                                                  name="augment_contrast"))
    return layers


def build_model(
    backbone: str = "efficientnet_lite0",
    n_classes: int = 3,
    head: str = "gap",
    image_size: int = 224,
    *,
    weights: str | os.PathLike | None = "imagenet",
    trainable: str = "head",
    augmentation=None,
    dropout: float | None = None,
    dense_units: int = 64,
    alpha: float | None = None,
    seed: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """A flat classifier: raw RGB ``(S, S, 3)`` in 0..255 -> ``probs`` (softmax over ``n_classes``).

    ``head``: "pocovid", "gap", "multiscale" or "midlevel" (see module doc). ``trainable``: "head" (backbone frozen),
    "last_block" (head + layers after :data:`LAST_BLOCK_INPUT`) or "all"; BatchNorm layers of the
    backbone always stay frozen (inference statistics), as usual for small data sets.
    ``augmentation``: None, "pocovid", "default" or a dict (:data:`AUGMENTATIONS`), applied by
    Keras preprocessing layers before the backbone, in training only. ``dropout`` defaults to
    0.5 ("pocovid", as POCOVID-Net) and 0.2 (the others).
    """
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}; choose one of {HEADS}")
    if int(n_classes) < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    size = int(image_size)
    inputs = keras.Input((size, size, 3), dtype="float32", name=IMAGE_INPUT)
    x = inputs
    for layer in _augmentation_layers(augmentation_spec(augmentation), seed):
        x = layer(x)
    _, features, info = build_backbone(backbone, size, weights, inputs=x, alpha=alpha)
    if dropout is None:
        dropout = 0.5 if head == "pocovid" else 0.2
    if head == "pocovid":
        pool = max(1, min(4, int(features.shape[1]), int(features.shape[2])))
        x = keras.layers.AveragePooling2D(pool_size=(pool, pool), name="head_pool")(features)
        x = keras.layers.Flatten(name=HEAD_FEATURES)(x)
        x = keras.layers.Dense(dense_units, name=HEAD_DENSE)(x)
        x = keras.layers.BatchNormalization(name="head_bn")(x)
        x = keras.layers.ReLU(name="head_relu")(x)
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    elif head in POOLED_TAP_HEADS:
        graph = keras.Model(inputs, features)
        pooled = []
        for tap in _pooled_taps(head, backbone):
            maps = graph.get_layer(tap).output
            if head == "multiscale":
                pooled.append(keras.layers.GlobalAveragePooling2D(name=f"head_pool_{tap}")(maps))
            else:
                pooled.append(keras.layers.GlobalAveragePooling2D(name=f"head_avg_{tap}")(maps))
                pooled.append(keras.layers.GlobalMaxPooling2D(name=f"head_max_{tap}")(maps))
        if head == "multiscale":
            pooled.append(keras.layers.GlobalAveragePooling2D(name="head_pool_top")(features))
        x = keras.layers.Concatenate(name=HEAD_FEATURES)(pooled)
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name=HEAD_FEATURES)(features)
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    logits = keras.layers.Dense(int(n_classes), name=LOGITS)(x)
    probs = keras.layers.Activation("softmax", name=PROBS, dtype="float32")(logits)
    model = keras.Model(inputs, probs, name=name or f"covnb_{backbone}_{head}")
    set_trainable(model, trainable, backbone)
    return model


def _pooled_taps(head: str, backbone: str) -> tuple[str, ...]:
    """The layers a pooled-tap head reads for ``backbone`` (``ValueError`` when it has none)."""
    table = POOLED_TAP_HEADS[head]
    if backbone not in table:
        raise ValueError(f"No {head} taps known for backbone {backbone!r}; known: {sorted(table)}. "
                         "Use head='gap'.")
    return table[backbone]


def _head_layer_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers if layer.name.startswith(HEAD_PREFIX) or layer.name in (LOGITS, PROBS)}


def last_block_input_layer(backbone: str) -> str:
    """Name of the layer that feeds ``backbone``'s last block."""
    try:
        return LAST_BLOCK_INPUT[backbone]
    except KeyError:
        raise ValueError(f"No last-block boundary known for backbone {backbone!r}") from None


def head_feature_layer() -> str:
    """Name of the parameter-free pooled feature layer every covnb head starts with."""
    return HEAD_FEATURES


def set_trainable(model: keras.Model, trainable: str, backbone: str) -> keras.Model:
    """Freeze/unfreeze in place: "head", "last_block" or "all" (backbone BatchNorm stays frozen).

    Recompile the model afterwards.
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
    head = _head_layer_names(model)
    names = [layer.name for layer in model.layers]
    start = len(names)
    if trainable == "all":
        start = 0
    elif trainable == "last_block":
        boundary = last_block_input_layer(backbone)
        if boundary not in names:
            raise ValueError(f"Model {model.name!r} has no layer {boundary!r} (last block of {backbone!r})")
        start = names.index(boundary) + 1
    for position, layer in enumerate(model.layers):
        if layer.name in head:
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = position >= start and bool(layer.weights)
    return model


# ----------------------------------------------------------------------------- save / load


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.keras`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


_jsonable = to_jsonable  # kept for callers of the old private name


def save_model(model: keras.Model, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save ``model`` to ``path`` (``.keras`` appended if missing) and its sidecar JSON.

    ``metadata`` should hold at least ``classes`` and ``image_size``; ``covnb_version`` and the
    model's input size are added. Returns the ``.keras`` path.
    """
    path = Path(path)
    if path.suffix != ".keras":
        path = path.with_name(path.name + ".keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    n_classes = int(model.output.shape[-1])
    classes = meta.get("classes") or [f"class_{i}" for i in range(n_classes)]
    if len(classes) != n_classes:
        raise ValueError(f"metadata has {len(classes)} classes but the model outputs {n_classes}")
    meta["classes"] = list(classes)
    meta.setdefault("image_size", int(model.input.shape[1]))
    meta["covnb_version"] = __version__
    meta["keras_version"] = keras.__version__
    model.save(path)
    atomic_write_text(sidecar_path(path), json.dumps(to_jsonable(meta), indent=2))
    return path


# ----------------------------------------------------------------------------- sidecar schema
#
# A sidecar comes with a model file from anywhere: every field covnb acts on is checked against
# a declared table of bounds before use. Add a field by adding a line to a table.


def _integer(low: int, high: int):
    def check(value):
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"must be a whole number in {low}..{high}, got {value!r:.60}")
        return value
    return check


def _number(low: float, high: float, *, low_inclusive: bool = True):
    def check(value):
        if type(value) not in (int, float) or not math.isfinite(value) or value > high or (
                value < low if low_inclusive else value <= low):
            raise ValueError(f"must be a finite number {'>=' if low_inclusive else '>'} {low} and <= {high}, "
                             f"got {value!r:.60}")
        return value
    return check


def _boolean(value):
    if type(value) is not bool:
        raise ValueError(f"must be true or false, got {value!r:.60}")
    return value


def _crop(value):
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4 or any(type(v) not in (int, float) for v in value):
        raise ValueError(f"must be null or 4 fractions [top, bottom, left, right], got {value!r:.80}")
    top, bottom, left, right = value
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise ValueError(f"must be fractions with top < bottom and left < right in 0..1, got {value!r:.80}")
    return value


def _class_names(value):
    if not isinstance(value, list) or not 2 <= len(value) <= 1000:
        raise ValueError(f"must be a list of 2 to 1000 class names, got {value!r:.80}")
    if any(not isinstance(v, str) or not v.strip() or len(v) > 200 for v in value):
        raise ValueError(f"must hold non-empty text names, got {value!r:.80}")
    if len(set(value)) != len(value):
        raise ValueError(f"holds a name twice: {value!r:.80}")
    return value


#: Fields of ``frame_settings`` (see :class:`covnb.frames.FrameSettings`) and their bounds.
FRAME_SETTINGS_FIELDS = {
    "rate_hz": _number(0, 1000, low_inclusive=False),
    "max_frames": _integer(1, 10_000),
    "image_size": _integer(8, 4096),
    "crop": _crop,
    "clahe": _boolean,
    "clahe_clip": _number(0, 1000, low_inclusive=False),
    "mask_sector": _boolean,
    "intensity": _boolean,
}


def _check_fields(fields: dict, value) -> dict:
    """Check the fields of ``value`` (an object) that ``fields`` declares; ValueError naming the field."""
    if not isinstance(value, dict):
        raise ValueError(f"must be an object, got {type(value).__name__}")
    for name, check in fields.items():
        if name in value:
            try:
                check(value[name])
            except ValueError as error:
                raise ValueError(f"{name!r} {error}") from None
    return value


def _frame_settings(value):
    return _check_fields(FRAME_SETTINGS_FIELDS, value)


#: Top-level sidecar fields covnb acts on and their bounds; other fields (metrics, training
#: parameters) are informative and not checked.
SIDECAR_FIELDS = {
    "classes": _class_names,
    "image_size": _integer(8, 4096),
    "rate_hz": _number(0, 1000, low_inclusive=False),
    "max_frames": _integer(1, 10_000),
    "mask_sector": _boolean,
    "frame_settings": _frame_settings,
}
SIDECAR_REQUIRED = ("classes",)


def validate_sidecar(metadata, source: str | os.PathLike, n_outputs: int | None = None,
                     input_size: int | None = None) -> dict:
    """Check a sidecar against :data:`SIDECAR_FIELDS`, and against the model it describes
    (``n_outputs`` classes, ``input_size`` px). Returns it; raises :class:`ModelFileError` naming
    ``source`` (the sidecar file) and the field."""
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{source}: the sidecar must be a JSON object, got a {type(metadata).__name__}")
    for name in SIDECAR_REQUIRED:
        if name not in metadata:
            raise ModelFileError(f"{source}: the sidecar has no {name!r} field")
    try:
        _check_fields(SIDECAR_FIELDS, metadata)
    except ValueError as error:
        raise ModelFileError(f"{source}: field {error}") from None
    if n_outputs is not None and len(metadata["classes"]) != n_outputs:
        raise ModelFileError(f"{source}: {len(metadata['classes'])} class names ({', '.join(metadata['classes'])}) "
                             f"but the model has {n_outputs} outputs")
    if input_size is not None:
        for where, table in (("image_size", metadata), ("frame_settings.image_size", metadata.get("frame_settings") or {})):
            if "image_size" in table and table["image_size"] != input_size:
                raise ModelFileError(f"{source}: {where} is {table['image_size']} but the model takes "
                                     f"{input_size} px images")
    try:
        frame_settings_from_metadata(metadata)
    except (ValueError, TypeError) as error:
        raise ModelFileError(f"{source}: frame settings are not usable ({error})") from None
    return metadata


def load_model(path: str | os.PathLike, compile: bool = False,
               metadata: dict | None = None) -> tuple[keras.Model, dict]:
    """Load a ``.keras`` model and its sidecar JSON: ``(model, metadata)``.

    The sidecar (``model.json`` beside ``model.keras``) says which classes the outputs are and
    how frames were taken in training; it is validated (:func:`validate_sidecar`). A model without
    its sidecar is refused unless ``metadata`` gives the settings explicitly (at least
    ``classes``; frame settings default to 3 Hz, 30 frames, the model's input size, no mask).
    ``metadata`` fields also replace those of an existing sidecar.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.keras"))
        if len(candidates) != 1:
            raise ModelFileError(f"{path}: expected one .keras file in the folder, found {len(candidates)}")
        path = candidates[0]
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    side = sidecar_path(path)
    if side.is_file():
        try:
            stored = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise ModelFileError(f"{side}: sidecar JSON is not valid JSON ({error})") from error
        validate_sidecar(stored, side)
        source = str(side) if not metadata else f"{side} with the settings given"
    elif metadata is None:
        raise ModelFileError(
            f"{side}: not found. The model {path} needs its sidecar to know its class names and the frame settings "
            "it was trained with (without it, it would run with wrong settings, e.g. unmasked). Put the sidecar "
            "back beside the model, or give the settings explicitly (covnb predict/cam --classes NAMES "
            "[--sidecar FILE]; load_model(path, metadata={'classes': [...]}))."
        )
    else:
        stored, source = {}, "the settings given"
    merged = {**stored, **(metadata or {})}
    validate_sidecar(merged, source)
    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as error:  # keras raises various types for damaged files
        raise ModelFileError(f"{path}: cannot load Keras model ({type(error).__name__}: {error})") from error
    validate_sidecar(merged, source, n_outputs=int(model.output.shape[-1]), input_size=int(model.input.shape[1]))
    merged.setdefault("image_size", int(model.input.shape[1]))
    return model, merged
