"""Fitting a recipe's head on one fold: the Keras head (Adam, early stopping) and the logistic head.

:class:`FoldData` carries one fold's inputs and names its training unit (``"frame"``, or
``"video"``: each video's mean feature is one example); :func:`fit_fold` trains a model on it in
place with a :class:`~covnb.experiments.recipes.TrainConfig`'s recipe.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

import keras

from covnb.experiments.features import _batched_call, _tail, cut_layer
from covnb.experiments.recipes import SOURCE_WEIGHTINGS, TRAIN_UNITS, TrainConfig, needs_sources
from covnb.experiments.keras_loop import _Batches, _EpochLine, distribution_strategy  # noqa: F401 (API)
from covnb.models import set_trainable

__all__ = ["class_weights", "FoldData", "fit_fold", "predict_rows", "distribution_strategy"]


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (k * n_c) (scikit-learn's "balanced"); absent classes get 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


# ----------------------------------------------------------------------------- fold data


@dataclasses.dataclass
class FoldData:
    """Inputs of one training run: arrays aligned with frames, which rows to use, and the unit.

    ``unit="video"``: the head learns from each video's mean feature (``videos`` names the video
    of every frame); ``unit="frame"``: one example per frame. :func:`fit_fold` refuses a unit
    other than its recipe's ``train_unit``; :meth:`for_recipe` takes it from the recipe.
    """

    frames: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int class index
    train_rows: np.ndarray  # rows for fitting
    validation_rows: np.ndarray  # rows for early stopping / model selection (inner split)
    features: dict | None = None  # {"head": (V, N, D), "last_block": (V, N, h, w, c)} cached features
    videos: np.ndarray | None = None  # (N,) sample_id of each frame (needed by unit="video")
    unit: str = "frame"  # what one training example is: "frame" or "video"
    sources: np.ndarray | None = None  # (N,) source of each frame (source-balanced weights, nuisance projection)

    def __post_init__(self):
        if self.unit not in TRAIN_UNITS:
            raise ValueError(f"unit must be one of {TRAIN_UNITS}, got {self.unit!r}")
        if self.unit == "video" and self.videos is None:
            raise ValueError("FoldData(unit='video') needs the video (sample_id) of every frame: videos=...")
        if self.sources is not None and len(self.sources) != len(self.labels):
            raise ValueError(f"FoldData: {len(self.sources)} sources for {len(self.labels)} frames")

    @classmethod
    def for_recipe(cls, config: TrainConfig, frames: np.ndarray, labels: np.ndarray, *, train_rows: np.ndarray,
                   validation_rows: np.ndarray, features: dict | None = None,
                   videos: np.ndarray | None = None, sources: np.ndarray | None = None) -> "FoldData":
        """Fold data whose unit is ``config.train_unit``; ``sources`` (the source of every frame)
        is needed by recipes that weigh or project out sources."""
        if sources is None and needs_sources(config):
            raise ValueError(f"the recipe uses each file's source (imbalance={config.imbalance!r}, nuisance_dims="
                             f"{config.nuisance_dims}) but the data has no 'source' column")
        return cls(frames, labels, train_rows, validation_rows, features, videos, unit=config.train_unit,
                   sources=None if sources is None else np.asarray(sources, dtype=str))


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
    return _sample_weights(labels, rows, n_classes, "class_weight")


# ----------------------------------------------------------------------------- Keras head


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


def _standardised_head_views(model: keras.Model, data: FoldData) -> tuple[np.ndarray, tuple]:
    """Pooled features standardised over every view of the training rows (the examples the head is
    fitted on), with the model's first Dense mapped into that space; returns the views and the
    statistics to fold back after training (scale-free optimisation, plain saved architecture)."""
    views = data.features["head"]
    reference = views[:, data.train_rows].reshape(-1, views.shape[-1]).astype(np.float64)
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    std = np.maximum(std, 1e-6 * std.max() + 1e-30)  # scale-relative: random backbones give tiny features
    _fold_standardisation(model, mean, std, inverse=True)
    return ((views - mean) / std).astype(np.float32), (mean, std)


def _stage_batches(views: np.ndarray, cut: str | None, data: FoldData, config: TrainConfig, n_classes: int,
                   seed: int) -> tuple[_Batches, _Batches]:
    """Shuffled training batches (per frame or per video mean) and the clean, class-balanced validation."""
    train_views, train_labels = views, data.labels[data.train_rows]
    train_rows, validation_rows = data.train_rows, data.validation_rows
    validation_views, validation_labels = views[:1], data.labels[data.validation_rows]
    if cut == "head" and data.unit == "video":
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
    return train, validation


def _fit_stage(model: keras.Model, cut: str | None, data: FoldData, config: TrainConfig, n_classes: int, *,
               epochs: int, learning_rate: float, patience: int, seed: int, log, prefix: str) -> list[dict]:
    """Train ``model`` (or its tail after ``cut``) with early stopping on the inner validation rows."""
    standardise = None
    if cut is None:
        trained, views = model, data.frames[None]
    else:
        trained = keras.Model(model.get_layer(cut_layer(cut, config.backbone)).output, model.output)
        views = data.features[cut]
        if cut == "head":
            views, standardise = _standardised_head_views(model, data)
    train, validation = _stage_batches(views, cut, data, config, n_classes, seed)
    strategy = distribution_strategy(config.distribute)
    replica = trained
    if strategy is not None:  # variables made under the strategy's scope: a copy, trained, then copied back
        with strategy.scope():
            replica = keras.models.clone_model(trained)
            replica.set_weights(trained.get_weights())
            replica.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy",
                            weighted_metrics=["accuracy"])
    else:
        trained.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy",
                        weighted_metrics=["accuracy"])
    history: list[dict] = []
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
                 _EpochLine(log, prefix, epochs, history)]
    if config.reduce_lr:
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.7, patience=7, min_lr=1e-7))
    # shuffle=False: _Batches already draws each epoch's order from the fold's own generator. Keras's
    # own shuffle reorders the batches with Python's process-wide ``random`` from the tf.data thread,
    # whenever it starts an epoch: any other thread drawing from ``random`` meanwhile (a Dask worker's
    # event loop does) changes the batch order, and the fold's result with it.
    replica.fit(train, validation_data=validation, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False)
    if replica is not trained:
        trained.set_weights(replica.get_weights())
    if standardise is not None:
        _fold_standardisation(model, *standardise)
    return history


# ----------------------------------------------------------------------------- logistic head


class _ProbeExamples(NamedTuple):
    """What the logistic head is fitted on: per-view examples, their labels and inner-CV groups,
    each frame's video code and each example's video code (for per-video inner scoring)."""

    rows: np.ndarray
    x_views: np.ndarray  # (V, n_examples, D)
    y: np.ndarray
    groups: np.ndarray
    video_codes: np.ndarray  # per frame of rows
    example_video: np.ndarray  # per example
    sources: np.ndarray | None = None  # per example (None when the data has none)


def _probe_examples(data: FoldData, groups: np.ndarray) -> _ProbeExamples:
    rows = np.concatenate([data.train_rows, data.validation_rows])  # grouped CV replaces the holdout
    views = data.features["head"]
    # Inner folds are scored per video (mean frame probability), as the outer folds: the scores of
    # frame- and video-unit candidates are then comparable (recipe "auto").
    frame_videos = data.videos[rows] if data.videos is not None else rows
    video_codes = pd.factorize(np.asarray(frame_videos, dtype=str))[0]
    sources = data.sources[rows] if data.sources is not None else None
    if data.unit == "video":
        x_views, y = _video_means(views, rows, data.labels, data.videos)
        first = pd.Series(np.arange(len(rows))).groupby(video_codes).first().to_numpy()
        return _ProbeExamples(rows, x_views, y, groups[rows][first], video_codes, np.arange(len(y)),
                              None if sources is None else sources[first])
    return _ProbeExamples(rows, views[:, rows], data.labels[rows], groups[rows], video_codes, video_codes, sources)


class _Transform(NamedTuple):
    """The fitted feature steps before the logistic head, in order: standardiser, then the
    nuisance projection and the PCA when the recipe asks for them (``None`` otherwise)."""

    scaler: object
    nuisance: object | None
    pca: object | None

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = self.scaler.transform(x)
        if self.nuisance is not None:
            z = self.nuisance.transform(z)
        return self.pca.transform(z) if self.pca is not None else z


def _fit_logistic(examples: _ProbeExamples, chosen: np.ndarray, c: float, config: TrainConfig):
    """Standardiser, then the nuisance projection (``config.nuisance_dims``, fitted on the chosen
    examples' classes and sources) and PCA (``config.feature_pca``) when asked, and logistic
    regression with balanced class weights (``imbalance`` other than ``"none"``) or source-balanced
    sample weights (:data:`SOURCE_WEIGHTINGS`). Returns ``(_Transform, logistic)``."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from covnb.nuisance import NuisanceProjection, source_balanced_weights

    n_views = examples.x_views.shape[0]
    x = examples.x_views[:, chosen].reshape(-1, examples.x_views.shape[2])
    y = np.tile(examples.y[chosen], n_views)
    source_aware = needs_sources(config)
    if source_aware and examples.sources is None:
        raise ValueError("source-balanced weights and nuisance projection need the source of every example")
    sources = np.tile(examples.sources[chosen], n_views) if source_aware else None
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    nuisance = NuisanceProjection(config.nuisance_dims).fit(z, y, sources) if config.nuisance_dims else None
    if nuisance is not None:
        z = nuisance.transform(z)
    pca = None
    if config.feature_pca:
        # Fewer, sturdier directions: principal components of the standardised training features.
        pca = PCA(n_components=min(int(config.feature_pca), z.shape[0] - 1, z.shape[1]), random_state=0).fit(z)
        z = pca.transform(z)
    weights = None
    if config.imbalance in SOURCE_WEIGHTINGS:
        weights = source_balanced_weights(y, sources, int(y.max()) + 1, power=SOURCE_WEIGHTINGS[config.imbalance])
    balanced = config.imbalance != "none" and config.imbalance not in SOURCE_WEIGHTINGS
    logistic = LogisticRegression(C=c, class_weight="balanced" if balanced else None, max_iter=5000)
    # One BLAS thread: these small problems run ~10x faster than with threads fighting over
    # busy cores (measured on 2 shared cores: 9 s -> 0.8 s per fit of 490 x 2024).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # convergence on tiny inner folds
        logistic.fit(z, y, sample_weight=weights)
    return _Transform(scaler, nuisance, pca), logistic


def _inner_cv_scores(examples: _ProbeExamples, data: FoldData, config: TrainConfig, n_classes: int) -> dict:
    """Inner grouped-CV video balanced accuracy (mean frame probability, clean view) of every C."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    rows, codes = examples.rows, examples.video_codes
    n_splits = max(2, min(5, len(np.unique(examples.groups))))
    splits = list(GroupKFold(n_splits=n_splits).split(examples.y, examples.y, examples.groups))
    frame_labels = data.labels[rows]
    scores = {}
    for c in config.linear_probe_cs:
        fold_scores = []
        for inner_train, inner_test in splits:
            transform, logistic = _fit_logistic(examples, inner_train, c, config)
            test_frames = np.nonzero(np.isin(codes, examples.example_video[inner_test]))[0]
            probs = np.zeros((len(test_frames), n_classes))
            probs[:, logistic.classes_] = logistic.predict_proba(
                transform.transform(data.features["head"][0, rows[test_frames]]))
            per_video = pd.DataFrame(probs).groupby(codes[test_frames]).mean()
            truth = pd.Series(frame_labels[test_frames]).groupby(codes[test_frames]).first()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # inner folds may miss a class
                fold_scores.append(balanced_accuracy_score(truth.to_numpy(), per_video.to_numpy().argmax(axis=1)))
        scores[c] = float(np.mean(fold_scores))
    return scores


def _write_probe(model: keras.Model, transform: _Transform, logistic, n_features: int, n_classes: int) -> None:
    """Fold standardisation (and projection, PCA) into the model's ``logits`` layer: the model stays complete."""
    coef, intercept = logistic.coef_, logistic.intercept_
    if transform.pca is not None:
        # Fold the projection into the linear head: (z - m) @ P.T @ coef.T + b on standardised z.
        coef = coef @ transform.pca.components_
        intercept = intercept - coef @ transform.pca.mean_
    if transform.nuisance is not None:
        coef = transform.nuisance.fold_into(coef)
    scaler = transform.scaler
    present = logistic.classes_
    scale = scaler.scale_
    kernel = np.zeros((n_features, n_classes), np.float32)
    bias = np.full(n_classes, -30.0, np.float32)  # classes never seen in training get ~0 probability
    if len(present) == 2:
        coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    for k, cls in enumerate(present):
        kernel[:, cls] = coef[k] / scale
        bias[cls] = intercept[k] - np.sum(coef[k] * scaler.mean_ / scale)
    model.get_layer("logits").set_weights([kernel, bias])


def _fit_linear_probe(model: keras.Model, data: FoldData, config: TrainConfig, groups: np.ndarray, n_classes: int,
                      log, prefix: str) -> list[dict]:
    """Standardised, class-weighted logistic regression on pooled features, C by grouped CV.

    Examples are frames, or videos (``data.unit == "video"``: each video's mean feature, see
    :func:`_video_means`); augmented views, when cached, are extra training examples of the same
    video. C is chosen by patient-grouped inner CV on the training and validation rows (scored on
    clean views only). The fitted probe is written into the model's ``logits`` layer (so the model
    is complete and applies to single frames).
    """
    examples = _probe_examples(data, groups)
    scores = _inner_cv_scores(examples, data, config, n_classes)
    best_c = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    transform, logistic = _fit_logistic(examples, np.arange(len(examples.y)), best_c, config)
    _write_probe(model, transform, logistic, examples.x_views.shape[2], n_classes)
    n_views = examples.x_views.shape[0]
    if log:
        log(f"{prefix} logistic head on {len(examples.y)} {data.unit}s x {n_views} view(s): C={best_c:g}, "
            f"inner grouped CV balanced accuracy {scores[best_c]:.3f}")
    return [{"epoch": 1, "C": best_c, "inner_cv_balanced_accuracy": scores[best_c], "examples": int(len(examples.y)),
             "views": int(n_views)}]


# ----------------------------------------------------------------------------- one fold


def fit_fold(model: keras.Model, data: FoldData, config: TrainConfig, groups: np.ndarray, *, n_classes: int,
             seed: int = 0, log: Callable[[str], None] | None = print, prefix: str = "") -> dict[str, list[dict]]:
    """Train ``model`` in place on ``data`` with ``config``'s recipe; returns histories per stage.

    ``data.unit`` must be ``config.train_unit`` (build it with :meth:`FoldData.for_recipe`):
    a recipe that learns per video is never silently fed frames.
    """
    if data.unit != config.train_unit:
        raise ValueError(f"the fold data's training unit is {data.unit!r} but the recipe trains per "
                         f"{config.train_unit!r}: build it with FoldData.for_recipe(config, ...)")
    keras.utils.set_random_seed(int(seed))
    if config.solver == "logistic":
        return {"linear_probe": _fit_linear_probe(model, data, config, groups, n_classes, log, prefix)}
    histories = {}
    set_trainable(model, config.trainable, config.backbone)
    cut = None if config.engine == "plain" else ("head" if config.trainable == "head" else "last_block")
    stage = "head" if config.trainable == "head" else config.trainable
    histories[stage] = _fit_stage(model, cut, data, config, n_classes, epochs=config.epochs,
                                  learning_rate=config.learning_rate, patience=config.patience, seed=seed, log=log,
                                  prefix=f"{prefix} {stage}")
    if config.fine_tune_epochs > 0:
        set_trainable(model, "last_block", config.backbone)
        histories["fine_tune"] = _fit_stage(
            model, None if config.engine == "plain" else "last_block", data, config, n_classes,
            epochs=config.fine_tune_epochs, learning_rate=config.fine_tune_learning_rate,
            patience=config.fine_tune_patience, seed=seed + 1, log=log, prefix=f"{prefix} fine-tune")
        set_trainable(model, config.trainable, config.backbone)
    return histories


def predict_rows(model: keras.Model, data: FoldData, rows: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Class probabilities of ``rows``: from the cached features when the recipe has them (the same
    function as the full model on the clean frames), else from the frames."""
    if config.engine == "cached" and data.features is not None:
        cut = "last_block" if "last_block" in data.features and (config.trainable != "head"
                                                                   or config.fine_tune_epochs > 0) else "head"
        if cut in data.features:
            return _batched_call(_tail(model, cut_layer(cut, config.backbone)), data.features[cut][0][rows], 256)
    return _batched_call(model, data.frames[rows], 32)
