"""Training recipes, frozen-feature caching and patient-level cross-validation.

Three recipes (:func:`recipe_config`):

* ``"pocovid"``: POCOVID-Net's protocol (Born et al., arXiv:2004.12084; their
  ``scripts/train_covid19.py``): their head, Adam 1e-4, batch 16, 20 epochs, rotation 10 deg,
  shifts 0.1, both flips, head + last conv block trainable, no class weights, ReduceLROnPlateau
  (0.7, 7), early stopping (patience 20) -- but with seeds and an inner patient-level
  validation split for early stopping instead of the test fold. By default it trains the plain
  Keras way (every augmented batch through the backbone each epoch).
* ``"default"`` (covnb): the backbone is frozen, so its features are computed ONCE per frame
  (and per cached view), cached on disk, and the head is fitted on them. Choices, each measured
  on POCUS (3 classes, patient-grouped 5-fold, EfficientNet-Lite0 ImageNet at 224, video
  balanced accuracy of mean frame probability, class-weighted logistic regression with C by
  inner patient-grouped CV; split seeds 0-2 unless said otherwise):

  - ``head="midlevel"`` (:data:`covnb.models.MIDLEVEL_TAPS`): average AND max pools of the
    expansions that open stages 4, 5 and 6 (240 + 480 + 672 channels), without the top layer.
    The largest gain: 0.721 for the earlier "multiscale" head (average pools of stages 4-7 and
    of the top) -> 0.781 (stage outputs 4-6 only: 0.752; their expansions: 0.781; plus max
    pooling: 0.806; COVID sensitivity 0.55 -> 0.74). Adding stage 7 or the top lowers it
    (0.775, 0.747): the last layers are ImageNet-specific (Yosinski et al., NeurIPS 2014). On
    split seeds 10-14, never used for these choices: 0.711 -> 0.789.
  - ``mirror_view=True``: the exact left-right mirror of every frame as one more training view
    (0.780 -> 0.789 on seeds 10-14); 4 random augmented views (rotation, shift, zoom, flip,
    contrast) instead or in addition were not better (0.787, 0.794 vs 0.804) and cost 3x the
    features, so ``aug_views=0``.
  - ``train_unit="video"``: the head learns from each video's mean feature (one example per
    video, multiple-instance learning with mean pooling): 0.706 -> 0.726 (multiscale head).
  - ``solver="logistic"``: the linear head fitted by scikit-learn with C chosen by inner
    patient-grouped CV is a better-regularised optimiser of the same model than the Keras head
    (Adam, dropout 0.2, early stopping on a small inner split): 0.706 vs 0.652 (multiscale
    head). The Keras head stays available (``solver="keras"``) and is used when fine-tuning the
    last block (``fine_tune_epochs > 0``, with the "gap" head).
  - within noise, so not used: 288 px input (0.783), signed square root of the features
    (0.720 vs 0.719, multiscale), per-video standard deviation of the features (0.715), test
    on video-mean features instead of averaging frame probabilities (0.719), sector crop,
    log-probability averaging, patient-balanced weights.

  With everything outside the ultrasound sector blacked out (``FrameSettings(mask_sector=True)``,
  text, logos and rulers gone): 0.803 on seeds 0-2, 0.773 on seeds 10-14 (COVID sensitivity
  0.65): part of the gain may come from the screen around the image.

  These choices come from comparing cross-validated numbers of about 25 variants on split
  seeds 0-2, a selection on the test folds; split seeds 10-14 were kept aside and confirm the
  gain (0.789, numbers above). Inner patient-grouped CV chooses C only.
* ``"linear_probe"``: frozen pooled features -> standardised, class-weighted logistic
  regression, C chosen by inner patient-grouped CV: the strong simple baseline.
* ``"auto"``: chooses among :data:`SELECTION_CANDIDATES` (top-layer probe, top layer with mirror
  per video, middle layers with and without mirror) inside every training fold by the inner CV
  (grouped by source for the positive class under ``group_by="source"``): a nested selection,
  only the outer result is reported; the final model is chosen by the same inner CV.

Evaluation (:func:`run_training`): source-held-out folds (every test fold's COVID-19 files from
sources absent from its training data, :func:`covnb.splits.source_held_out_folds`) as the
headline, patient-grouped folds beside them. On POCUS, split seeds 10-14: the default recipe
0.718 +- 0.029 source-held-out (COVID-19 sensitivity 0.50, specificity 0.96) against 0.788 +-
0.018 patient-grouped (0.71 / 0.94); the linear probe 0.637 (0.33 / 0.89). The choices above
were made on patient-grouped folds.

Every recipe yields a full Keras model (raw RGB in, probabilities out), so a saved model is
used the same way whatever trained it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

import keras

from covnb import __version__
from covnb.cache import read_cached_array, usable_cache_dir, write_cached_array
from covnb.models import (POOLED_TAP_HEADS, augmentation_spec, build_model, head_feature_layer,
                          last_block_input_layer, save_model, set_trainable)

__all__ = [
    "RECIPES",
    "IMBALANCE_CHOICES",
    "TrainConfig",
    "recipe_config",
    "CVResult",
    "FoldData",
    "compute_features",
    "class_weights",
    "fit_fold",
    "fit_final_model",
    "run_cross_validation",
    "run_training",
    "predict_frames",
]

RECIPES = ("pocovid", "default", "linear_probe", "auto")
IMBALANCE_CHOICES = ("none", "class_weight", "oversample")
ENGINES = ("cached", "plain")
TRAIN_UNITS = ("frame", "video")
SOLVERS = ("keras", "logistic")
FEATURE_CACHE_VERSION = 1
GROUPINGS = ("patient", "source")

#: The declared candidates of ``select`` (recipe "auto"): each a set of overrides of the logistic
#: recipe, compared by the inner (source-aware when grouping by source) CV of every training fold.
#: Listed from the sturdiest: ties go to the earlier one.
SELECTION_CANDIDATES: dict[str, dict[str, Any]] = {
    "top_probe": dict(head="gap", mirror_view=False, train_unit="frame"),
    "top_probe_video_mirror": dict(head="gap", mirror_view=True, train_unit="video"),
    "midlevel_no_mirror": dict(head="midlevel", mirror_view=False, train_unit="video"),
    "midlevel": dict(head="midlevel", mirror_view=True, train_unit="video"),
}


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run. Build one with :func:`recipe_config`."""

    recipe: str = "default"
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    alpha: float | None = None
    image_size: int = 224
    head: str = "gap"
    dropout: float | None = None
    augmentation: Any = "default"  # None, "pocovid", "default" or a dict (covnb.models.AUGMENTATIONS)
    aug_views: int = 4  # cached engine: random augmented views precomputed per frame (plus the clean one)
    mirror_view: bool = False  # cached engine: one more view, the exact left-right mirror of each frame
    device_views: int = 0  # cached engine: views rendered as another device might (device_appearance)
    feature_pca: int = 0  # logistic head: fit on this many principal components of the standardised features (0: all)
    engine: str = "cached"  # "cached" (features computed once) or "plain" (keras fit through the backbone)
    trainable: str = "head"  # first stage: "head" or "last_block" (or "all", plain engine only)
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 8
    reduce_lr: bool = False  # ReduceLROnPlateau(factor 0.7, patience 7), as POCOVID-Net
    fine_tune_epochs: int = 0  # second stage: last block + head, from the first stage's weights
    fine_tune_learning_rate: float = 1e-4
    fine_tune_patience: int = 3
    imbalance: str = "class_weight"  # "none", "class_weight" or "oversample"
    train_unit: str = "frame"  # cached head: "frame" (one example per frame) or "video" (mean features per video)
    solver: str = "keras"  # cached head: "keras" (Adam, early stopping) or "logistic" (scikit-learn, C by inner CV;
    #                        imbalance "class_weight" or "oversample" -> balanced class weights)
    validation_fraction: float = 0.2
    linear_probe_cs: tuple = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    select: tuple = ()  # names of SELECTION_CANDIDATES chosen between inside each training fold (nested CV)
    seed: int = 0

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {self.recipe!r}; choose one of {RECIPES}")
        if self.imbalance not in IMBALANCE_CHOICES:
            raise ValueError(f"imbalance must be one of {IMBALANCE_CHOICES}, got {self.imbalance!r}")
        if self.train_unit not in TRAIN_UNITS:
            raise ValueError(f"train_unit must be one of {TRAIN_UNITS}, got {self.train_unit!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver == "logistic" and (self.engine != "cached" or self.trainable != "head" or self.fine_tune_epochs):
            raise ValueError("solver='logistic' fits a linear head on cached features: engine='cached', trainable='head', "
                             "fine_tune_epochs=0 (use solver='keras' to fine-tune)")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "cached" and self.trainable == "all":
            raise ValueError("trainable='all' cannot use cached features: use engine='plain'")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError("epochs and batch_size must be positive")
        self.linear_probe_cs = tuple(float(c) for c in self.linear_probe_cs)
        self.select = tuple(str(name) for name in self.select)
        unknown = sorted(set(self.select) - set(SELECTION_CANDIDATES))
        if unknown:
            raise ValueError(f"unknown selection candidates {unknown}; known: {sorted(SELECTION_CANDIDATES)}")
        if self.select and self.solver != "logistic":
            raise ValueError("select compares inner-CV scores of logistic heads: solver='logistic'")
        augmentation_spec(self.augmentation)  # validates
        if self.head in POOLED_TAP_HEADS and self.engine == "cached" and (self.trainable != "head"
                                                                         or self.fine_tune_epochs > 0):
            raise ValueError(f"the {self.head!r} head pools layers before the backbone's last block, so the last block "
                             "cannot be fine-tuned on cached features: use head='gap' (or engine='plain')")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pocovid": dict(head="pocovid", augmentation="pocovid", engine="plain", trainable="last_block", epochs=20,
                    batch_size=16, learning_rate=1e-4, patience=20, reduce_lr=True, fine_tune_epochs=0,
                    imbalance="none", dropout=0.5),
    "default": dict(head="midlevel", augmentation="default", engine="cached", trainable="head", aug_views=0,
                    mirror_view=True, epochs=40,
                    batch_size=32, learning_rate=1e-3, patience=8, fine_tune_epochs=0, imbalance="class_weight",
                    solver="logistic", train_unit="video"),
    "linear_probe": dict(head="gap", augmentation=None, engine="cached", trainable="head", aug_views=0,
                         imbalance="class_weight", dropout=0.0, solver="logistic", train_unit="frame"),
    "auto": dict(head="gap", augmentation="default", engine="cached", trainable="head", aug_views=0,
                 mirror_view=False, imbalance="class_weight", solver="logistic", train_unit="frame",
                 select=tuple(SELECTION_CANDIDATES)),
}


#: Modalities whose left-right mirror is not a plausible image: a mirrored chest radiograph or CT
#: slice puts the heart on the right. An ultrasound probe has no fixed left or right.
UNMIRRORABLE_MODALITIES = ("X-ray", "CT")


def mirror_is_plausible(samples: pd.DataFrame) -> bool:
    """Whether the default recipe's mirrored view suits these samples (no chest X-ray or CT among them).

    Measured on the chest X-ray / CT data (COVID-19 vs other, 3 split seeds): balanced accuracy
    0.645 without the mirrored view, 0.621 with it; on POCUS the mirror helps (0.780 -> 0.789).
    """
    if "modality" not in samples:
        return True
    modalities = {str(m).lower() for m in samples["modality"].dropna().unique()}
    return not modalities & {m.lower() for m in UNMIRRORABLE_MODALITIES}


def recipe_config(recipe: str = "default", **overrides) -> TrainConfig:
    """The settings of a recipe ("pocovid", "default", "linear_probe"), with overrides.

    The default recipe's "multiscale" head needs a frozen backbone with known taps
    (:data:`covnb.models.MULTISCALE_TAPS`): asking it for fine-tuning (``fine_tune_epochs > 0`` or
    ``trainable="last_block"``), or another backbone, without naming a head gives the "gap" head;
    fine-tuning also switches the default's logistic head to the Keras solver (Adam, early stopping).
    """
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; choose one of {RECIPES}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"Unknown training settings {sorted(unknown)}; known: {sorted(known)}")
    settings = {**_RECIPE_DEFAULTS[recipe], **overrides, "recipe": recipe}
    fine_tunes = int(settings.get("fine_tune_epochs") or 0) > 0 or settings.get("trainable", "head") != "head"
    head = settings.get("head")
    unknown_taps = head in POOLED_TAP_HEADS and settings.get("backbone", "efficientnet_lite0") not in POOLED_TAP_HEADS[head]
    if "head" not in overrides and head in POOLED_TAP_HEADS and (fine_tunes or unknown_taps):
        settings["head"] = "gap"
    if "solver" not in overrides and settings.get("solver") == "logistic" and fine_tunes and recipe == "default":
        settings["solver"] = "keras"  # fine-tuning needs the Keras head (Adam, early stopping on inner validation)
        if "train_unit" not in overrides:
            settings["train_unit"] = "frame"
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- helpers


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (k * n_c) (scikit-learn's "balanced"); absent classes get 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def _model_for(config: TrainConfig, n_classes: int, seed: int) -> keras.Model:
    return build_model(config.backbone, n_classes, config.head, config.image_size, config.weights,
                       trainable=config.trainable if config.trainable != "all" else "all",
                       augmentation=config.augmentation, dropout=config.dropout, alpha=config.alpha, seed=seed)


_CALLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TAILS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _batched_call(model: keras.Model, x: np.ndarray, batch_size: int = 64, training: bool = False) -> np.ndarray:
    """``model(x)`` in batches inside one ``tf.function`` (no per-call ``predict`` overhead).

    The function is traced once per model (any batch size), not once per call.
    """
    import tensorflow as tf

    per_model = _CALLS.setdefault(model, {})
    if training not in per_model:
        spec = tf.TensorSpec((None,) + tuple(model.input.shape[1:]), tf.float32)
        owner = weakref.ref(model)  # no strong reference from the cache's value back to its key
        per_model[training] = tf.function(lambda batch: owner()(batch, training=training), input_signature=[spec])
    call = per_model[training]
    outputs = [np.asarray(call(tf.convert_to_tensor(x[i:i + batch_size], dtype=tf.float32)))
               for i in range(0, len(x), batch_size)]
    if not outputs:
        shape = tuple(int(d) for d in model.output.shape[1:])
        return np.zeros((0,) + shape, np.float32)
    return np.concatenate(outputs)


def _tail(model: keras.Model, layer: str) -> keras.Model:
    """The part of ``model`` after ``layer`` (sharing its weights), built once per model."""
    per_model = _TAILS.setdefault(model, {})
    if layer not in per_model:
        per_model[layer] = keras.Model(model.get_layer(layer).output, model.output)
    return per_model[layer]


def predict_frames(model: keras.Model, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities of raw RGB frames ``(N, S, S, 3)``, batched in a ``tf.function``."""
    return _batched_call(model, frames, batch_size)


# ----------------------------------------------------------------------------- feature cache


def _frames_fingerprint(frames: np.ndarray) -> str:
    digest = hashlib.sha1(str((frames.shape, str(frames.dtype))).encode())
    digest.update(np.ascontiguousarray(frames).data)
    return digest.hexdigest()[:16]


def _backbone_fingerprint(model: keras.Model, until: str) -> str:
    """Hash of the weights of every layer up to ``until`` (the frozen part)."""
    digest = hashlib.sha1()
    for layer in model.layers:
        for weight in layer.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).data)
        if layer.name == until:
            break
    return digest.hexdigest()[:16]


def _weights_key(weights) -> str:
    if weights is None or weights == "imagenet":
        return str(weights)
    path = Path(weights)
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _feature_key(fingerprint: str, config: TrainConfig, cut: str, view: int, kind: str) -> str:
    spec = {"v": FEATURE_CACHE_VERSION, "frames": fingerprint, "backbone": config.backbone,
            "weights": _weights_key(config.weights), "alpha": config.alpha, "size": int(config.image_size),
            "head": config.head, "cut": cut, "view": int(view), "seed": int(config.seed),
            "augmentation": augmentation_spec(config.augmentation) if kind == "augment" else {}}
    if kind == "mirror":
        spec["kind"] = "mirror"
    if kind == "device":
        spec["kind"] = f"device{DEVICE_APPEARANCE_VERSION}"
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def view_kinds(config: TrainConfig, views: int | None = None) -> list[str]:
    """What each cached view is: ``"clean"`` first, then ``"mirror"`` (``config.mirror_view``),
    then ``config.device_views`` ``"device"`` views (:func:`device_appearance`), then ``views``
    (default ``config.aug_views``) random ``"augment"`` views (none without augmentation)."""
    views = config.aug_views if views is None else int(views)
    if not augmentation_spec(config.augmentation):
        views = 0
    return (["clean"] + (["mirror"] if config.mirror_view else []) + ["device"] * int(config.device_views)
            + ["augment"] * views)


DEVICE_APPEARANCE_VERSION = 1


def device_appearance(frames: np.ndarray, seed: int) -> np.ndarray:
    """``frames`` (N, S, S, 3) uint8 as other ultrasound devices and exports might render them.

    Per frame, random: depth crop (the bottom 0-25 % cut and stretched back), resolution (down to
    35 % and up again), blur (Gaussian, sigma 0.3-1.5), gain (x0.7-1.4), gamma (0.6-1.6, the
    dynamic-range / log-compression curve), multiplicative speckle (sigma 0-0.15) and JPEG
    compression (quality 15-90). Appearance augmentation against domain shift between scanners
    (Tobin et al. 2017's domain randomisation; Zhang et al., IEEE TMI 2020, "BigAug").
    """
    import cv2

    rng = np.random.default_rng(int(seed))
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        h, w = frame.shape[:2]
        image = frame.astype(np.float32) / 255.0
        if rng.random() < 0.5:
            cut = int(h * rng.uniform(0.0, 0.25))
            if cut:
                image = cv2.resize(image[:h - cut], (w, h), interpolation=cv2.INTER_LINEAR)
        scale = rng.uniform(0.35, 1.0)
        small = cv2.resize(image, (max(8, int(w * scale)), max(8, int(h * scale))), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
        image = np.clip(image * rng.uniform(0.7, 1.4), 0.0, 1.0) ** rng.uniform(0.6, 1.6)
        image = image * (1.0 + rng.normal(0.0, rng.uniform(0.0, 0.15), (h, w))[..., None].astype(np.float32))
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(15, 90))])
        out[i] = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1] if ok else image
    return out


def compute_features(frames: np.ndarray, config: TrainConfig, model: keras.Model | None = None,
                     cut: str = "head", views: int | None = None, cache: bool = True,
                     log: Callable[[str], None] | None = print, batch_size: int = 32,
                     from_last_block: np.ndarray | None = None) -> np.ndarray:
    """Frozen features of every frame, for the views of :func:`view_kinds`: view 0 clean, then
    a horizontal mirror (``config.mirror_view``), then ``views`` random augmented views.

    ``cut="head"``: pooled features (the ``head_features`` layer); ``cut="last_block"``: the
    input of the backbone's last block (float16). Returns ``(n_views, N, ...)``. Features are
    cached under ``cache_dir("features")`` keyed by the frames' content, backbone, weights, image
    size, augmentation and view; the backbone is frozen, so they never change.
    ``from_last_block``: the ``cut="last_block"`` features of the same views, from which pooled
    features are derived by running only the last block (no second backbone pass).
    """
    kinds = view_kinds(config, views)
    spec = augmentation_spec(config.augmentation) if "augment" in kinds else {}
    if model is None:
        keras.utils.set_random_seed(int(config.seed))
        model = _model_for(config, 2, config.seed)
    layer = head_feature_layer() if cut == "head" else last_block_input_layer(config.backbone)
    # The key holds the frozen weights themselves: random (weights=None) or changed backbones never collide.
    fingerprint = _frames_fingerprint(frames) + _backbone_fingerprint(model, layer)
    folder = usable_cache_dir("features") if cache else None
    cache = folder is not None
    results, missing = [None] * len(kinds), []
    for view, kind in enumerate(kinds):
        path = (folder or Path(".")) / f"{_feature_key(fingerprint, config, layer, view, kind)}.npy"
        if cache:
            results[view] = read_cached_array(path, rows=len(frames))
            if results[view] is not None:
                continue
        missing.append((view, path))
    if missing:
        preprocess = f"{config.backbone}_preprocess"
        augment = keras.Model(model.input, model.get_layer(preprocess).input) if spec else None
        if from_last_block is not None:
            # Pooled features from cached last-block inputs: only the (frozen) last block runs.
            frozen = keras.Model(model.get_layer(last_block_input_layer(config.backbone)).output,
                                 model.get_layer(layer).output)
        else:
            frozen = keras.Model(model.get_layer(preprocess).input, model.get_layer(layer).output)
        started = time.perf_counter()
        import tensorflow as tf

        last_report = started
        frozen_call = tf.function(lambda b: frozen(b, training=False), reduce_retracing=True)
        augment_call = tf.function(lambda b: augment(b, training=True), reduce_retracing=True) if augment else None
        for view, path in missing:
            kind = kinds[view]
            if kind == "augment":
                keras.utils.set_random_seed(int(config.seed) * 1009 + view)
            chunks = []
            source = frames if from_last_block is None else from_last_block[view]
            step = batch_size if from_last_block is None else 256
            for i in range(0, len(source), step):
                chunk = source[i:i + step]
                if kind == "mirror" and from_last_block is None:
                    chunk = chunk[:, :, ::-1]  # exact left-right mirror of the frame
                if kind == "device" and from_last_block is None:
                    chunk = device_appearance(chunk, seed=int(config.seed) * 7919 + view * 104729 + i)
                batch = tf.convert_to_tensor(chunk, dtype=tf.float32)
                if kind == "augment" and from_last_block is None:
                    batch = augment_call(batch)
                chunks.append(np.asarray(frozen_call(batch)))
                if log and time.perf_counter() - last_report > 10:  # a sign of life at least every 10 s
                    last_report = time.perf_counter()
                    log(f"features: view {view + 1}/{len(kinds)}, {min(i + step, len(source))}/"
                        f"{len(source)} frames ({last_report - started:.0f} s)")
            dtype = np.float32 if cut == "head" else np.float16
            array = (np.concatenate(chunks) if chunks else np.zeros((0,) + tuple(frozen.output.shape[1:]))).astype(dtype)
            results[view] = array
            if cache:
                cache = write_cached_array(path, array)
        if log:
            log(f"features: {len(missing)} view(s) x {len(frames)} frames at '{layer}' computed in "
                f"{time.perf_counter() - started:.1f} s ({len(missing) * len(frames) / max(time.perf_counter() - started, 1e-9):.0f} frames/s)")
    elif log:
        log(f"features: {len(kinds)} view(s) x {len(frames)} frames at '{layer}' read from cache")
    return np.stack(results)


# ----------------------------------------------------------------------------- batches


class _Batches(keras.utils.PyDataset):
    """Batches of ``views[v, i]`` (a random view per frame each epoch), one-hot labels, weights."""

    def __init__(self, views: np.ndarray, rows: np.ndarray, labels: np.ndarray, n_classes: int,
                 sample_weights: np.ndarray, batch_size: int, shuffle: bool, seed: int, oversample: bool = False):
        super().__init__()
        self.views, self.rows, self.labels = views, np.asarray(rows), np.asarray(labels)
        self.n_classes, self.weights, self.batch_size = n_classes, np.asarray(sample_weights, np.float32), batch_size
        self.shuffle, self.oversample = shuffle, oversample
        self.rng = np.random.default_rng(seed)
        self._plan()

    def _plan(self):
        positions = np.arange(len(self.rows))
        if self.oversample:
            by_class = [positions[self.labels == c] for c in np.unique(self.labels)]
            largest = max(len(p) for p in by_class)
            positions = np.concatenate([self.rng.choice(p, largest, replace=len(p) < largest) if len(p) < largest
                                        else p for p in by_class])
        if self.shuffle:
            positions = self.rng.permutation(positions)
        self.order = positions
        n_views = self.views.shape[0]
        self.view_of = self.rng.integers(0, n_views, len(positions)) if (self.shuffle and n_views > 1) \
            else np.zeros(len(positions), dtype=int)

    def __len__(self):
        return max(1, math.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        positions = self.order[part]
        x = self.views[self.view_of[part], self.rows[positions]].astype(np.float32)
        y = np.eye(self.n_classes, dtype=np.float32)[self.labels[positions]]
        return x, y, self.weights[positions]

    def on_epoch_end(self):
        if self.shuffle:
            self._plan()


class _EpochLine(keras.callbacks.Callback):
    """One short line per epoch."""

    def __init__(self, log, prefix: str, epochs: int, history: list):
        super().__init__()
        self.log, self.prefix, self.epochs, self.history = log, prefix, epochs, history
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        learning_rate = logs.get("learning_rate")
        if learning_rate is None:
            try:
                learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            except Exception:  # noqa: BLE001 - purely informative
                learning_rate = float("nan")
        row = {"epoch": epoch + 1, "loss": logs.get("loss"), "val_loss": logs.get("val_loss"),
               "accuracy": logs.get("accuracy"), "val_accuracy": logs.get("val_accuracy"),
               "learning_rate": learning_rate, "seconds": time.perf_counter() - self.started}
        self.history.append(row)
        if self.log:
            self.log(f"{self.prefix} epoch {epoch + 1:>2}/{self.epochs} loss {row['loss']:.3f} "
                     f"val_loss {row['val_loss']:.3f} val_bacc {row['val_accuracy']:.3f} ({row['seconds']:.0f} s)")


# ----------------------------------------------------------------------------- one fold


@dataclasses.dataclass
class FoldData:
    """Inputs of one training run: arrays aligned with frames, and which rows to use."""

    frames: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int class index
    train_rows: np.ndarray  # rows for fitting
    validation_rows: np.ndarray  # rows for early stopping / model selection (inner split)
    features: dict | None = None  # {"head": (V, N, D), "last_block": (V, N, h, w, c)} cached features
    videos: np.ndarray | None = None  # (N,) sample_id of each frame (train_unit="video")


def _video_means(views: np.ndarray, rows: np.ndarray, labels: np.ndarray, videos: np.ndarray):
    """Mean pooled feature of each video's ``rows``, per view: ``(V, n_videos, D)``, video labels.

    With a linear head the logit of a video's mean feature is the mean of its frames' logits, so
    training on video means is multiple-instance learning with mean pooling (Ilse et al., ICML
    2018): every video counts once, however many frames it has.
    """
    codes, uniques = pd.factorize(np.asarray(videos[rows], dtype=str))
    counts = np.bincount(codes, minlength=len(uniques)).astype(np.float32)
    means = np.zeros((views.shape[0], len(uniques), views.shape[2]), np.float32)
    for view in range(views.shape[0]):
        np.add.at(means[view], codes, views[view][rows])
    means /= counts[None, :, None]
    first = np.zeros(len(uniques), dtype=int)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    return means, labels[rows][first]


def _sample_weights(labels: np.ndarray, rows: np.ndarray, n_classes: int, imbalance: str) -> np.ndarray:
    if imbalance == "class_weight":
        return class_weights(labels[rows], n_classes)[labels[rows]]
    return np.ones(len(rows), np.float32)


def _balanced_weights(labels: np.ndarray, rows: np.ndarray, n_classes: int) -> np.ndarray:
    return class_weights(labels[rows], n_classes)[labels[rows]]


def _fit_stage(model: keras.Model, cut: str | None, data: FoldData, config: TrainConfig, n_classes: int, epochs: int,
               learning_rate: float, patience: int, seed: int, log, prefix: str) -> list[dict]:
    """Train ``model`` (or its tail after ``cut``) with early stopping on the inner validation rows."""
    standardise = None
    if cut is None:
        trained, views = model, data.frames[None]
    else:
        layer = head_feature_layer() if cut == "head" else last_block_input_layer(config.backbone)
        trained, views = keras.Model(model.get_layer(layer).output, model.output), data.features[cut]
        if cut == "head":
            # Train on standardised pooled features (scale-free optimisation), then fold the
            # standardisation into the first Dense layer: the saved model is the plain architecture.
            # Statistics over every view of the training rows (the examples the head is fitted on).
            reference = views[:, data.train_rows].reshape(-1, views.shape[-1]).astype(np.float64)
            mean, std = reference.mean(axis=0), reference.std(axis=0)
            std = np.maximum(std, 1e-6 * std.max() + 1e-30)  # scale-relative: random backbones give tiny features
            standardise = (mean, std)
            views = ((views - mean) / std).astype(np.float32)
            _fold_standardisation(model, mean, std, inverse=True)
    train_views, train_labels = views, data.labels[data.train_rows]
    train_rows, validation_rows = data.train_rows, data.validation_rows
    validation_views, validation_labels = views[:1], data.labels[data.validation_rows]
    if cut == "head" and config.train_unit == "video" and data.videos is not None:
        train_views, train_labels = _video_means(views, train_rows, data.labels, data.videos)
        validation_views, validation_labels = _video_means(views[:1], validation_rows, data.labels, data.videos)
        train_rows, validation_rows = np.arange(len(train_labels)), np.arange(len(validation_labels))
    train_weights = _sample_weights(train_labels, np.arange(len(train_labels)), n_classes, config.imbalance)
    train = _Batches(train_views, train_rows, train_labels, n_classes, train_weights,
                     config.batch_size, shuffle=True, seed=seed, oversample=config.imbalance == "oversample")
    # Validation: clean view only, class-balanced so val_loss and val_accuracy are balanced.
    validation = _Batches(validation_views, validation_rows, validation_labels, n_classes,
                          _balanced_weights(validation_labels, np.arange(len(validation_labels)), n_classes), 64,
                          shuffle=False, seed=seed)
    trained.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy",
                    weighted_metrics=["accuracy"])
    history: list[dict] = []
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
                 _EpochLine(log, prefix, epochs, history)]
    if config.reduce_lr:
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.7, patience=7, min_lr=1e-7))
    trained.fit(train, validation_data=validation, epochs=epochs, callbacks=callbacks, verbose=0)
    if standardise is not None:
        _fold_standardisation(model, *standardise)
    return history


def _first_dense_after_features(model: keras.Model) -> keras.layers.Dense:
    return model.get_layer("head_dense" if "head_dense" in [l.name for l in model.layers] else "logits")


def _fold_standardisation(model: keras.Model, mean: np.ndarray, std: np.ndarray, inverse: bool = False) -> None:
    """Make the first head Dense act on raw features as it did on ``(x - mean) / std``.

    ``W' = W / std``, ``b' = b - (mean / std) @ W``. ``inverse=True`` maps raw-space weights into
    standardised space (so training starts from the current weights).
    """
    dense = _first_dense_after_features(model)
    kernel, bias = dense.get_weights()
    if inverse:
        new_kernel = kernel * std[:, None]
        new_bias = bias + mean @ kernel
    else:
        new_kernel = kernel / std[:, None]
        new_bias = bias - (mean / std) @ kernel
    dense.set_weights([new_kernel.astype(np.float32), new_bias.astype(np.float32)])


def _fit_linear_probe(model: keras.Model, data: FoldData, config: TrainConfig, groups: np.ndarray, n_classes: int,
                      seed: int, log, prefix: str) -> list[dict]:
    """Standardised, class-weighted logistic regression on pooled features, C by grouped CV.

    Examples are frames, or videos (``train_unit="video"``: each video's mean feature, see
    :func:`_video_means`); augmented views, when cached, are extra training examples of the same
    video. C is chosen by patient-grouped inner CV on the training and validation rows (scored on
    clean views only). The fitted probe is written into the model's ``logits`` layer (so the model
    is complete and applies to single frames).
    """
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.decomposition import PCA
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    rows = np.concatenate([data.train_rows, data.validation_rows])  # grouped CV replaces the holdout
    views = data.features["head"]
    # Inner folds are scored per video (mean frame probability), as the outer folds: the scores of
    # frame- and video-unit candidates are then comparable (recipe "auto").
    frame_videos = data.videos[rows] if data.videos is not None else rows
    video_codes = pd.factorize(np.asarray(frame_videos, dtype=str))[0]
    if config.train_unit == "video" and data.videos is not None:
        x_views, y = _video_means(views, rows, data.labels, data.videos)
        first = pd.Series(np.arange(len(rows))).groupby(video_codes).first()
        g = groups[rows][first.to_numpy()]
        example_video = np.arange(len(y))
    else:
        x_views, y, g = views[:, rows], data.labels[rows], groups[rows]
        example_video = video_codes
    n_views = x_views.shape[0]
    class_weight = "balanced" if config.imbalance != "none" else None

    def fit(c, examples):
        x = x_views[:, examples].reshape(-1, x_views.shape[2])
        scaler = StandardScaler().fit(x)
        if config.feature_pca:
            # Fewer, sturdier directions: principal components of the standardised training features.
            components = min(int(config.feature_pca), x.shape[0] - 1, x.shape[1])
            scaler = make_pipeline(scaler, PCA(n_components=components, random_state=0)).fit(x)
        logistic = LogisticRegression(C=c, class_weight=class_weight, max_iter=5000)
        # One BLAS thread: these small problems run ~10x faster than with threads fighting over
        # busy cores (measured on 2 shared cores: 9 s -> 0.8 s per fit of 490 x 2024).
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # convergence on tiny inner folds
            logistic.fit(scaler.transform(x), np.tile(y[examples], n_views))
        return scaler, logistic

    n_splits = max(2, min(5, len(np.unique(g))))
    splits = list(GroupKFold(n_splits=n_splits).split(y, y, g))
    frame_labels = data.labels[rows]
    scores = {}
    for c in config.linear_probe_cs:
        fold_scores = []
        for inner_train, inner_test in splits:
            scaler, logistic = fit(c, inner_train)
            test_frames = np.nonzero(np.isin(video_codes, example_video[inner_test]))[0]
            probs = np.zeros((len(test_frames), n_classes))
            probs[:, logistic.classes_] = logistic.predict_proba(scaler.transform(views[0, rows[test_frames]]))
            per_video = pd.DataFrame(probs).groupby(video_codes[test_frames]).mean()
            truth = pd.Series(frame_labels[test_frames]).groupby(video_codes[test_frames]).first()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # inner folds may miss a class
                fold_scores.append(balanced_accuracy_score(truth.to_numpy(), per_video.to_numpy().argmax(axis=1)))
        scores[c] = float(np.mean(fold_scores))
    best_c = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    scaler, logistic = fit(best_c, np.arange(len(y)))
    coef, intercept = logistic.coef_, logistic.intercept_
    if config.feature_pca:
        # Fold the projection into the linear head: (z - m) @ P.T @ coef.T + b on standardised z.
        projection = scaler[-1]
        coef = coef @ projection.components_
        intercept = intercept - coef @ projection.mean_
        scaler = scaler[0]
    present = logistic.classes_
    scale = scaler.scale_
    kernel = np.zeros((x_views.shape[2], n_classes), np.float32)
    bias = np.full(n_classes, -30.0, np.float32)  # classes never seen in training get ~0 probability
    if len(present) == 2:
        coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    for k, cls in enumerate(present):
        kernel[:, cls] = coef[k] / scale
        bias[cls] = intercept[k] - np.sum(coef[k] * scaler.mean_ / scale)
    model.get_layer("logits").set_weights([kernel, bias])
    if log:
        log(f"{prefix} logistic head on {len(y)} {config.train_unit}s x {n_views} view(s): C={best_c:g}, "
            f"inner grouped CV balanced accuracy {scores[best_c]:.3f}")
    return [{"epoch": 1, "C": best_c, "inner_cv_balanced_accuracy": scores[best_c], "examples": int(len(y)),
             "views": int(n_views)}]


def fit_fold(model: keras.Model, data: FoldData, config: TrainConfig, groups: np.ndarray, n_classes: int,
             seed: int = 0, log=print, prefix: str = "") -> dict[str, list[dict]]:
    """Train ``model`` in place on ``data`` with ``config``'s recipe; returns histories per stage."""
    keras.utils.set_random_seed(int(seed))
    if config.solver == "logistic":
        return {"linear_probe": _fit_linear_probe(model, data, config, groups, n_classes, seed, log, prefix)}
    histories = {}
    set_trainable(model, config.trainable, config.backbone)
    if config.engine == "plain":
        cut = None
    else:
        cut = "head" if config.trainable == "head" else "last_block"
    histories["head" if config.trainable == "head" else config.trainable] = _fit_stage(
        model, cut, data, config, n_classes, config.epochs, config.learning_rate, config.patience, seed, log,
        f"{prefix} {'head' if config.trainable == 'head' else config.trainable}")
    if config.fine_tune_epochs > 0:
        set_trainable(model, "last_block", config.backbone)
        histories["fine_tune"] = _fit_stage(
            model, None if config.engine == "plain" else "last_block", data, config, n_classes,
            config.fine_tune_epochs, config.fine_tune_learning_rate, config.fine_tune_patience, seed + 1, log,
            f"{prefix} fine-tune")
        set_trainable(model, config.trainable, config.backbone)
    return histories


def _predict_rows(model: keras.Model, data: FoldData, rows: np.ndarray, config: TrainConfig) -> np.ndarray:
    if config.engine == "cached" and data.features is not None:
        # Same function as the full model on the clean frames, from the cached features.
        cut = "last_block" if "last_block" in data.features and (config.trainable != "head" or config.fine_tune_epochs > 0) \
            else "head"
        if cut in data.features:
            layer = head_feature_layer() if cut == "head" else last_block_input_layer(config.backbone)
            return _batched_call(_tail(model, layer), data.features[cut][0][rows], 256)
    return _batched_call(model, data.frames[rows], 32)


# ----------------------------------------------------------------------------- cross-validation


@dataclasses.dataclass
class CVResult:
    """Out-of-fold predictions (one row per frame, seed) and what produced them."""

    oof: pd.DataFrame  # seed, fold, sample_id, group, label, frame_index, prob_<class>..., pred
    classes: list[str]
    config: TrainConfig
    histories: pd.DataFrame  # seed, fold, stage, epoch, loss, val_loss, ...
    folds: pd.DataFrame  # seed, sample_id, group, label, fold, role counts
    seconds: float
    group_by: str = "patient"
    protocol: dict = dataclasses.field(default_factory=dict)  # per seed: protocol, held_out, notes of the split

    def summary(self, n_boot: int = 1000) -> dict:
        """Metrics at frame and video level (see :func:`covnb.evaluate.summarize_cv`)."""
        from covnb.evaluate import summarize_cv

        return summarize_cv(self.oof, self.classes, n_boot=n_boot)


def _needed_cuts(config: TrainConfig) -> list[str]:
    if config.engine == "plain":
        return []
    cuts = ["head"]
    if config.trainable == "last_block" or config.fine_tune_epochs > 0:
        cuts.append("last_block")
    return cuts


def _prepare_features(frames: np.ndarray, config: TrainConfig, model: keras.Model, log) -> dict | None:
    cuts = _needed_cuts(config)
    if not cuts:
        return None
    views = 0 if config.recipe == "linear_probe" else config.aug_views
    features = {}
    if "last_block" in cuts:
        features["last_block"] = compute_features(frames, config, model, cut="last_block", views=views, log=log)
    head_views = 0 if config.trainable != "head" else views  # only needed for prediction then
    features["head"] = compute_features(frames, config, model, cut="head", views=head_views, log=log,
                                        from_last_block=features.get("last_block"))
    return features


def _split_samples(index: pd.DataFrame) -> pd.DataFrame:
    columns = ["sample_id", "group", "label"] + [c for c in ("source", "kind") if c in index]
    samples = index.drop_duplicates("sample_id")[columns].reset_index(drop=True)
    return samples


def _encode_frames(frameset, classes=None):
    """Frame table, class list, integer labels, groups, sample ids and the per-sample table."""
    index = frameset.index.reset_index(drop=True)
    if len(index) == 0:
        raise ValueError("No frames to train on")
    classes = list(classes or sorted(index["label"].unique()))
    class_of = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_of[c] for c in np.asarray(index["label"], dtype=str)])
    groups = np.asarray(index["group"], dtype=str)
    sample_ids = np.asarray(index["sample_id"], dtype=str)
    return index, classes, labels, groups, sample_ids, _split_samples(index)


def selection_configs(config: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """``(name, config)`` of every candidate of ``config.select`` (or ``config`` alone)."""
    if not config.select:
        return [(config.recipe, config)]
    # Candidates whose head needs taps this backbone lacks are left out.
    return [(name, dataclasses.replace(config, **SELECTION_CANDIDATES[name], select=())) for name in config.select
            if SELECTION_CANDIDATES[name].get("head") not in POOLED_TAP_HEADS
            or config.backbone in POOLED_TAP_HEADS[SELECTION_CANDIDATES[name]["head"]]]


def inner_cv_groups(index: pd.DataFrame, group_by: str = "patient", positive_label: str = "covid") -> np.ndarray:
    """Groups of the inner CV that chooses C and candidates: patient groups, or with
    ``group_by="source"`` every source that sent ``positive_label`` files as one group (so the
    inner folds, like the outer ones, test positives of sources absent from their training)."""
    groups = np.asarray(index["group"], dtype=str)
    if group_by == "patient" or "source" not in index:
        return groups
    if group_by != "source":
        raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")
    sources = np.asarray(index["source"].fillna("unknown"), dtype=str)
    positive_sources = set(sources[np.asarray(index["label"], dtype=str) == positive_label])
    return np.where(np.isin(sources, list(positive_sources)), np.char.add("source:", sources), groups)


class _Candidates:
    """Models, initial weights and cached features of each candidate of a recipe."""

    def __init__(self, frames: np.ndarray, config: TrainConfig, n_classes: int, log):
        self.entries = []
        for name, candidate in selection_configs(config):
            keras.utils.set_random_seed(candidate.seed)
            model = _model_for(candidate, n_classes, candidate.seed)
            self.entries.append((name, candidate, model, model.get_weights(),
                                 _prepare_features(frames, candidate, model, log)))

    def fit_best(self, frames, labels, train_rows, validation_rows, sample_ids, groups, n_classes, seed, log, prefix):
        """Fit every candidate; keep the one with the best inner-CV score. Returns (entry, data, histories)."""
        best = None
        for entry in self.entries:
            name, candidate, model, initial, features = entry
            model.set_weights(initial)
            data = FoldData(frames, labels, train_rows, validation_rows, features, sample_ids)
            histories = fit_fold(model, data, candidate, groups, n_classes, seed=seed,
                                 log=log if len(self.entries) == 1 else None, prefix=prefix)
            score = histories.get("linear_probe", [{}])[-1].get("inner_cv_balanced_accuracy", 0.0)
            if best is None or score > best[3]:
                best = (entry, data, histories, score)
            if len(self.entries) == 1:
                break
        entry, data, histories, score = best
        if len(self.entries) > 1:
            for stage in histories.values():
                for row in stage:
                    row["selected"] = entry[0]
            if log:
                log(f"{prefix}: selected {entry[0]} (inner CV video balanced accuracy {score:.3f})")
        return entry, data, histories


def run_cross_validation(frameset, config: TrainConfig | None = None, n_folds: int = 5, seeds=(0,),
                         folds: pd.Series | None = None, log: Callable[[str], None] | None = print,
                         classes: list[str] | None = None, group_by: str = "patient",
                         positive_label: str = "covid") -> CVResult:
    """Grouped stratified K-fold CV of a recipe on a :class:`covnb.frames.FrameSet`.

    For each split seed: folds by patient group (:func:`covnb.splits.patient_folds`) or, with
    ``group_by="source"``, source-held-out folds (:func:`covnb.splits.source_held_out_folds`);
    inside each training fold an inner split (never the test fold; grouped the same way) serves
    early stopping and model selection -- C, and with ``config.select`` the candidate recipe
    (nested CV: only the outer result is reported). ``folds`` (fold per sample_id, indexed by
    sample_id) overrides the split for a single seed. Frozen features are computed once.
    """
    from covnb.splits import cv_folds, inner_validation

    config = config or recipe_config("default")
    started = time.perf_counter()
    index, classes, labels, groups, sample_ids, samples = _encode_frames(frameset, classes)
    selection_groups = inner_cv_groups(index, group_by, positive_label)
    n_classes = len(classes)
    candidates = _Candidates(frameset.frames, config, n_classes, log)
    oof_parts, history_rows, fold_rows, protocol = [], [], [], {}
    for seed in seeds:
        if folds is not None:
            fold_of = pd.Series(folds).reindex(samples["sample_id"]).to_numpy()
            if np.isnan(fold_of.astype(float)).any():
                raise ValueError("folds does not cover every sample_id")
            fold_of = fold_of.astype(int)
        else:
            split = cv_folds(samples, group_by=group_by, n_splits=n_folds, seed=seed, positive_label=positive_label)
            fold_of = split.to_numpy()
            protocol[int(seed)] = dict(split.attrs)
        sample_fold = dict(zip(samples["sample_id"], fold_of))
        frame_fold = np.array([sample_fold[s] for s in sample_ids])
        n_made = len(set(fold_of))
        for fold in sorted(int(f) for f in set(fold_of)):
            fold_started = time.perf_counter()
            train_samples = samples[fold_of != fold].reset_index(drop=True)
            validation_mask = inner_validation(train_samples, config.validation_fraction, seed=seed * 100 + fold)
            validation_ids = set(train_samples.loc[validation_mask.to_numpy(), "sample_id"])
            test_rows = np.nonzero(frame_fold == fold)[0]
            in_train = frame_fold != fold
            is_validation = np.array([s in validation_ids for s in sample_ids])
            train_rows = np.nonzero(in_train & ~is_validation)[0]
            validation_rows = np.nonzero(in_train & is_validation)[0]
            _check_disjoint(groups, train_rows, validation_rows, test_rows, seed, fold)
            prefix = f"seed {seed} fold {fold + 1}/{n_made}"
            if log:
                log(f"{prefix}: train {len(train_rows)} frames ({len(set(groups[train_rows]))} patients), "
                    f"validation {len(validation_rows)} ({len(set(groups[validation_rows]))}), "
                    f"test {len(test_rows)} ({len(set(groups[test_rows]))})")
            (name, candidate, model, _, _), data, histories = candidates.fit_best(
                frameset.frames, labels, train_rows, validation_rows, sample_ids, selection_groups, n_classes,
                config.seed + 1000 * seed + fold, log, prefix)
            probs = _predict_rows(model, data, test_rows, candidate)
            part = index.iloc[test_rows][["sample_id", "group", "label", "frame_index"]].copy()
            for column in ("source", "kind"):
                if column in index:
                    part[column] = index[column].to_numpy()[test_rows]
            part.insert(0, "fold", fold)
            part.insert(0, "seed", seed)
            for k, class_name in enumerate(classes):
                part[f"prob_{class_name}"] = probs[:, k]
            part["pred"] = np.asarray(classes)[probs.argmax(axis=1)]
            if config.select:
                part["selected"] = name
            oof_parts.append(part)
            for stage, rows in histories.items():
                for row in rows:
                    history_rows.append({"seed": seed, "fold": fold, "stage": stage, **row})
            for role, rows in (("train", train_rows), ("validation", validation_rows), ("test", test_rows)):
                for sample in sorted(set(sample_ids[rows])):
                    fold_rows.append({"seed": seed, "fold": fold, "role": role, "sample_id": sample})
            if log:
                from sklearn.metrics import balanced_accuracy_score

                frame_bacc = balanced_accuracy_score(labels[test_rows], probs.argmax(axis=1))
                log(f"{prefix}: test frame balanced accuracy {frame_bacc:.3f} "
                    f"({time.perf_counter() - fold_started:.0f} s)")
    fold_table = pd.DataFrame(fold_rows).merge(samples, on="sample_id", how="left")
    return CVResult(pd.concat(oof_parts, ignore_index=True), classes, config, pd.DataFrame(history_rows), fold_table,
                    time.perf_counter() - started, group_by, protocol)


def _check_disjoint(groups, train_rows, validation_rows, test_rows, seed, fold):
    train_g, validation_g, test_g = set(groups[train_rows]), set(groups[validation_rows]), set(groups[test_rows])
    if train_g & test_g or validation_g & test_g or train_g & validation_g:
        raise AssertionError(f"seed {seed} fold {fold}: patient groups shared between train/validation/test")


def fit_final_model(frameset, config: TrainConfig | None = None, classes: list[str] | None = None,
                    log: Callable[[str], None] | None = print, group_by: str = "patient",
                    positive_label: str = "covid") -> tuple[keras.Model, dict]:
    """Fit ``config``'s recipe on all frames (an inner patient split for early stopping; with
    ``config.select`` the candidate with the best inner CV, grouped by ``group_by``, is kept).

    Returns ``(model, histories)``; the model takes raw RGB frames and returns probabilities.
    ``histories["selected"]`` names the chosen candidate and its settings when selecting.
    """
    from covnb.splits import inner_validation

    config = config or recipe_config("default")
    index, classes, labels, groups, sample_ids, samples = _encode_frames(frameset, classes)
    candidates = _Candidates(frameset.frames, config, len(classes), log)
    validation_mask = inner_validation(samples, config.validation_fraction, seed=config.seed)
    validation_ids = set(samples.loc[validation_mask.to_numpy(), "sample_id"])
    is_validation = np.array([s in validation_ids for s in sample_ids])
    if log:
        log(f"final model: train {int((~is_validation).sum())} frames, validation {int(is_validation.sum())} frames")
    (name, candidate, model, _, _), _, histories = candidates.fit_best(
        frameset.frames, labels, np.nonzero(~is_validation)[0], np.nonzero(is_validation)[0], sample_ids,
        inner_cv_groups(index, group_by, positive_label), len(classes), config.seed, log, "final")
    if config.select:
        histories = {**histories, "selected": [{"candidate": name, **SELECTION_CANDIDATES[name]}]}
    return model, histories


# ----------------------------------------------------------------------------- whole run


PROTOCOL_KEYS = {"source": "source_held_out", "patient": "patient_cv"}


def _baseline(frameset, config: TrainConfig, classes, n_folds: int, seeds, metrics: dict, n_boot: int,
              log, group_by: str = "patient", positive_label: str = "covid") -> tuple[dict, pd.DataFrame]:
    """The linear probe on the same backbone, folds and seeds: its summary (with the paired
    difference to ``config``) and its out-of-fold predictions."""
    from covnb.evaluate import summarize_cv

    probe = recipe_config("linear_probe", backbone=config.backbone, weights=config.weights, alpha=config.alpha,
                          image_size=config.image_size, seed=config.seed)
    cv = run_cross_validation(frameset, probe, n_folds=n_folds, seeds=seeds, classes=classes,
                              log=(lambda message: log(f"baseline {message}")) if log else None,
                              group_by=group_by, positive_label=positive_label)
    summary = summarize_cv(cv.oof, classes, n_boot=n_boot)
    entry = {"recipe": "linear_probe", "config": probe.to_dict(), "cv_seconds": cv.seconds}
    for level in ("frame", "video_mean"):
        entry[level] = {k: summary[level][k] for k in ("folds_mean", "folds_std", "pooled_mean", "pooled_std",
                                                        "bootstrap_95ci") if k in summary[level]}
    entry["by_kind"] = results_by_kind(cv.oof, classes)
    ours = metrics["video_mean"]["pooled_mean"]["balanced_accuracy"]
    theirs = summary["video_mean"]["pooled_mean"]["balanced_accuracy"]
    entry["video_balanced_accuracy_difference"] = ours - theirs
    if log:
        log(f"baseline (linear probe, same {PROTOCOL_KEYS[group_by]} folds): video balanced accuracy {theirs:.3f} vs "
            f"{ours:.3f} for recipe {config.recipe} ({ours - theirs:+.3f})")
    return entry, cv.oof


def _videos_with(oof: pd.DataFrame, classes, columns=("source", "kind")) -> pd.DataFrame:
    from covnb.evaluate import video_predictions

    videos = video_predictions(oof, classes, "mean")
    for column in columns:
        if column in oof:
            videos[column] = videos["sample_id"].map(oof.drop_duplicates("sample_id").set_index("sample_id")[column])
    return videos


def results_by_source(oof: pd.DataFrame, classes) -> list[dict]:
    """Per source and class, video level (mean frame probability): files and the share classified
    right, mean over split seeds. Under source-held-out folds, the rows of a held-out positive
    source are its sensitivity on a source never seen in training."""
    if "source" not in oof:
        return []
    videos = _videos_with(oof, classes)
    videos["correct"] = videos[[f"prob_{c}" for c in classes]].to_numpy().argmax(axis=1) == \
        videos["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    per_seed = videos.groupby(["seed", "source", "label"]).agg(files=("correct", "size"), correct=("correct", "mean"))
    table = per_seed.groupby(["source", "label"]).agg(files=("files", "first"), share_correct=("correct", "mean"))
    folds = videos.groupby(["source", "label"])["fold"].agg(lambda f: sorted({int(x) for x in f}))
    table["test_folds"] = folds
    return [{"source": str(source), "label": str(label), "files": int(row.files),
             "share_correct": float(row.share_correct), "test_folds": row.test_folds}
            for (source, label), row in table.iterrows()]


def results_by_kind(oof: pd.DataFrame, classes) -> dict:
    """Video-level metrics (pooled per seed, mean over seeds) of videos and still images separately."""
    from covnb.evaluate import pooled_metrics

    if "kind" not in oof:
        return {}
    result = {}
    for kind, part in oof.groupby("kind"):
        pooled = pooled_metrics(part, classes, "video_mean").drop(columns=["seed"])
        entry = {"files": int(part["sample_id"].nunique())}
        for column in pooled.columns:
            if column.endswith("_support") or column == "n":
                continue
            entry[column] = float(pooled[column].mean())
        for name in classes:
            entry[f"{name}_files"] = int(part.loc[part["label"] == name, "sample_id"].nunique())
        result[str(kind)] = entry
    return result


def _protocol_block(cv: CVResult, classes, n_boot: int) -> dict:
    from covnb.evaluate import summarize_cv

    block = summarize_cv(cv.oof, classes, n_boot=n_boot)
    block.update(group_by=cv.group_by, cv_seconds=cv.seconds, by_kind=results_by_kind(cv.oof, classes),
                 by_source=results_by_source(cv.oof, classes),
                 splits={str(seed): attrs for seed, attrs in cv.protocol.items()})
    notes = []
    for attrs in cv.protocol.values():
        notes += [n for n in attrs.get("notes", []) if n not in notes]
    block["notes"] = notes
    if "selected" in cv.oof:
        chosen = cv.oof.drop_duplicates(["seed", "fold"])["selected"].value_counts()
        block["selected"] = {str(k): int(v) for k, v in chosen.items()}
    return block


def run_training(data=None, out_dir: str | Path = "covnb-train", config: TrainConfig | None = None,
                 task: str | None = None, n_folds: int = 5, seeds=(0,), frame_settings=None,
                 final_model: bool = True, figures: bool = True, n_boot: int = 1000, baseline: bool = True,
                 log: Callable[[str], None] | None = print, protocols=("source", "patient"),
                 positive_label: str = "covid") -> dict:
    """What ``covnb train`` does: data -> frames -> CV -> metrics, OOF CSV, figures -> final model.

    ``protocols``: the cross-validations to run, the first one the headline: ``"source"``
    (source-held-out: every test fold's ``positive_label`` files come from sources absent from
    its training data, :func:`covnb.splits.source_held_out_folds`) and ``"patient"``
    (patient-grouped). A source-held-out split that is impossible (one positive source) is
    skipped with a note. ``metrics["source_held_out"]`` and ``metrics["patient_cv"]`` hold each
    (summary, per-source and per-kind results, split notes, baseline); the top-level metric keys
    repeat the headline one (``metrics["headline"]``).

    ``baseline``: also cross-validate the ``"linear_probe"`` recipe (same backbone, folds and
    seeds) and report it beside the recipe (``["baseline"]``, ``baseline_oof_predictions*.csv``).

    ``data``: a folder (or None for the synthetic phantom), a :class:`covnb.datasets.Dataset`
    or a sample table. Writes into ``out_dir``: ``metrics.json``, ``oof_predictions.csv`` (the
    headline protocol; ``oof_predictions_<protocol>.csv`` for the others),
    ``training_history.csv``, ``folds.csv``, figures (``*.png``) and ``model.keras`` +
    ``model.json``. Returns the metrics dict (with ``paths``).
    """
    from covnb.datasets import (Dataset, check_usable, data_fingerprint, default_task, load_dataset,
                                merge_duplicate_groups, select_task)
    from covnb.evaluate import (plot_confusion_matrices, plot_model_selection, plot_roc_curves, plot_training_curves,
                                summarize_cv, video_predictions)
    from covnb.frames import FrameSettings, extract_frames
    from covnb.splits import source_held_out_folds

    config = config or recipe_config("default")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pd.DataFrame):
        samples, merges = merge_duplicate_groups(data)
        data_root, load_skipped, grouping = None, pd.DataFrame(columns=["path", "reason"]), "the table's group column"
    else:
        dataset = data if isinstance(data, Dataset) else load_dataset(data)
        samples = select_task(dataset.samples, task or default_task(dataset))
        data_root, load_skipped, grouping, merges = str(dataset.root), dataset.skipped, dataset.grouping, dataset.merges
    check_usable(samples, load_skipped)  # before any decoding
    settings = frame_settings or FrameSettings(image_size=config.image_size)
    if int(settings.image_size) != int(config.image_size):
        raise ValueError(f"frame_settings.image_size {settings.image_size} != config.image_size {config.image_size}")
    if log:
        log(f"frames: {len(samples)} files at {settings.rate_hz:g} Hz, at most {settings.max_frames} per video "
            "(decoded once, then read from the cache)")
    frameset = extract_frames(samples, settings, progress=bool(log) and sys.stderr.isatty())
    skipped = pd.concat([load_skipped.assign(stage="load"), frameset.skipped.assign(stage="frames")], ignore_index=True)
    if log:
        log(f"data: {samples['sample_id'].nunique()} files, {samples['group'].nunique()} patients, "
            f"{len(frameset)} frames, {len(skipped)} skipped; recipe {config.recipe}, backbone "
            f"{config.backbone}, {n_folds}-fold CV, seeds {list(seeds)}")
        log(f"grouping: {grouping}" + (f"; {len(merges)} merge(s) of groups sharing identical files" if merges else ""))
        for item in skipped.head(20).itertuples():
            log(f"  skipped {item.path}: {item.reason}")
    check_usable(frameset.index, skipped)
    classes = sorted(frameset.index["label"].unique())
    protocols = [p for p in protocols if p in PROTOCOL_KEYS] or ["patient"]
    blocks, skipped_notes = {}, {}
    if "source" in protocols:
        probe_split = source_held_out_folds(_split_samples(frameset.index), positive_label=positive_label,
                                            n_splits=n_folds, seed=int(seeds[0]))
        if probe_split.attrs["protocol"] != "source":
            skipped_notes = {"available": False, "notes": probe_split.attrs["notes"]}
            protocols = [p for p in protocols if p != "source"] or ["patient"]
            if log:
                log(f"source-held-out evaluation skipped: {probe_split.attrs['notes'][0]}")
    paths = {"training_history": out / "training_history.csv", "folds": out / "folds.csv",
             "metrics": out / "metrics.json"}
    headline_cv = None
    for position, group_by in enumerate(protocols):
        key = PROTOCOL_KEYS[group_by]
        suffix = "" if position == 0 else f"_{key}"
        if log:
            log(f"--- {key.replace('_', ' ')} cross-validation" + (" (headline)" if position == 0 else ""))
        cv = run_cross_validation(frameset, config, n_folds=n_folds, seeds=seeds, log=log, classes=classes,
                                  group_by=group_by, positive_label=positive_label)
        block = _protocol_block(cv, classes, n_boot)
        if log:
            for note in block["notes"]:
                log(f"{key}: {note}")
        paths[f"oof_predictions{suffix}"] = out / f"oof_predictions{suffix}.csv"
        cv.oof.to_csv(paths[f"oof_predictions{suffix}"], index=False)
        if baseline and config.recipe != "linear_probe":
            block["baseline"], baseline_oof = _baseline(frameset, config, classes, n_folds, seeds, block, n_boot, log,
                                                        group_by, positive_label)
            paths[f"baseline_oof_predictions{suffix}"] = out / f"baseline_oof_predictions{suffix}.csv"
            baseline_oof.to_csv(paths[f"baseline_oof_predictions{suffix}"], index=False)
        blocks[key] = block
        if position == 0:
            headline_cv = cv
            cv.histories.to_csv(paths["training_history"], index=False)
            cv.folds.to_csv(paths["folds"], index=False)
    cv = headline_cv
    headline = PROTOCOL_KEYS[protocols[0]]
    metrics = blocks[headline]
    if figures:
        import matplotlib.pyplot as plt

        videos = video_predictions(cv.oof, classes, "mean")
        # every figure says what, on which data, with which recipe, at which level
        from covnb.cache import cache_dir

        if data_root is None:
            data_name = f"{samples['sample_id'].nunique()} given samples"
        elif Path(data_root).parent == cache_dir("phantom"):
            data_name = "synthetic phantom (not real patients)"
        else:
            data_name = f"data {Path(data_root).name}"
        about = (f"{data_name}, recipe {config.recipe} ({config.backbone}), out-of-fold over {n_folds} patient folds"
                 f" x {len(list(seeds))} split seed(s)")
        frame_title = f"Frame level, {len(cv.oof)} frame predictions: {about}"
        video_title = f"Video level (mean frame probability), {len(videos)} video predictions:\n{about}"
        figures_to_write = [("confusion_frames", plot_confusion_matrices(cv.oof, classes, title=frame_title)),
                            ("confusion_videos", plot_confusion_matrices(videos, classes, title=video_title)),
                            ("roc_videos", plot_roc_curves(videos, classes, title=f"ROC, one class vs the rest. "
                                                           f"{video_title}"))]
        fitted = cv.histories
        if len(fitted) and "loss" in fitted and not fitted["loss"].isna().all():
            figures_to_write.append(("training_curves", plot_training_curves(
                fitted, title=f"Training curves per fold: {about}")))
        elif len(fitted) and "C" in fitted:  # a logistic head: what was fitted is the C chosen by inner CV
            figures_to_write.append(("model_selection", plot_model_selection(fitted, f"Model selection per fold: {about}")))
        for name, figure in figures_to_write:
            paths[name] = out / f"{name}.png"
            figure.savefig(paths[name], dpi=100, bbox_inches="tight")
            plt.close(figure)
    fingerprint = data_fingerprint(samples)
    result = {"config": config.to_dict(), "classes": classes, "n_folds": n_folds, "seeds": list(seeds),
              "data_fingerprint": fingerprint, "data_root": data_root,
              "cv_seconds": sum(b["cv_seconds"] for b in blocks.values()), "headline": headline,
              **{k: v for k, v in metrics.items() if k != "cv_seconds"}, **blocks,
              "grouping": grouping, "group_merges": merges, "skipped": skipped.to_dict("records")}
    if skipped_notes:
        result["source_held_out"] = skipped_notes
    if final_model:
        started = time.perf_counter()
        model, histories = fit_final_model(frameset, config, classes, log, group_by=protocols[0],
                                           positive_label=positive_label)
        metadata = {"classes": classes, "image_size": int(config.image_size),
                    "frame_settings": dataclasses.asdict(settings), "rate_hz": settings.rate_hz,
                    "max_frames": settings.max_frames, "backbone": config.backbone, "weights": str(config.weights),
                    "alpha": config.alpha, "preprocessing": "raw RGB 0..255 in; backbone preprocessing inside the model",
                    "training": config.to_dict(), "cv_protocol": headline,
                    "cv_metrics": {k: metrics[k] for k in ("video_mean", "frame") if k in metrics},
                    "data_fingerprint": fingerprint, "covnb_version": __version__,
                    "final_history": histories}
        paths["model"] = save_model(model, out / "model.keras", metadata)
        result["final_model_seconds"] = time.perf_counter() - started
    result["paths"] = {k: str(v) for k, v in paths.items()}
    from covnb.models import _jsonable

    paths["metrics"].write_text(json.dumps(_jsonable(result), indent=2))
    from covnb.trust import trust_outputs  # calibration, uncertainty, model card (issue 14)

    return trust_outputs(out, result, frameset=frameset, config=config, samples=samples, n_boot=n_boot,
                         figures=figures, log=log)
