"""Keras training plumbing of the head fits: batches of cached views, one line per epoch, and the
``tf.distribute`` strategy; used by :mod:`covnb.experiments.fitting` (re-exported there)."""

from __future__ import annotations

import math
import time

import numpy as np

import keras


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


_STRATEGIES: dict = {}


def distribution_strategy(name: str):
    """The ``tf.distribute`` strategy of ``TrainConfig.distribute`` (one per process), or None for ``"none"``.

    ``"mirrored"``: :class:`tf.distribute.MirroredStrategy`, synchronous data parallelism over this
    machine's devices (every GPU, or the logical CPU devices); ``"multiworker"``:
    :class:`tf.distribute.MultiWorkerMirroredStrategy` over the machines ``$TF_CONFIG`` names (one
    process per machine runs the same command). Each global batch is split across the replicas
    and their gradients summed (Goyal et al. 2017, "Accurate, large minibatch SGD"), so the fit
    matches one device up to floating-point order.
    """
    if name == "none":
        return None
    if name not in _STRATEGIES:
        import tensorflow as tf

        if name == "mirrored":
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            _STRATEGIES[name] = tf.distribute.MirroredStrategy([device.name for device in devices])
        elif name == "multiworker":
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            raise ValueError(f"distribute must be 'none', 'mirrored' or 'multiworker', got {name!r}")
    return _STRATEGIES[name]
