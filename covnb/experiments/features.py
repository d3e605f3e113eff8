"""The frozen-feature store shared by training, few-shot learning and the audits.

The backbone is frozen, so its features of a frame never change: :func:`compute_features`
computes them once per frame and cached view (:func:`view_kinds`) and keeps them on disk under
``cache_dir("features")``, keyed by the frames' content, the frozen weights themselves, image
size, augmentation and view. :func:`recipe_features` gives a recipe every cut it trains on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
import weakref
from pathlib import Path
from typing import Callable

import numpy as np

import keras

from covnb.cache import read_cached_array, usable_cache_dir, write_cached_array
from covnb.cluster import map_with_payload, worker_cached
from covnb.experiments.recipes import TrainConfig
from covnb.models import augmentation_spec, build_model, head_feature_layer, last_block_input_layer

__all__ = ["FEATURE_CACHE_VERSION", "DEVICE_APPEARANCE_VERSION", "recipe_model", "predict_frames", "view_kinds",
           "device_appearance", "compute_features", "features_on_cluster", "FEATURE_ROWS_PER_TASK", "needed_cuts", "recipe_features", "cut_layer"]

FEATURE_CACHE_VERSION = 1
#: Frames per feature task on a cluster (rounded down to a multiple of the batch size).
FEATURE_ROWS_PER_TASK = 512
DEVICE_APPEARANCE_VERSION = 1


@contextlib.contextmanager
def _layer_seeds_from(seed: int):
    """Keras layers built inside draw their default seeds from a private generator seeded as
    ``keras.utils.set_random_seed(seed)`` seeds Python's, not from Python's process-wide ``random``.

    Keras 3 gives every initializer, dropout and augmentation layer built without a seed a
    ``SeedGenerator`` whose seed is ``random.randint(...)`` at construction. Another thread of the
    process (a Dask client's or worker's event loop) may draw from the same ``random`` meanwhile, and
    then the same seed gave other initial weights now and then (found by the few-shot cluster test).
    Afterwards Python's generator is left where the private one ended, as if it had made the draws.
    """
    from keras.src.random import seed_generator  # the module whose `python_random` Keras draws from

    private, saved = random.Random(int(seed)), seed_generator.python_random
    seed_generator.python_random = private
    try:
        yield
    finally:
        seed_generator.python_random = saved
        random.setstate(private.getstate())


def recipe_model(config: TrainConfig, n_classes: int, seed: int) -> keras.Model:
    """The full Keras model (raw RGB in, probabilities out) a recipe trains; built with seeds drawn
    from ``seed`` alone (callers call ``keras.utils.set_random_seed(seed)`` first, as before)."""
    with _layer_seeds_from(seed):
        return _build_recipe_model(config, n_classes, seed)


def _build_recipe_model(config: TrainConfig, n_classes: int, seed: int) -> keras.Model:
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

    def view(self, source: np.ndarray, kind: str, view: int, *, n_views: int, step: int,
             offset: int = 0) -> list[np.ndarray]:
        """The features of one view of ``source``, in chunks of ``step`` frames; ``source`` starts at
        row ``offset`` of the frames (a cluster task's part: the device views are drawn per row)."""
        if kind == "augment":
            keras.utils.set_random_seed(int(self.config.seed) * 1009 + view)
        chunks = []
        for i in range(0, len(source), step):
            chunks.append(np.asarray(self.frozen_call(self._batch(source[i:i + step], kind, view, offset + i))))
            if self.log and time.perf_counter() - self.last_report > 10:  # a sign of life at least every 10 s
                self.last_report = time.perf_counter()
                self.log(f"features: view {view + 1}/{n_views}, {min(i + step, len(source))}/"
                         f"{len(source)} frames ({self.last_report - self.started:.0f} s)")
        return chunks


def compute_features(frames: np.ndarray, config: TrainConfig, model: keras.Model | None = None, *,
                     cut: str = "head", views: int | None = None, cache: bool = True,
                     log: Callable[[str], None] | None = print, batch_size: int = 32,
                     from_last_block: np.ndarray | None = None, client=None,
                     rows_per_task: int = FEATURE_ROWS_PER_TASK) -> np.ndarray:
    """Frozen features of every frame, for the views of :func:`view_kinds`: view 0 clean, then
    a horizontal mirror (``config.mirror_view``), then ``views`` random augmented views.

    ``cut="head"``: pooled features (the ``head_features`` layer); ``cut="last_block"``: the
    input of the backbone's last block (float16). Returns ``(n_views, N, ...)``. Features are
    cached under ``cache_dir("features")`` keyed by the frames' content, backbone, weights, image
    size, augmentation and view; the backbone is frozen, so they never change.
    ``from_last_block``: the ``cut="last_block"`` features of the same views, from which pooled
    features are derived by running only the last block (no second backbone pass).
    ``client``: a :class:`distributed.Client` (:mod:`covnb.cluster`) whose workers compute the
    missing views of the frames, ``rows_per_task`` frames per task (see :func:`features_on_cluster`);
    random augmented views and derived features are computed here.
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
    on_cluster = client is not None and from_last_block is None and all(kinds[view] != "augment" for view in missing)
    fill = _views_on_cluster if on_cluster else _views_here
    fill(frames, config, model, layer=layer, kinds=kinds, missing=missing, results=results,
         store=(paths, [writable]), log=log, batch_size=batch_size, cut=cut, from_last_block=from_last_block,
         client=client, rows_per_task=rows_per_task)
    return np.stack(results)


def _store_view(store: tuple[list[Path], bool], view: int, array: np.ndarray) -> None:
    """Keep a computed view in the feature store (once a write fails, the rest are not tried)."""
    paths, writable = store
    if writable[0]:
        writable[0] = write_cached_array(paths[view], array)


def _views_on_cluster(frames, config, model, *, layer, kinds, missing, results, store, log, batch_size, client,
                      rows_per_task, **_):
    """The missing views computed by the cluster's workers (:func:`features_on_cluster`)."""
    started = time.perf_counter()
    filled = features_on_cluster(client, frames, config, model, layer=layer, kinds=kinds, views=missing,
                                 rows_per_task=rows_per_task, batch_size=batch_size,
                                 folder=store[0][0].parent if store[1][0] else None)
    for view in missing:
        results[view] = filled[view]
        _store_view(store, view, results[view])
    if log:
        log(f"features: {len(missing)} view(s) x {len(frames)} frames at '{layer}' computed on the cluster in "
            f"{time.perf_counter() - started:.1f} s")


def _views_here(frames, config, model, *, layer, kinds, missing, results, store, log, batch_size, cut,
                from_last_block, **_):
    """The missing views computed in this process, batch by batch (or derived from the last block)."""
    frozen = _FrozenPass(model, config, layer, derived=from_last_block is not None, augment="augment" in kinds
                         and bool(augmentation_spec(config.augmentation)), log=log)
    dtype = np.float32 if cut == "head" else np.float16
    for view in missing:
        source = frames if from_last_block is None else from_last_block[view]
        chunks = frozen.view(source, kinds[view], view, n_views=len(kinds),
                             step=batch_size if from_last_block is None else 256)
        results[view] = (np.concatenate(chunks) if chunks else np.zeros((0,) + frozen.output_shape)).astype(dtype)
        _store_view(store, view, results[view])
    if log:
        seconds = time.perf_counter() - frozen.started
        log(f"features: {len(missing)} view(s) x {len(frames)} frames at '{layer}' computed in "
            f"{seconds:.1f} s ({len(missing) * len(frames) / max(seconds, 1e-9):.0f} frames/s)")


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
                    log: Callable[[str], None] | None, *, client=None) -> dict | None:
    """Every cached feature cut ``config`` trains on (``{"head": (V, N, D), "last_block": ...}``),
    from the store (:func:`compute_features`; the backbone pass over the frames on ``client``'s
    workers when given); None for the plain engine."""
    cuts = needed_cuts(config)
    if not cuts:
        return None
    views = 0 if config.recipe == "linear_probe" else config.aug_views
    features = {}
    if "last_block" in cuts:
        features["last_block"] = compute_features(frames, config, model, cut="last_block", views=views, log=log,
                                                  client=client)
    head_views = 0 if config.trainable != "head" else views  # only needed for prediction then
    features["head"] = compute_features(frames, config, model, cut="head", views=head_views, log=log,
                                        from_last_block=features.get("last_block"), client=client)
    return features


# ----------------------------------------------------------------------------- on a Dask cluster

def feature_chunk(payload: dict, frames: np.ndarray, offset: int) -> list:
    """On a worker: the features of ``frames`` (rows ``offset`` onwards of the full set) for the
    payload's views. With a cache folder each view is written there atomically, under a key of
    its frames' content, the frozen weights, the settings and ``offset``, and its path returned;
    without one, the arrays are returned."""
    import dataclasses

    config = payload["config"]

    def build() -> _FrozenPass:
        keras.utils.set_random_seed(int(config.seed))
        model = recipe_model(dataclasses.replace(config, weights=None), payload["n_classes"], config.seed)
        model.set_weights(payload["weights"])
        return _FrozenPass(model, config, payload["layer"], derived=False, augment=False, log=None)

    frozen = worker_cached(payload["token"], build)
    fingerprint = f"{_frames_fingerprint(frames)}{payload['backbone']}+{int(offset)}"
    out = []
    for view in payload["views"]:
        kind = payload["kinds"][view]
        chunks = frozen.view(frames, kind, view, n_views=len(payload["kinds"]), step=payload["batch_size"],
                             offset=int(offset))
        array = (np.concatenate(chunks) if chunks else np.zeros((0,) + frozen.output_shape)).astype(payload["dtype"])
        if payload["folder"] is None:
            out.append(array)
            continue
        path = Path(payload["folder"]) / f"{_feature_key(fingerprint, config, payload['layer'], view, kind)}.npy"
        if not write_cached_array(path, array):
            out.append(array)  # the shared cache is not writable here: send the features instead
            continue
        out.append(str(path))
    return out


def features_on_cluster(client, frames: np.ndarray, config: TrainConfig, model: keras.Model, *, layer: str,
                        kinds: list[str], views: list[int], rows_per_task: int = FEATURE_ROWS_PER_TASK,
                        batch_size: int = 32, folder: Path | None = None) -> dict[int, np.ndarray]:
    """Frozen features of ``frames`` at ``layer`` for ``views`` (indices into ``kinds``; no
    random augmented view), computed by the Dask workers of ``client``.

    The frames are cut into parts of ``rows_per_task`` rows, rounded down to a multiple of
    ``batch_size``: each backbone batch is then the one of a serial run, so the features are the
    same, byte for byte. The frozen weights are sent once; each task writes its part of every view
    to the feature store in ``folder`` (atomically; the folder must be one all workers and this
    process share, e.g. ``$COVNB_CACHE_DIR`` on a network file system) and this process reads
    the parts back, in order. Without ``folder`` the parts come back as task results.

    Returns ``{view: array (N, ...)}``, float32 for pooled features, float16 for last-block inputs.
    """
    step = max(1, int(batch_size))
    per_task = max(step, int(rows_per_task) // step * step)
    dtype = np.float32 if layer == head_feature_layer() else np.float16
    payload = {"config": config, "n_classes": int(model.output.shape[-1]),
               "weights": model.get_weights(), "layer": layer, "kinds": list(kinds), "views": list(views),
               "batch_size": step, "dtype": dtype, "backbone": _backbone_fingerprint(model, layer),
               "folder": None if folder is None else str(folder)}
    starts = list(range(0, len(frames), per_task))
    chunks = [(frames[start:start + per_task], start) for start in starts]
    results = map_with_payload(client, feature_chunk, payload, chunks, name="covnb-features",
                               payload_name="covnb-weights", keys=starts)
    parts: dict[int, list] = {view: [] for view in views}
    for start, result in zip(starts, results):
        for view, part in zip(views, result):
            if isinstance(part, str):
                array = read_cached_array(Path(part), rows=min(per_task, len(frames) - start))
                if array is None:
                    raise RuntimeError(f"features of frames {start}.. written by a worker to {part} cannot be read "
                                       f"here: the feature cache must be on a path every worker and this process "
                                       f"share (set $COVNB_CACHE_DIR)")
                Path(part).unlink(missing_ok=True)  # the whole view is stored under its own key next
                part = array
            parts[view].append(part)
    shape = (0,) + tuple(int(d) for d in model.get_layer(layer).output.shape[1:])
    return {view: np.concatenate(chunks) if chunks else np.zeros(shape, dtype) for view, chunks in parts.items()}
