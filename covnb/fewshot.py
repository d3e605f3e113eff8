"""Few-shot learning on frozen embeddings: how few COVID-19 patients does a model need?

* :func:`compute_embeddings`: pooled features of a frozen covnb backbone, computed once in
  batches inside a ``tf.function`` and cached on disk (keyed by the frames and the backbone).
  :func:`sample_embeddings` averages them per sample (video or image): a *shot* is one
  patient's sample, never a frame of a video the query also uses.
* :class:`EpisodeSampler`: N-way K-shot Q-query episodes, seeded, classes without replacement,
  support and query disjoint **by patient**; :func:`max_k` says how far the K curve can go.
* Methods side by side, all on the same embeddings:
  nearest centroid with SimpleShot normalisation (centre on the base mean, L2-normalise;
  Wang et al. 2019, arXiv:1911.04623), a prototypical network (a small projection head trained
  episodically on base patients; Snell et al., NeurIPS 2017), a linear probe (logistic
  regression on the support set) and k-NN.
* :func:`evaluate_episodes` / :func:`shot_curve`: >= 600 episodes, mean accuracy with a 95%
  confidence interval (1.96 std / sqrt(n)), accuracy against K.
* :func:`patient_learning_curve`: a trained recipe's balanced accuracy when only ``n``
  COVID-19 patients are available for training; :func:`cross_domain_evaluation`: prototypes
  of one modality applied to the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from covnb.cache import read_cached_array, usable_cache_dir, write_cached_array

__all__ = [
    "EMBEDDING_CACHE_VERSION",
    "compute_embeddings",
    "sample_embeddings",
    "Episode",
    "EpisodeSampler",
    "max_k",
    "simpleshot_normalize",
    "SimpleShot",
    "LinearProbe",
    "KNearestNeighbours",
    "PrototypicalNetwork",
    "default_methods",
    "evaluate_episodes",
    "accuracy_summary",
    "summarize_episodes",
    "shot_curve",
    "base_novel_split",
    "patient_learning_curve",
    "cross_domain_evaluation",
    "plot_shot_curves",
    "plot_learning_curve",
]

EMBEDDING_CACHE_VERSION = 1


# ============================================================================ embeddings


def _frames_of(frame_set_or_frames) -> np.ndarray:
    frames = getattr(frame_set_or_frames, "frames", frame_set_or_frames)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be an array (N, S, S, 3) of RGB images (or a FrameSet); got shape "
                         f"{frames.shape}")
    return frames


def _weights_key(weights) -> str:
    if weights is None or weights == "imagenet":
        return str(weights)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist (use 'imagenet', None or a file)")
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _embedding_key(frames: np.ndarray, backbone: str, image_size: int, weights, pooling: str) -> str:
    digest = hashlib.sha1(str((frames.shape, str(frames.dtype))).encode())
    digest.update(np.ascontiguousarray(frames).data)
    spec = {"v": EMBEDDING_CACHE_VERSION, "frames": digest.hexdigest(), "backbone": backbone,
            "image_size": int(image_size), "weights": _weights_key(weights), "pooling": pooling}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def compute_embeddings(frame_set_or_frames, backbone: str = "efficientnet_lite0", image_size: int = 224,
                       weights="imagenet", batch_size: int = 32, pooling: str = "avg", cache: bool = True,
                       log: Callable[[str], None] | None = None) -> np.ndarray:
    """Frozen, pooled backbone features ``(N, D)`` float32 of raw RGB frames ``(N, S, S, 3)``.

    Uses :func:`covnb.backbones.feature_extractor` (preprocessing inside the model), called on
    batches inside one ``tf.function``. Cached under ``cache_dir("embeddings")``, keyed by a hash
    of the frames' bytes and the backbone settings; written atomically.
    """
    frames = _frames_of(frame_set_or_frames)
    if frames.shape[1] != int(image_size) or frames.shape[2] != int(image_size):
        raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]} but image_size is {image_size}: "
                         "extract frames with FrameSettings(image_size=...) at the backbone's size")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    folder = usable_cache_dir("embeddings") if cache else None
    path = (folder or Path(".")) / f"{_embedding_key(frames, backbone, image_size, weights, pooling)}.npy"
    if folder is not None:
        embeddings = read_cached_array(path, rows=len(frames))
        if embeddings is not None:
            if log:
                log(f"embeddings: {len(frames)} frames read from cache {path.name}")
            return embeddings
    import tensorflow as tf

    from covnb.backbones import feature_extractor

    started = time.perf_counter()
    model = feature_extractor(backbone, int(image_size), weights, pooling=pooling)
    call = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    chunks = [np.asarray(call(tf.convert_to_tensor(frames[i:i + batch_size], dtype=tf.float32)))
              for i in range(0, len(frames), int(batch_size))]
    dim = int(model.output.shape[-1])
    embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
    if folder is not None:
        write_cached_array(path, embeddings)
    if log:
        seconds = time.perf_counter() - started
        log(f"embeddings: {len(frames)} frames through {backbone} at {image_size}px in {seconds:.1f} s "
            f"({len(frames) / max(seconds, 1e-9):.0f} frames/s)")
    return embeddings


def sample_embeddings(embeddings: np.ndarray, index: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Mean frame embedding per sample (video or image): ``(X, table)``.

    ``index`` is a FrameSet's index (one row per frame, aligned with ``embeddings``); the table
    holds sample_id, label, group and n_frames, in first-appearance order.
    """
    embeddings = np.asarray(embeddings)
    if len(index) != len(embeddings):
        raise ValueError(f"index has {len(index)} rows but embeddings {len(embeddings)}: they must be aligned")
    sample_ids = np.asarray(index["sample_id"], dtype=str)
    unique, first, inverse = np.unique(sample_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    position = rank[inverse]
    sums = np.zeros((len(unique), embeddings.shape[1]), np.float64)
    np.add.at(sums, position, embeddings)
    counts = np.bincount(position, minlength=len(unique))
    table = pd.DataFrame({
        "sample_id": unique[order],
        "label": np.asarray(index["label"], dtype=str)[first[order]],
        "group": np.asarray(index["group"], dtype=str)[first[order]],
        "n_frames": counts,
    })
    return (sums / counts[:, None]).astype(np.float32), table


# ============================================================================ episodes


@dataclasses.dataclass
class Episode:
    """One N-way K-shot Q-query episode: rows of the pool and episode-local labels 0..N-1."""

    classes: list[str]
    support_rows: np.ndarray
    support_labels: np.ndarray
    query_rows: np.ndarray
    query_labels: np.ndarray
    support_groups: np.ndarray
    query_groups: np.ndarray


def _patients_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    table = pd.DataFrame({"label": labels, "group": groups})
    return {str(k): int(v) for k, v in table.groupby("label")["group"].nunique().items()}


def max_k(labels, groups, q_query: int, disjoint: str = "patient") -> int:
    """Largest K for which every class has K + Q disjoint patients (items if ``disjoint="item"``).

    0 or less means not even 1-shot episodes can be drawn.
    """
    labels = np.asarray(labels, dtype=str)
    if disjoint == "item":
        counts = pd.Series(labels).value_counts()
        return int(counts.min()) - int(q_query)
    return min(_patients_per_class(labels, np.asarray(groups, dtype=str)).values()) - int(q_query)


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes, support and query disjoint by patient.

    For each of ``n_way`` classes drawn without replacement, ``k_shot`` support patients and
    ``q_query`` other query patients are drawn, and one item (row) of each of these patients:
    a patient contributes to support or query, never both, and once per episode.
    ``disjoint="item"`` ignores patients (support and query may share a patient or a video):
    the optimistic, leaky protocol, only for showing what it inflates.
    """

    def __init__(self, labels, groups, n_way: int, k_shot: int, q_query: int, seed: int = 0,
                 disjoint: str = "patient"):
        self.labels = np.asarray(labels, dtype=str)
        self.groups = np.asarray(groups, dtype=str)
        if self.labels.ndim != 1 or len(self.labels) != len(self.groups):
            raise ValueError(f"labels ({len(self.labels)}) and groups ({len(self.groups)}) must be 1-D and aligned")
        if disjoint not in ("patient", "item"):
            raise ValueError(f"disjoint must be 'patient' or 'item', not {disjoint!r}")
        for name, value, low in (("n_way", n_way, 2), ("k_shot", k_shot, 1), ("q_query", q_query, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        self.disjoint, self.seed = disjoint, seed
        self.classes = sorted(set(self.labels))
        if self.n_way > len(self.classes):
            raise ValueError(f"{self.n_way}-way episodes need {self.n_way} classes; the pool has "
                             f"{len(self.classes)} ({', '.join(self.classes)})")
        need = self.k_shot + self.q_query
        if disjoint == "patient":
            counts = _patients_per_class(self.labels, self.groups)
            unit = "patients"
        else:
            counts = {str(k): int(v) for k, v in pd.Series(self.labels).value_counts().items()}
            unit = "items"
        short = {c: n for c, n in counts.items() if n < need}
        if short:
            listing = ", ".join(f"{c!r} has {n}" for c, n in sorted(short.items()))
            raise ValueError(
                f"{self.k_shot}-shot {self.q_query}-query episodes need {need} {unit} per class "
                f"(K support + Q query, disjoint): {listing}. Largest feasible K here is "
                f"{min(counts.values()) - self.q_query} (max_k).")
        self.rng = np.random.default_rng(seed)
        rows = np.arange(len(self.labels))
        self._rows_by_class = {c: rows[self.labels == c] for c in self.classes}
        self._rows_by_class_patient = {
            c: {g: r for g, r in pd.Series(self._rows_by_class[c]).groupby(self.groups[self._rows_by_class[c]])
                .apply(np.asarray).items()}
            for c in self.classes}
        self._patients_by_class = {c: np.array(sorted(self._rows_by_class_patient[c])) for c in self.classes}

    def sample(self) -> Episode:
        """Draw one episode."""
        rng = self.rng
        chosen = [self.classes[i] for i in np.sort(rng.choice(len(self.classes), self.n_way, replace=False))]
        support, query, used = [], [], set()
        for local, cls in enumerate(chosen):
            if self.disjoint == "item":
                rows = rng.choice(self._rows_by_class[cls], self.k_shot + self.q_query, replace=False)
                support += [(r, local) for r in rows[:self.k_shot]]
                query += [(r, local) for r in rows[self.k_shot:]]
                continue
            candidates = [g for g in self._patients_by_class[cls] if g not in used]
            if len(candidates) < self.k_shot + self.q_query:  # only if patients carry several labels
                raise RuntimeError(f"class {cls!r}: patients shared with other classes of this episode leave "
                                   f"{len(candidates)} patients, fewer than K+Q={self.k_shot + self.q_query}")
            patients = [candidates[i] for i in rng.choice(len(candidates), self.k_shot + self.q_query, replace=False)]
            used.update(patients)
            for position, patient in enumerate(patients):
                patient_rows = self._rows_by_class_patient[cls][patient]
                row = patient_rows[rng.integers(len(patient_rows))]
                (support if position < self.k_shot else query).append((row, local))
        support_rows = np.array([r for r, _ in support], dtype=int)
        query_rows = np.array([r for r, _ in query], dtype=int)
        return Episode(chosen, support_rows, np.array([y for _, y in support], dtype=int), query_rows,
                       np.array([y for _, y in query], dtype=int), self.groups[support_rows], self.groups[query_rows])

    def episodes(self, n: int) -> Iterator[Episode]:
        """``n`` episodes, one after the other, from this sampler's random stream."""
        for _ in range(int(n)):
            yield self.sample()


# ============================================================================ methods


def simpleshot_normalize(x: np.ndarray, base_mean: np.ndarray | None) -> np.ndarray:
    """SimpleShot's CL2N: subtract the base mean, then L2-normalise (Wang et al. 2019)."""
    x = np.asarray(x, dtype=np.float64)
    if base_mean is not None:
        x = x - base_mean
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _prototypes(x: np.ndarray, y: np.ndarray, n_way: int) -> np.ndarray:
    return np.stack([x[y == c].mean(axis=0) for c in range(n_way)])


def _nearest(query: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    distances = ((query[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1)


class SimpleShot:
    """Nearest centroid after centring on the base mean and L2 normalisation (arXiv:1911.04623)."""

    name = "SimpleShot (nearest centroid)"
    trained_groups: frozenset = frozenset()

    def predict(self, support_x, support_y, query_x, n_way, base_mean=None):
        support, query = simpleshot_normalize(support_x, base_mean), simpleshot_normalize(query_x, base_mean)
        return _nearest(query, _prototypes(support, support_y, n_way))


class LinearProbe:
    """Logistic regression fitted on the support set (SimpleShot-normalised features).

    The strong simple baseline of Tian et al. 2020 ("Rethinking few-shot image classification").
    """

    name = "linear probe (logistic regression)"
    trained_groups: frozenset = frozenset()

    def __init__(self, C: float = 10.0):
        self.C = float(C)

    def predict(self, support_x, support_y, query_x, n_way, base_mean=None):
        from sklearn.linear_model import LogisticRegression

        # newton-cg: ~10x faster than lbfgs on a few dozen support items (600 episodes in seconds)
        probe = LogisticRegression(C=self.C, solver="newton-cg", max_iter=1000)
        probe.fit(simpleshot_normalize(support_x, base_mean), support_y)
        return probe.predict(simpleshot_normalize(query_x, base_mean))


class KNearestNeighbours:
    """k-NN (distance-weighted) on SimpleShot-normalised features; k = min(n_neighbors, K)."""

    name = "k-NN"
    trained_groups: frozenset = frozenset()

    def __init__(self, n_neighbors: int = 3):
        self.n_neighbors = int(n_neighbors)

    def predict(self, support_x, support_y, query_x, n_way, base_mean=None):
        from sklearn.neighbors import KNeighborsClassifier

        k = max(1, min(self.n_neighbors, len(support_y) // max(n_way, 1)))
        knn = KNeighborsClassifier(n_neighbors=k, weights="distance", algorithm="brute")
        knn.fit(simpleshot_normalize(support_x, base_mean), support_y)
        return knn.predict(simpleshot_normalize(query_x, base_mean))


class PrototypicalNetwork:
    """Prototypical network (Snell et al., NeurIPS 2017) on frozen embeddings.

    A linear projection head (Dense ``units``) on SimpleShot-normalised embeddings is trained
    episodically on *base* patients (softmax over negative squared distances to the class
    prototypes, Keras 3 + ``tf.GradientTape``, seeded); episodes are then classified by the
    nearest prototype in the projected space. ``trained_groups`` records the patients it saw, so
    :func:`evaluate_episodes` refuses to test it on them.
    """

    name = "prototypical network"

    def __init__(self, units: int = 128, steps: int = 300, learning_rate: float = 1e-3, n_way: int = 3,
                 k_shot: int = 5, q_query: int = 2, seed: int = 0):
        self.units, self.steps, self.learning_rate = int(units), int(steps), float(learning_rate)
        self.n_way, self.k_shot, self.q_query, self.seed = int(n_way), int(k_shot), int(q_query), seed
        self.kernel = self.bias = self.base_mean = None
        self.trained_groups: frozenset = frozenset()
        self.history: list[float] = []

    def fit(self, base_x, base_labels, base_groups, base_mean=None, log=None) -> "PrototypicalNetwork":
        """Train the head on episodes drawn from the base pool (patient-disjoint when possible)."""
        import keras
        import tensorflow as tf

        base_x = np.asarray(base_x, np.float32)
        base_labels = np.asarray(base_labels, dtype=str)
        base_groups = np.asarray(base_groups, dtype=str)
        self.base_mean = base_x.mean(axis=0) if base_mean is None else np.asarray(base_mean)
        x = simpleshot_normalize(base_x, self.base_mean).astype(np.float32)
        n_way = min(self.n_way, len(set(base_labels)))
        # Largest episode shape the base pool allows (patient-disjoint if it can, else by item).
        disjoint = "patient"
        q = min(self.q_query, max(1, max_k(base_labels, base_groups, 0) - 1))
        k = min(self.k_shot, max_k(base_labels, base_groups, q))
        if k < 1:
            disjoint = "item"
            q = 1
            k = max(1, min(self.k_shot, max_k(base_labels, base_groups, q, "item")))
        sampler = EpisodeSampler(base_labels, base_groups, n_way, k, q, seed=self.seed, disjoint=disjoint)
        keras.utils.set_random_seed(int(self.seed))
        head = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(self.units, name="projection")])
        optimizer = keras.optimizers.Adam(self.learning_rate)

        @tf.function
        def step(support, support_y, query, query_y):
            with tf.GradientTape() as tape:
                s, q_ = head(support, training=True), head(query, training=True)
                onehot = tf.one_hot(support_y, n_way)
                protos = tf.matmul(onehot, s, transpose_a=True) / tf.reduce_sum(onehot, axis=0)[:, None]
                logits = -tf.reduce_sum((q_[:, None, :] - protos[None, :, :]) ** 2, axis=-1)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(query_y, logits))
            grads = tape.gradient(loss, head.trainable_variables)
            optimizer.apply_gradients(zip(grads, head.trainable_variables))
            return loss

        self.history = []
        for episode in sampler.episodes(self.steps):
            loss = step(x[episode.support_rows], episode.support_labels.astype(np.int32),
                        x[episode.query_rows], episode.query_labels.astype(np.int32))
            self.history.append(float(loss))
        self.kernel, self.bias = [np.asarray(w, np.float64) for w in head.get_layer("projection").get_weights()]
        self.trained_groups = frozenset(base_groups.tolist())
        self.train_episode = {"n_way": n_way, "k_shot": k, "q_query": q, "disjoint": disjoint}
        if log:
            tail = np.mean(self.history[-20:]) if self.history else float("nan")
            log(f"prototypical network: {self.steps} {n_way}-way {k}-shot {q}-query training episodes "
                f"({disjoint}-disjoint) on {len(self.trained_groups)} base patients; final loss {tail:.3f}")
        return self

    def project(self, x, base_mean=None):
        if self.kernel is None:
            raise RuntimeError("PrototypicalNetwork.fit must run before predict")
        return simpleshot_normalize(x, self.base_mean) @ self.kernel + self.bias

    def predict(self, support_x, support_y, query_x, n_way, base_mean=None):
        # The head was trained on features centred on its own base mean: always use that one.
        return _nearest(self.project(query_x), _prototypes(self.project(support_x), support_y, n_way))


def default_methods(knn_neighbors: int = 3, probe_c: float = 10.0) -> dict:
    """The training-free methods (SimpleShot, linear probe, k-NN), by short name."""
    return {"simpleshot": SimpleShot(), "linear_probe": LinearProbe(probe_c), "knn": KNearestNeighbours(knn_neighbors)}


# ============================================================================ evaluation


def accuracy_summary(accuracies) -> dict:
    """Mean accuracy and its 95% confidence interval half-width 1.96 * std / sqrt(n)."""
    acc = np.asarray(accuracies, dtype=float)
    if acc.size == 0:
        raise ValueError("no episode accuracies to summarise")
    std = float(acc.std(ddof=1)) if acc.size > 1 else 0.0
    return {"mean": float(acc.mean()), "ci95": 1.96 * std / np.sqrt(acc.size), "std": std, "n_episodes": int(acc.size)}


class _LeaveEpisodeOutMean:
    """Mean of the pool without the episode's patients, from per-patient sums (fast)."""

    def __init__(self, x: np.ndarray, groups: np.ndarray):
        names, position = np.unique(groups, return_inverse=True)
        self.index = {g: i for i, g in enumerate(names)}
        self.sums = np.zeros((len(names), x.shape[1]))
        np.add.at(self.sums, position, x)
        self.counts = np.bincount(position, minlength=len(names)).astype(float)
        self.total, self.n = self.sums.sum(0), self.counts.sum()

    def __call__(self, episode_groups) -> np.ndarray:
        idx = np.array(sorted({self.index[g] for g in episode_groups}))
        remaining = self.n - self.counts[idx].sum()
        if remaining <= 0:
            return self.total / self.n
        return (self.total - self.sums[idx].sum(0)) / remaining


def evaluate_episodes(x, labels, groups, methods: dict, n_way: int = 3, k_shot: int = 5, q_query: int = 2,
                      n_episodes: int = 600, seed: int = 0, base_mean: np.ndarray | None = None,
                      disjoint: str = "patient") -> pd.DataFrame:
    """Accuracy of every method on the same ``n_episodes`` episodes drawn from the pool.

    ``base_mean``: the SimpleShot centre fitted on base (training) patients; ``None`` uses, per
    episode, the mean of the pool's patients *not* in the episode (leave-episode-out), so no
    query item ever shapes its own normalisation. Methods that were trained on patients of the
    pool (``trained_groups``) are refused. Returns one row per (episode, method).
    """
    x = np.asarray(x, dtype=np.float64)
    groups = np.asarray(groups, dtype=str)
    pool_groups = set(groups.tolist())
    for name, method in methods.items():
        overlap = set(getattr(method, "trained_groups", frozenset())) & pool_groups
        if overlap:
            raise ValueError(f"method {name!r} was trained on {len(overlap)} patients of the episode pool "
                             f"(e.g. {sorted(overlap)[:3]}): evaluate it on held-out patients only")
    sampler = EpisodeSampler(labels, groups, n_way, k_shot, q_query, seed=seed, disjoint=disjoint)
    centre = _LeaveEpisodeOutMean(x, groups) if base_mean is None else None
    rows = []
    # Episodes are tiny: one BLAS/OpenMP thread avoids thread start-up and spinning on busy CPUs
    # (sklearn's k-NN is ~20x faster so on two shared cores).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for number, episode in enumerate(sampler.episodes(n_episodes)):
            mean = base_mean if centre is None else centre(np.concatenate([episode.support_groups,
                                                                           episode.query_groups]))
            support_x, query_x = x[episode.support_rows], x[episode.query_rows]
            for name, method in methods.items():
                predicted = method.predict(support_x, episode.support_labels, query_x, n_way, mean)
                rows.append((number, name, float(np.mean(predicted == episode.query_labels))))
    table = pd.DataFrame(rows, columns=["episode", "method", "accuracy"])
    table.attrs.update(n_way=n_way, k_shot=k_shot, q_query=q_query, disjoint=disjoint)
    return table


def summarize_episodes(table: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy, 95% CI, std and episode count per method (rows in the methods' order)."""
    order = list(dict.fromkeys(table["method"]))
    summary = pd.DataFrame([{"method": m, **accuracy_summary(table.loc[table["method"] == m, "accuracy"])}
                            for m in order])
    return summary


def shot_curve(x, labels, groups, methods: dict, shots: Sequence[int] = (1, 2, 3, 5, 10), n_way: int = 3,
               q_query: int = 2, n_episodes: int = 600, seed: int = 0, base_mean=None,
               pool_name: str = "pool") -> tuple[pd.DataFrame, list[str]]:
    """Accuracy against K for every method; K values beyond :func:`max_k` are skipped with a note.

    Returns ``(curve, notes)``: curve rows method, k_shot, mean, ci95, std, n_episodes.
    """
    limit = max_k(labels, groups, q_query)
    counts = _patients_per_class(np.asarray(labels, dtype=str), np.asarray(groups, dtype=str))
    smallest = min(counts, key=counts.get)
    parts, notes, skipped = [], [], []
    for k in sorted({int(k) for k in shots}):
        if k > limit:
            skipped.append(k)
            continue
        table = evaluate_episodes(x, labels, groups, methods, n_way, k, q_query, n_episodes, seed + k, base_mean)
        summary = summarize_episodes(table)
        summary.insert(1, "k_shot", k)
        parts.append(summary)
    if skipped:
        notes.append(f"{pool_name}: K = {', '.join(map(str, skipped))} skipped: the smallest class "
                     f"{smallest!r} has {counts[smallest]} patients, and K support + Q={q_query} query "
                     f"patients must be distinct, so K <= {limit}.")
    curve = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["method", "k_shot", "mean", "ci95", "std", "n_episodes"])
    return curve, notes


def base_novel_split(table: pd.DataFrame, base_fraction: float = 1 / 3, seed: int = 0) -> np.ndarray:
    """Boolean mask of *base* rows: a patient-grouped, label-stratified share of the patients.

    With only three classes (POCUS) there are no separate novel classes: trainable parts are
    fitted on the base patients and episodes are drawn from the other (held-out) patients.
    """
    from covnb.splits import patient_folds

    if not 0 < base_fraction < 1:
        raise ValueError(f"base_fraction must be in (0, 1), got {base_fraction}")
    smallest_class = int(table.groupby("label")["group"].nunique().min())
    n_splits = max(2, min(int(round(1 / base_fraction)), smallest_class))
    folds = patient_folds(table[["label", "group"]].reset_index(drop=True), n_splits=n_splits, seed=seed)
    return folds.to_numpy() == 0


# ============================================================================ learning curve


def _frame_rows_by_sample(index: pd.DataFrame) -> dict[str, np.ndarray]:
    ids = np.asarray(index["sample_id"], dtype=str)
    return {s: np.nonzero(ids == s)[0] for s in dict.fromkeys(ids)}


def patient_learning_curve(index: pd.DataFrame, n_patients: Sequence[int], *, embeddings: np.ndarray | None = None,
                           frames: np.ndarray | None = None, recipe: str = "embedding_logreg",
                           positive_label: str = "covid", n_splits: int = 3, repeats: int = 2, seed: int = 0,
                           train_config=None, logreg_c: float = 0.1,
                           log: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Balanced accuracy of a trained recipe when only ``n`` positive (COVID-19) patients train it.

    Patient-grouped stratified folds (:func:`covnb.splits.patient_folds`): in each training fold
    keep every patient of the other classes and ``n`` randomly chosen ``positive_label``
    patients (``repeats`` draws); score the untouched test fold at video level (mean of frame
    probabilities per sample), balanced accuracy over all classes.

    ``recipe="embedding_logreg"``: standardised, class-weighted logistic regression on frozen
    frame ``embeddings`` (fast). ``recipe`` "default" or "linear_probe": the covnb.train recipe
    (:class:`covnb.experiments.crossval.RecipeCandidates`, the frozen-feature store and fold data
    of cross-validation) on raw ``frames``, per video when the recipe says so; its inner
    validation split takes patients of the other classes, and positive patients only when n >= 3.
    Returns ``(rows, notes)``; rows: recipe, fold, repeat, n_patients, balanced_accuracy.
    """
    from sklearn.metrics import balanced_accuracy_score

    from covnb.splits import patient_folds

    index = index.reset_index(drop=True)
    samples = index.drop_duplicates("sample_id")[["sample_id", "label", "group"]].reset_index(drop=True)
    classes = sorted(samples["label"].unique())
    if positive_label not in classes:
        raise ValueError(f"positive_label {positive_label!r} is not a label of the data ({', '.join(classes)})")
    class_of = {c: i for i, c in enumerate(classes)}
    frame_labels = np.array([class_of[c] for c in np.asarray(index["label"], dtype=str)])
    rows_of = _frame_rows_by_sample(index)
    folds = patient_folds(samples, n_splits=n_splits, seed=seed).to_numpy()
    fit_predict = _learning_curve_fitter(recipe, index, frame_labels, classes, embeddings, frames, train_config,
                                         logreg_c, seed, log, positive_label=positive_label)
    results, notes, too_many = [], [], set()
    for fold in range(n_splits):
        train_samples = samples[folds != fold]
        test_samples = samples[folds == fold]
        positive_patients = np.array(sorted(set(train_samples.loc[train_samples["label"] == positive_label, "group"])))
        others = train_samples[train_samples["label"] != positive_label]
        test_rows = np.concatenate([rows_of[s] for s in test_samples["sample_id"]])
        test_ids = np.asarray(index["sample_id"], dtype=str)[test_rows]
        truth = np.array([class_of[c] for c in test_samples["label"]])
        for n in n_patients:
            n = int(n)
            if n > len(positive_patients):
                too_many.add((n, len(positive_patients)))
                continue
            for repeat in range(repeats):
                rng = np.random.default_rng([seed, fold, n, repeat])
                chosen = set(rng.choice(positive_patients, n, replace=False).tolist())
                # A chosen patient's other-class samples stay; unchosen positive patients leave entirely.
                excluded = set(positive_patients.tolist()) - chosen
                kept = pd.concat([others[~others["group"].isin(excluded)],
                                  train_samples[(train_samples["label"] == positive_label)
                                                & train_samples["group"].isin(chosen)]])
                probs = fit_predict(kept, test_rows, np.random.default_rng([seed, fold, n, repeat, 1]))
                per_sample = pd.DataFrame(probs).groupby(test_ids, sort=False).mean()
                predicted = per_sample.reindex(test_samples["sample_id"]).to_numpy().argmax(axis=1)
                results.append({"recipe": recipe, "fold": fold, "repeat": repeat, "n_patients": n,
                                "balanced_accuracy": float(balanced_accuracy_score(truth, predicted))})
    if too_many:
        for n in sorted({n for n, _ in too_many}):
            held = sorted({m for k, m in too_many if k == n})
            notes.append(f"learning curve: n = {n} skipped in training folds that hold only "
                         f"{'/'.join(map(str, held))} {positive_label} patients.")
    return pd.DataFrame(results, columns=["recipe", "fold", "repeat", "n_patients", "balanced_accuracy"]), notes


def _learning_curve_fitter(recipe, index, frame_labels, classes, embeddings, frames, train_config, logreg_c,
                           seed, log, *, positive_label: str):
    """Return ``fit_predict(train_samples, test_rows, rng) -> (len(test_rows), n_classes) probabilities``."""
    rows_of = _frame_rows_by_sample(index)
    n_classes = len(classes)

    def train_rows(kept):
        return np.concatenate([rows_of[s] for s in kept["sample_id"]])

    if recipe == "embedding_logreg":
        if embeddings is None:
            raise ValueError("recipe 'embedding_logreg' needs the frame embeddings (embeddings=...)")
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(embeddings, np.float32)

        def fit_predict(kept, test_rows, rng):
            rows = train_rows(kept)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=logreg_c, class_weight="balanced",
                                                                       max_iter=2000))
            model.fit(x[rows], frame_labels[rows])
            probs = np.zeros((len(test_rows), n_classes))
            probs[:, model.classes_] = model.predict_proba(x[test_rows])
            return probs

        return fit_predict

    if recipe not in ("default", "linear_probe"):
        raise ValueError(f"recipe must be 'embedding_logreg', 'default' or 'linear_probe', not {recipe!r}")
    if frames is None:
        raise ValueError(f"recipe {recipe!r} trains through covnb.train and needs the frames (frames=...)")
    from covnb.experiments.crossval import RecipeCandidates
    from covnb.experiments.recipes import recipe_config

    config = train_config or recipe_config(recipe)
    if config.engine != "cached" or config.trainable != "head" or config.fine_tune_epochs:
        raise ValueError("the learning curve trains recipes on cached features: engine='cached', "
                         "trainable='head', fine_tune_epochs=0")
    # The same models and stored features as covnb.train's cross-validation; every fit goes
    # through RecipeCandidates.fit_best, whose FoldData carries the recipe's training unit.
    candidates = RecipeCandidates(frames, config, n_classes, log)
    groups = np.asarray(index["group"], dtype=str)
    videos = np.asarray(index["sample_id"], dtype=str)  # the recipe's training unit may be the video

    def fit_predict(kept, test_rows, rng):
        from covnb.splits import inner_validation

        kept = kept.reset_index(drop=True)
        positives = kept["label"] == positive_label
        candidates_for_validation = (kept if positives.sum() and kept.loc[positives, "group"].nunique() >= 3
                                     else kept[~positives]).reset_index(drop=True)
        mask = inner_validation(candidates_for_validation, config.validation_fraction,
                                seed=int(rng.integers(1 << 30)))
        validation_ids = set(candidates_for_validation.loc[mask.to_numpy(), "sample_id"])
        fit_ids = [s for s in kept["sample_id"] if s not in validation_ids]
        entry, data, _ = candidates.fit_best(frame_labels, np.concatenate([rows_of[s] for s in fit_ids]),
                                             np.concatenate([rows_of[s] for s in validation_ids]), videos=videos,
                                             groups=groups, seed=int(rng.integers(1 << 30)), log=None)
        return candidates.predict(entry, data, test_rows)

    return fit_predict


# ============================================================================ cross-domain


def cross_domain_evaluation(source_x, source_labels, target_x, target_labels, target_groups, *,
                            source_name: str = "source", target_name: str = "target", positive_label: str = "covid",
                            k_shot: int = 5, q_query: int = 2, n_episodes: int = 600, seed: int = 0) -> pd.DataFrame:
    """Prototypes (class means) of one modality applied to the other, next to in-domain few-shot.

    Labels become ``positive_label`` vs "other" on both sides. Rows: "transfer, source-centred"
    (source prototypes, source mean: nothing from the target), "transfer, target-centred"
    (the unlabelled target mean re-centres both sides), and "in-domain K-shot SimpleShot" on
    target episodes (patient-disjoint, leave-episode-out mean) when the target allows K.
    """
    from sklearn.metrics import balanced_accuracy_score

    def binary(labels):
        return np.where(np.asarray(labels, dtype=str) == positive_label, positive_label, "other")

    source_y, target_y = binary(source_labels), binary(target_labels)
    for name, y in ((source_name, source_y), (target_name, target_y)):
        if len(set(y)) < 2:
            raise ValueError(f"{name}: cross-domain evaluation needs both {positive_label!r} and other samples")
    classes = [positive_label, "other"]
    source_x, target_x = np.asarray(source_x, np.float64), np.asarray(target_x, np.float64)
    if source_x.shape[1] != target_x.shape[1]:
        raise ValueError(f"embedding sizes differ ({source_x.shape[1]} vs {target_x.shape[1]}): use one backbone")
    truth = np.array([classes.index(c) for c in target_y])
    source_index = np.array([classes.index(c) for c in source_y])
    rows = []
    for centring, source_mean, target_mean in (("source-centred", source_x.mean(0), source_x.mean(0)),
                                               ("target-centred", source_x.mean(0), target_x.mean(0))):
        protos = _prototypes(simpleshot_normalize(source_x, source_mean), source_index, 2)
        predicted = _nearest(simpleshot_normalize(target_x, target_mean), protos)
        rows.append({"direction": f"{source_name} -> {target_name}", "protocol": f"transfer, {centring}",
                     "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)), "ci95": np.nan,
                     "n_target": len(truth)})
    limit = max_k(target_y, target_groups, q_query)
    k = min(int(k_shot), limit)
    if k >= 1:
        table = evaluate_episodes(target_x, target_y, target_groups, {"simpleshot": SimpleShot()}, 2, k, q_query,
                                  n_episodes, seed)
        summary = accuracy_summary(table["accuracy"])
        rows.append({"direction": f"{target_name} -> {target_name}", "protocol": f"in-domain {k}-shot SimpleShot",
                     "balanced_accuracy": summary["mean"], "ci95": summary["ci95"], "n_target": len(truth)})
    return pd.DataFrame(rows)


# ============================================================================ plots


def plot_shot_curves(curve: pd.DataFrame, ax=None, title: str = "", chance: float | None = None, label_suffix=""):
    """Accuracy against K per method with a 95% confidence band."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for method, part in curve.groupby("method", sort=False):
        part = part.sort_values("k_shot")
        line, = ax.plot(part["k_shot"], part["mean"], marker="o", label=f"{method}{label_suffix}")
        ax.fill_between(part["k_shot"], part["mean"] - part["ci95"], part["mean"] + part["ci95"],
                        color=line.get_color(), alpha=0.2)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    if not len(curve):
        ax.text(0.5, 0.5, "no K possible:\ntoo few patients in this pool", ha="center", va="center",
                transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("K (support patients per class)")
    ax.set_ylabel("episode accuracy (mean, 95% CI)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax.figure


def plot_learning_curve(rows: pd.DataFrame, fewshot_curve: pd.DataFrame | None = None, ax=None,
                        positive_label: str = "covid", title: str = ""):
    """Trained-recipe balanced accuracy against n positive patients (mean, 95% CI band),
    with few-shot curves (K support patients per class) drawn dashed for comparison."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    if len(rows):
        stats = rows.groupby("n_patients")["balanced_accuracy"].agg(["mean", "std", "count"]).reset_index()
        ci = 1.96 * stats["std"].fillna(0) / np.sqrt(stats["count"])
        recipe = rows["recipe"].iloc[0]
        line, = ax.plot(stats["n_patients"], stats["mean"], marker="s", color="black",
                        label=f"trained recipe '{recipe}' (all other-class patients)")
        ax.fill_between(stats["n_patients"], stats["mean"] - ci, stats["mean"] + ci, color="black", alpha=0.15)
    if fewshot_curve is not None and len(fewshot_curve):
        for method, part in fewshot_curve.groupby("method", sort=False):
            part = part.sort_values("k_shot")
            line, = ax.plot(part["k_shot"], part["mean"], linestyle="--", marker="o", label=f"few-shot {method}")
            ax.fill_between(part["k_shot"], part["mean"] - part["ci95"], part["mean"] + part["ci95"],
                            color=line.get_color(), alpha=0.1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{positive_label} patients available for training (few-shot: K per class)")
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax.figure
