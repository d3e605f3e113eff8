"""Calibration of class probabilities: measure it, fit a map, apply it.

Measures (on out-of-fold predictions, frame and video level):

* expected calibration error (ECE) of the top label: ``ECE_BINS`` = 15 equal-width bins of the
  highest probability on [0, 1], ``sum_b n_b / n * |accuracy_b - confidence_b|`` (Naeini et al.,
  AAAI 2015; Guo et al., ICML 2017);
* class-wise ECE: the same per class, one-vs-rest on ``p_k`` with 15 equal-width bins, mean over
  classes (Kull et al., NeurIPS 2019);
* Brier score (mean over rows of the squared error summed over classes, Brier 1950) and log loss;
* patient-bootstrap 95% intervals of all four, vectorised: per-patient sums of every statistic,
  multiplied by a (draws x patients) matrix of bootstrap counts.

Maps (``fit_calibration``; every one takes and returns probabilities, and works on the
"logits" ``z = log p``, which equal the softmax head's logits up to a per-row constant):

* ``"temperature"``: ``softmax(z / T)``, one parameter (Guo et al., ICML 2017);
* ``"vector"``: ``softmax(w * z + b)``, a scale and a bias per class (Guo et al. 2017), which also
  undoes the prior shift that class weights put into the head;
* ``"platt"``: one-vs-rest logistic regression on ``logit(p_k)`` per class, renormalised
  (Platt 1999; Zadrozny & Elkan, KDD 2002), scikit-learn;
* ``"isotonic"``: one-vs-rest isotonic regression of ``p_k`` per class, renormalised
  (Zadrozny & Elkan 2002), scikit-learn.

Evaluation without leakage, two ways:

* fully nested (:func:`nested_calibrated_predictions`, used by ``covnb train`` whenever the
  recipe's head can be refitted cheaply): for split seed ``s`` and outer fold ``k``, the fold's
  head is refitted on inner patient-grouped folds of fold ``k``'s TRAINING data only, giving
  inner out-of-fold predictions; the method (``"auto"``: no map or one of the four, chosen by
  the ECE of maps cross-fitted over those inner folds, :func:`select_method`) and the map are
  fitted on them, per level (a frame map on frames, a video map on video means), then applied
  to fold ``k``'s outer predictions. Nothing of fold ``k`` reaches its map.
* cross-fitted (:func:`cross_fitted_predictions`, the fallback): the map of fold ``k`` is fitted
  on the out-of-fold predictions of the OTHER outer folds of the same seed. Fold ``k``'s labels
  never enter the map's own fit, but they reach it through those folds' models, whose training
  data included fold ``k``.

The map stored with a model is fitted on all out-of-fold predictions and applied to the final
model's outputs, as scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from covnb.evaluate import _labels_and_probs, prob_columns, video_predictions

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_METHOD",
    "ECE_BINS",
    "AUTO_CANDIDATES",
    "select_method",
    "fit_calibration",
    "apply_calibration",
    "calibration_scores",
    "calibration_bootstrap",
    "reliability_table",
    "cross_fitted_predictions",
    "nested_calibrated_predictions",
    "evaluate_calibration",
    "fit_final_calibration",
    "calibrate_table",
    "plot_reliability",
    "calibrate_file_probabilities",
]

CALIBRATION_METHODS = ("temperature", "vector", "platt", "isotonic")
#: "auto": the candidate (no map or one of :data:`CALIBRATION_METHODS`) with the lowest cross-fitted ECE
#: on the data the map is fitted on (:func:`select_method`); nested inside each outer fold when evaluated.
AUTO_CANDIDATES = ("none",) + CALIBRATION_METHODS
DEFAULT_METHOD = "auto"
ECE_BINS = 15
_EPS = 1e-12
SCORE_NAMES = ("ece", "classwise_ece", "brier", "log_loss")


# ----------------------------------------------------------------------------- maps


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))))


def _renormalise(probs: np.ndarray) -> np.ndarray:
    probs = np.clip(probs, 1e-6, None)
    return probs / probs.sum(axis=1, keepdims=True)


def fit_calibration(probs, labels, method: str = DEFAULT_METHOD) -> dict:
    """Fit a calibration map on probabilities ``(n, K)`` and integer labels; returns a JSON-able dict
    (``method`` + parameters) for :func:`apply_calibration`."""
    from scipy.optimize import minimize, minimize_scalar

    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    n_classes = probs.shape[1]
    if method not in AUTO_CANDIDATES:
        raise ValueError(f"Unknown calibration method {method!r}; choose one of {AUTO_CANDIDATES} "
                         "('auto' needs folds: fit_final_calibration / cross_fitted_predictions)")
    if len(labels) == 0:
        raise ValueError("cannot fit a calibration map on no predictions")
    if method == "none":
        return {"method": "none"}
    z = _logits(probs)
    if method == "temperature":
        result = minimize_scalar(lambda log_t: _nll(_softmax(z / np.exp(log_t)), labels), bounds=(-4.0, 4.0),
                                 method="bounded")
        return {"method": method, "temperature": float(np.exp(result.x))}
    if method == "vector":
        onehot = np.eye(n_classes)[labels]
        penalty = 1e-3  # keeps w and b finite when a class is (nearly) separable

        def loss(params):
            w, b = params[:n_classes], params[n_classes:]
            q = _softmax(w * z + b)
            value = -np.mean(np.log(np.clip(q[np.arange(len(labels)), labels], _EPS, 1.0)))
            value += penalty * (np.sum((w - 1) ** 2) + np.sum(b ** 2))
            residual = (q - onehot) / len(labels)
            grad = np.concatenate([(residual * z).sum(0) + 2 * penalty * (w - 1), residual.sum(0) + 2 * penalty * b])
            return value, grad

        result = minimize(loss, np.concatenate([np.ones(n_classes), np.zeros(n_classes)]), jac=True,
                          method="L-BFGS-B")
        return {"method": method, "scale": result.x[:n_classes].tolist(), "bias": result.x[n_classes:].tolist()}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        slopes, intercepts = [], []
        for k in range(n_classes):
            target = labels == k
            if target.all() or not target.any():
                slopes.append(1.0)
                intercepts.append(0.0)
                continue
            x = (z[:, k] - np.log(np.clip(1 - probs[:, k], _EPS, 1.0)))[:, None]
            model = LogisticRegression(C=1e4, max_iter=1000).fit(x, target)
            slopes.append(float(model.coef_[0, 0]))
            intercepts.append(float(model.intercept_[0]))
        return {"method": method, "slope": slopes, "intercept": intercepts}
    from sklearn.isotonic import IsotonicRegression

    knots = []
    for k in range(n_classes):
        target = (labels == k).astype(float)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[:, k], target)
        knots.append({"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
    return {"method": method, "knots": knots}


def apply_calibration(calibration: dict | None, probs) -> np.ndarray:
    """Calibrated probabilities ``(n, K)`` (``calibration`` None: unchanged)."""
    probs = np.asarray(probs, dtype=float)
    if not calibration or len(probs) == 0:
        return probs
    method = calibration["method"]
    if method == "none":
        return probs
    z = _logits(probs)
    if method == "temperature":
        return _softmax(z / float(calibration["temperature"]))
    if method == "vector":
        return _softmax(np.asarray(calibration["scale"]) * z + np.asarray(calibration["bias"]))
    if method == "platt":
        log_odds = z - np.log(np.clip(1 - probs, _EPS, 1.0))
        scores = np.asarray(calibration["slope"]) * log_odds + np.asarray(calibration["intercept"])
        from scipy.special import expit

        return _renormalise(expit(scores))
    if method == "isotonic":
        columns = [np.interp(probs[:, k], knot["x"], knot["y"]) if len(knot["x"]) else probs[:, k]
                   for k, knot in enumerate(calibration["knots"])]
        return _renormalise(np.stack(columns, axis=1))
    raise ValueError(f"Unknown calibration method {method!r} in the model's calibration block")


# ----------------------------------------------------------------------------- scores


def _bin_of(values: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((np.asarray(values) * n_bins).astype(int), n_bins - 1)


def _row_statistics(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-row additive statistics whose sums give every score: ``(n, M)``.

    Columns: 1 (count), Brier term, log-loss term, then per top-label bin (count is implicit in
    the difference) ``correct - confidence``, then per class and bin ``y_k - p_k``.
    """
    n, n_classes = probs.shape
    rows = np.arange(n)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    onehot = np.eye(n_classes)[labels]
    top = np.zeros((n, n_bins))
    top[rows, _bin_of(confidence, n_bins)] = correct - confidence
    per_class = np.zeros((n, n_classes, n_bins))
    for k in range(n_classes):
        per_class[rows, k, _bin_of(probs[:, k], n_bins)] = onehot[:, k] - probs[:, k]
    brier = ((probs - onehot) ** 2).sum(axis=1)
    log_loss = -np.log(np.clip(probs[rows, labels], _EPS, 1.0))
    return np.column_stack([np.ones(n), brier, log_loss, top, per_class.reshape(n, -1)])


def _scores_from_sums(sums: np.ndarray, n_classes: int, n_bins: int) -> dict[str, np.ndarray]:
    """Scores from (draws, M) sums of :func:`_row_statistics` columns."""
    count = sums[:, 0]
    top = sums[:, 3:3 + n_bins]
    per_class = sums[:, 3 + n_bins:].reshape(len(sums), n_classes, n_bins)
    return {"ece": np.abs(top).sum(axis=1) / count,
            "classwise_ece": np.abs(per_class).sum(axis=2).mean(axis=1) / count,
            "brier": sums[:, 1] / count,
            "log_loss": sums[:, 2] / count}


def calibration_scores(probs, labels, n_bins: int = ECE_BINS) -> dict:
    """ECE (top label), class-wise ECE, Brier score and log loss of ``probs`` vs integer ``labels``."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    sums = _row_statistics(probs, labels, n_bins).sum(axis=0, keepdims=True)
    scores = _scores_from_sums(sums, probs.shape[1], n_bins)
    return {name: float(values[0]) for name, values in scores.items()} | {"n": int(len(labels))}


def calibration_bootstrap(probs, labels, groups, *, n_boot: int = 1000, seed: int = 0, n_bins: int = ECE_BINS,
                          alpha: float = 0.05) -> dict:
    """Scores with patient-bootstrap intervals: ``{name: {estimate, low, high}}``.

    Patients (``groups``) are drawn with replacement; all their rows come along. Vectorised: the
    per-patient sums of :func:`_row_statistics` times a ``(n_boot, patients)`` count matrix.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    codes, uniques = pd.factorize(np.asarray(groups, dtype=str))
    statistics = _row_statistics(probs, labels, n_bins)
    per_group = np.zeros((len(uniques), statistics.shape[1]))
    np.add.at(per_group, codes, statistics)
    rng = np.random.default_rng(seed)
    n_groups = len(uniques)
    draws = rng.integers(0, n_groups, size=(int(n_boot), n_groups)) + (np.arange(int(n_boot)) * n_groups)[:, None]
    counts = np.bincount(draws.ravel(), minlength=int(n_boot) * n_groups).reshape(int(n_boot), n_groups)
    boot = _scores_from_sums(counts @ per_group, probs.shape[1], n_bins)
    point = _scores_from_sums(per_group.sum(axis=0, keepdims=True), probs.shape[1], n_bins)
    result = {}
    for name in SCORE_NAMES:
        low, high = np.quantile(boot[name], [alpha / 2, 1 - alpha / 2]) if int(n_boot) > 0 else (np.nan, np.nan)
        result[name] = {"estimate": float(point[name][0]), "low": float(low), "high": float(high)}
    result["n"] = int(len(labels))
    result["n_groups"] = int(n_groups)
    result["n_boot"] = int(n_boot)
    result["ece_bins"] = f"{n_bins} equal-width bins on [0, 1]"
    return result


def reliability_table(probs, labels, class_index: int | None = None, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per bin: mean predicted probability, observed frequency, count.

    ``class_index`` None: top label (confidence vs accuracy); else one-vs-rest for that class.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    if class_index is None:
        predicted, observed = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    else:
        predicted, observed = probs[:, class_index], (labels == class_index).astype(float)
    table = pd.DataFrame({"bin": _bin_of(predicted, n_bins), "predicted": predicted, "observed": observed})
    grouped = table.groupby("bin").agg(predicted=("predicted", "mean"), observed=("observed", "mean"),
                                       count=("observed", "size")).reset_index()
    grouped["low"] = grouped["bin"] / n_bins
    grouped["high"] = (grouped["bin"] + 1) / n_bins
    return grouped


# ----------------------------------------------------------------------------- out-of-fold evaluation


def _encode(table: pd.DataFrame, classes) -> tuple[np.ndarray, np.ndarray]:
    return _labels_and_probs(table, classes)


def calibrate_table(table: pd.DataFrame, classes, calibration: dict | None) -> pd.DataFrame:
    """A copy of a prediction table with calibrated ``prob_<class>`` columns and ``pred``."""
    columns = prob_columns(classes)
    result = table.copy()
    if len(result):
        result[columns] = apply_calibration(calibration, result[columns].to_numpy(dtype=float))
        result["pred"] = np.asarray(list(classes))[result[columns].to_numpy().argmax(axis=1)]
    return result


def cross_fitted_predictions(table: pd.DataFrame, classes, method: str = DEFAULT_METHOD) -> pd.DataFrame:
    """Calibrated copy of an out-of-fold table (columns ``seed``, ``fold``): rows of fold ``k`` (seed
    ``s``) get the map fitted on the other folds of seed ``s`` only (see the module doc). With
    ``method="auto"`` the method itself is chosen on those other folds (nested: :func:`select_method`
    cross-fits the candidates among them), never on fold ``k``."""
    parts = []
    seeds = table["seed"] if "seed" in table else pd.Series(0, index=table.index)
    for seed in pd.unique(seeds):
        of_seed = table[seeds == seed]
        for fold in sorted(pd.unique(of_seed["fold"])):
            fit_rows = of_seed[of_seed["fold"] != fold]
            test_rows = of_seed[of_seed["fold"] == fold]
            if fit_rows.empty:  # a single fold: no other fold to fit a map on, so the rows stay as they are
                parts.append(test_rows.copy())
                continue
            chosen = select_method(fit_rows, classes)[0] if method == "auto" else method
            labels, probs = _encode(fit_rows, classes)
            parts.append(calibrate_table(test_rows, classes, fit_calibration(probs, labels, chosen)))
    return pd.concat(parts).loc[table.index]


def select_method(table: pd.DataFrame, classes, candidates=AUTO_CANDIDATES) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest ECE of its cross-fitted predictions on ``table`` (folds of
    ``table`` only; ties: the simpler, earlier candidate); returns ``(method, {candidate: ECE})``."""
    scores = {}
    for candidate in candidates:
        calibrated = table if candidate == "none" else cross_fitted_predictions(table, classes, candidate)
        labels, probs = _encode(calibrated, classes)
        scores[candidate] = calibration_scores(probs, labels)["ece"]
    return min(scores, key=lambda c: (round(scores[c], 12), candidates.index(c))), scores


def nested_calibrated_predictions(table: pd.DataFrame, inner_tables: dict, classes, *, method: str = DEFAULT_METHOD,
                                  level: str = "frame") -> tuple[pd.DataFrame, dict]:
    """Calibrated copy of an outer out-of-fold ``table`` (frame or video rows; columns ``seed``,
    ``fold``), fully nested: rows of outer fold ``k`` of seed ``s`` get the map chosen (``"auto"``)
    and fitted on ``inner_tables[(s, k)]`` only -- frame-level out-of-fold predictions of inner
    folds (column ``fold``) of that outer fold's training data. ``level="video"`` fits on the
    inner tables' video means (:func:`covnb.evaluate.video_predictions`). An outer fold without
    inner predictions keeps its raw probabilities. Returns ``(table, {(s, k): method})``."""
    from covnb.evaluate import video_predictions

    if level not in ("frame", "video"):
        raise ValueError(f"level must be 'frame' or 'video', got {level!r}")
    parts, chosen = [], {}
    seeds = table["seed"] if "seed" in table else pd.Series(0, index=table.index)
    for seed in pd.unique(seeds):
        of_seed = table[seeds == seed]
        for fold in sorted(pd.unique(of_seed["fold"])):
            test_rows = of_seed[of_seed["fold"] == fold]
            inner = inner_tables.get((seed, fold))
            if inner is None or inner.empty or inner["fold"].nunique() < 2:
                parts.append(test_rows.copy())
                chosen[(seed, fold)] = "none"
                continue
            inner = inner.drop(columns=["seed"], errors="ignore")
            fit_rows = video_predictions(inner, classes, "mean") if level == "video" else inner
            name = select_method(fit_rows, classes)[0] if method == "auto" else method
            labels, probs = _encode(fit_rows, classes)
            parts.append(calibrate_table(test_rows, classes, fit_calibration(probs, labels, name)))
            chosen[(seed, fold)] = name
    return pd.concat(parts).loc[table.index], chosen


def _level_tables(oof: pd.DataFrame, classes) -> dict[str, pd.DataFrame]:
    return {"frame": oof, "video": video_predictions(oof, classes, "mean")}


def evaluate_calibration(oof: pd.DataFrame, classes, *, methods=CALIBRATION_METHODS + ("auto",), n_boot: int = 1000,
                         seed: int = 0, inner_tables: dict | None = None) -> tuple[dict, dict]:
    """Raw and calibrated out-of-fold scores (with patient-bootstrap CIs) per level and method.

    ``inner_tables`` (``{(seed, fold): inner out-of-fold frame predictions}``): fully nested maps
    (:func:`nested_calibrated_predictions`); without them, cross-fitted ones
    (:func:`cross_fitted_predictions`). Returns ``(summary, tables)``: ``summary[level][method]``
    (``"raw"`` included) and the (calibrated) prediction tables ``tables[level][method]`` for
    figures; with ``inner_tables``, ``tables[level]["auto"].attrs["selected"]`` holds the method
    each outer fold chose.
    """
    summary, tables = {}, {}
    for level, table in _level_tables(oof, classes).items():
        tables[level] = {"raw": table}
        for method in methods:
            if inner_tables is not None:
                calibrated, chosen = nested_calibrated_predictions(table, inner_tables, classes, method=method,
                                                                   level=level)
                calibrated.attrs["selected"] = chosen
                tables[level][method] = calibrated
            else:
                tables[level][method] = cross_fitted_predictions(table, classes, method)
        summary[level] = {}
        for method, calibrated in tables[level].items():
            labels, probs = _encode(calibrated, classes)
            groups = calibrated["group"] if "group" in calibrated else calibrated["sample_id"]
            summary[level][method] = calibration_bootstrap(probs, labels, groups, n_boot=n_boot, seed=seed)
    return summary, tables


def fit_final_calibration(oof: pd.DataFrame, classes, method: str = DEFAULT_METHOD) -> dict:
    """The map stored with a model: fitted on all out-of-fold predictions, one per level.

    ``{"method", "frame": params, "video": params, "fitted_on", "classes"}``: ``frame`` applies
    to each frame's probabilities, ``video`` to a file's mean frame probability.
    """
    block = {"method": method, "classes": list(classes),
             "fitted_on": "out-of-fold predictions of the cross-validation (all split seeds pooled); "
                          "video level = mean frame probability"}
    for level, table in _level_tables(oof, classes).items():
        labels, probs = _encode(table, classes)
        chosen = method
        if method == "auto":
            chosen, scores = select_method(table, classes)
            block[f"{level}_selection_ece"] = scores
        block[level] = fit_calibration(probs, labels, chosen)
    return block


# ----------------------------------------------------------------------------- figure


def plot_reliability(tables: dict, classes, *, methods=("raw", DEFAULT_METHOD), n_bins: int = ECE_BINS,
                     summary: dict | None = None):
    """Reliability diagrams, one row per level (frame, video), one column per class (one-vs-rest),
    one line per method; marker area grows with the bin's count. One matplotlib Figure."""
    import matplotlib.pyplot as plt

    levels = list(tables)
    figure, axes = plt.subplots(len(levels), len(classes), figsize=(3.2 * len(classes), 3.1 * len(levels)),
                                squeeze=False)
    colours = dict(zip(CALIBRATION_METHODS + ("raw", "auto"), ("tab:blue", "tab:green", "tab:purple", "tab:brown",
                                                                "tab:red", "black")))
    for row, level in enumerate(levels):
        for column, name in enumerate(classes):
            axis = axes[row, column]
            axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            for method in methods:
                labels, probs = _encode(tables[level][method], classes)
                table = reliability_table(probs, labels, column, n_bins)
                label = method
                if summary is not None and method in summary.get(level, {}):
                    label += f" (ECE {summary[level][method]['ece']['estimate']:.3f})"
                axis.plot(table["predicted"], table["observed"], marker="o", linewidth=1,
                          color=colours.get(method), label=label if column == 0 else None, markersize=3)
                axis.scatter(table["predicted"], table["observed"], s=6 + 60 * table["count"] / table["count"].max(),
                             color=colours.get(method), alpha=0.4)
            axis.set_xlim(0, 1)
            axis.set_ylim(0, 1)
            axis.set_title(f"{level}: {name}", fontsize=10)
            axis.set_xlabel(f"predicted P({name})")
            if column == 0:
                axis.set_ylabel("observed frequency")
                axis.legend(fontsize=7, loc="upper left")
    figure.suptitle(f"reliability, out-of-fold ({n_bins} equal-width bins; top-label ECE in the legend)",
                    fontsize=11)
    figure.tight_layout()
    return figure


def calibrate_file_probabilities(metadata: dict | None, frame_probs, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One file's calibrated frame probabilities ``(T, K)`` and file probability ``(K,)`` (the
    video map applied to the mean raw frame probability), from a model's sidecar ``metadata``;
    raw ones when ``raw`` or when the model has no ``calibration`` block."""
    frame_probs = np.asarray(frame_probs, dtype=float)
    block = None if raw else (metadata or {}).get("calibration")
    if not block:
        return frame_probs, frame_probs.mean(axis=0)
    return (apply_calibration(block.get("frame"), frame_probs),
            apply_calibration(block.get("video"), frame_probs.mean(axis=0, keepdims=True))[0])
