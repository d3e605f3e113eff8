"""The frozen-feature store shared by training, few-shot learning and the audits.

The backbone is frozen, so its features of a frame never change: :func:`compute_features`
computes them once per frame and cached view (:func:`view_kinds`) and keeps them on disk under
``cache_dir("features")``, keyed by the frames' content, the frozen weights themselves, image
size, augmentation and view. :func:`recipe_features` gives a recipe every cut it trains on.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from pathlib import Path
from typing import Callable

import numpy as np

import keras

from covnb.cache import read_cached_array, usable_cache_dir, write_cached_array
from covnb.experiments.recipes import TrainConfig
from covnb.models import augmentation_spec, build_model, head_feature_layer, last_block_input_layer

__all__ = ["FEATURE_CACHE_VERSION", "DEVICE_APPEARANCE_VERSION", "recipe_model", "predict_frames", "view_kinds",
           "device_appearance", "compute_features", "needed_cuts", "recipe_features", "cut_layer"]

FEATURE_CACHE_VERSION = 1
DEVICE_APPEARANCE_VERSION = 1


def recipe_model(config: TrainConfig, n_classes: int, seed: int) -> keras.Model:
    """The full Keras model (raw RGB in, probabilities out) a recipe trains."""
    return build_model(config.backbone, n_classes, config.head, config.image_size, weights=config.weights,
                       trainable=config.trainable if config.trainable != "all" else "all",
                       augmentation=config.augmentation, dropout=config.dropout, alpha=config.alpha, seed=seed)


def cut_layer(cut: str, backbone: str) -> str:
    """The layer a feature cut ends at: ``"head"`` (pooled features) or ``"last_block"`` (its input)."""
    return head_feature_layer() if cut == "head" else last_block_input_layer(backbone)


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


class _FrozenPass:
    """The frozen part of a model up to ``layer`` in ``tf.function``s: from the raw frames, or
    (``derived``) from cached last-block inputs, so that only the frozen last block runs."""

    def __init__(self, model: keras.Model, config: TrainConfig, layer: str, *, derived: bool, augment: bool,
                 log: Callable[[str], None] | None):
        import tensorflow as tf

        preprocess = f"{config.backbone}_preprocess"
        augmenter = keras.Model(model.input, model.get_layer(preprocess).input) if augment else None
        start = last_block_input_layer(config.backbone) if derived else None
        frozen = keras.Model(model.get_layer(start).output if derived else model.get_layer(preprocess).input,
                             model.get_layer(layer).output)
        self.config, self.derived, self.log = config, derived, log
        self.output_shape = tuple(frozen.output.shape[1:])
        self.started = self.last_report = time.perf_counter()
        self.frozen_call = tf.function(lambda b: frozen(b, training=False), reduce_retracing=True)
        self.augment_call = (tf.function(lambda b: augmenter(b, training=True), reduce_retracing=True)
                             if augmenter else None)

    def _batch(self, chunk: np.ndarray, kind: str, view: int, start: int):
        import tensorflow as tf

        if kind == "mirror" and not self.derived:
            chunk = chunk[:, :, ::-1]  # exact left-right mirror of the frame
        if kind == "device" and not self.derived:
            chunk = device_appearance(chunk, seed=int(self.config.seed) * 7919 + view * 104729 + start)
        batch = tf.convert_to_tensor(chunk, dtype=tf.float32)
        if kind == "augment" and not self.derived:
            batch = self.augment_call(batch)
        return batch

    def view(self, source: np.ndarray, kind: str, view: int, *, n_views: int, step: int) -> list[np.ndarray]:
        """The features of one view of ``source``, in chunks of ``step`` frames."""
        if kind == "augment":
            keras.utils.set_random_seed(int(self.config.seed) * 1009 + view)
        chunks = []
        for i in range(0, len(source), step):
            chunks.append(np.asarray(self.frozen_call(self._batch(source[i:i + step], kind, view, i))))
            if self.log and time.perf_counter() - self.last_report > 10:  # a sign of life at least every 10 s
                self.last_report = time.perf_counter()
                self.log(f"features: view {view + 1}/{n_views}, {min(i + step, len(source))}/"
                         f"{len(source)} frames ({self.last_report - self.started:.0f} s)")
        return chunks


def compute_features(frames: np.ndarray, config: TrainConfig, model: keras.Model | None = None, *,
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
    if model is None:
        keras.utils.set_random_seed(int(config.seed))
        model = recipe_model(config, 2, config.seed)
    layer = cut_layer(cut, config.backbone)
    paths, results, writable = _stored_views(frames, config, model, layer, kinds, cache)
    missing = [view for view, result in enumerate(results) if result is None]
    if not missing:
        if log:
            log(f"features: {len(kinds)} view(s) x {len(frames)} frames at '{layer}' read from cache")
        return np.stack(results)
    frozen = _FrozenPass(model, config, layer, derived=from_last_block is not None, augment="augment" in kinds
                         and bool(augmentation_spec(config.augmentation)), log=log)
    dtype = np.float32 if cut == "head" else np.float16
    for view in missing:
        source = frames if from_last_block is None else from_last_block[view]
        chunks = frozen.view(source, kinds[view], view, n_views=len(kinds),
                             step=batch_size if from_last_block is None else 256)
        results[view] = (np.concatenate(chunks) if chunks else np.zeros((0,) + frozen.output_shape)).astype(dtype)
        if writable:
            writable = write_cached_array(paths[view], results[view])
    if log:
        seconds = time.perf_counter() - frozen.started
        log(f"features: {len(missing)} view(s) x {len(frames)} frames at '{layer}' computed in "
            f"{seconds:.1f} s ({len(missing) * len(frames) / max(seconds, 1e-9):.0f} frames/s)")
    return np.stack(results)


def _stored_views(frames: np.ndarray, config: TrainConfig, model: keras.Model, layer: str, kinds: list[str],
                  cache: bool) -> tuple[list[Path], list, bool]:
    """The store's path of every view and the views found there (None where missing); whether
    the store is usable. The key holds the frozen weights themselves: random (weights=None) or
    changed backbones never collide."""
    fingerprint = _frames_fingerprint(frames) + _backbone_fingerprint(model, layer)
    folder = usable_cache_dir("features") if cache else None
    paths = [(folder or Path(".")) / f"{_feature_key(fingerprint, config, layer, view, kind)}.npy"
             for view, kind in enumerate(kinds)]
    if folder is None:
        return paths, [None] * len(kinds), False
    return paths, [read_cached_array(path, rows=len(frames)) for path in paths], True


def needed_cuts(config: TrainConfig) -> list[str]:
    """The feature cuts a recipe trains on: none (plain engine), ``"head"``, and ``"last_block"``
    when the last block is trained."""
    if config.engine == "plain":
        return []
    cuts = ["head"]
    if config.trainable == "last_block" or config.fine_tune_epochs > 0:
        cuts.append("last_block")
    return cuts


def recipe_features(frames: np.ndarray, config: TrainConfig, model: keras.Model,
                    log: Callable[[str], None] | None) -> dict | None:
    """Every cached feature cut ``config`` trains on (``{"head": (V, N, D), "last_block": ...}``),
    from the store (:func:`compute_features`); None for the plain engine."""
    cuts = needed_cuts(config)
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
