"""Metrics at frame and video level, fold statistics, patient bootstrap, and figures.

All metrics come from scikit-learn. A prediction table has one row per frame (or per video)
with ``label``, ``prob_<class>`` columns and optionally ``seed``, ``fold``, ``sample_id`` and
``group``. Video level aggregates frames by mean probability or by majority vote, the two
rules of POCOVID-Net (Born et al., arXiv:2004.12084). Confusion matrices are given normalised
by row (sensitivity on the diagonal) and by column (precision), as in their figures.

Uncertainty: mean +- std over folds (what papers report), pooled out-of-fold metrics per split
seed, and a patient-level bootstrap 95% interval (patients resampled with replacement, Efron &
Tibshirani 1993) because frames and videos of one patient are not independent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, matthews_corrcoef,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)

from covnb.aggregate import video_level

__all__ = [
    "LEVELS",
    "prob_columns",
    "classification_metrics",
    "confusion_matrices",
    "video_predictions",
    "level_table",
    "fold_metrics",
    "pooled_metrics",
    "bootstrap_ci",
    "summarize_cv",
    "metrics_frame",
    "plot_confusion_matrices",
    "plot_roc_curves",
    "plot_training_curves",
    "plot_model_selection",
]

LEVELS = ("frame", "video_mean", "video_vote")


def prob_columns(classes) -> list[str]:
    return [f"prob_{c}" for c in classes]


def _labels_and_probs(table: pd.DataFrame, classes) -> tuple[np.ndarray, np.ndarray]:
    class_of = {c: i for i, c in enumerate(classes)}
    labels = np.asarray(table["label"], dtype=str)
    unknown = sorted(set(labels) - set(class_of))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    y = np.array([class_of[c] for c in labels], dtype=int)
    probs = table[prob_columns(classes)].to_numpy(dtype=float)
    return y, probs


def classification_metrics(y_true, probs, classes, y_pred=None) -> dict:
    """Overall and per-class metrics of integer labels ``y_true`` and probabilities ``probs``.

    Overall: accuracy, balanced accuracy, MCC, macro one-vs-rest ROC-AUC (NaN when a class is
    absent). Per class: sensitivity (recall), specificity, precision, F1, support.
    ``y_pred`` defaults to the arg-max of ``probs``.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    n = len(classes)
    y_pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=int)
    label_ids = list(range(n))
    counts = confusion_matrix(y_true, y_pred, labels=label_ids)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=label_ids,
                                                                     zero_division=0)
    total = counts.sum()
    result = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_auc": _macro_auc(y_true, probs, n),
        "per_class": {},
    }
    for k, name in enumerate(classes):
        tp = counts[k, k]
        fp = counts[:, k].sum() - tp
        fn = counts[k, :].sum() - tp
        tn = total - tp - fp - fn
        result["per_class"][str(name)] = {
            "sensitivity": float(recall[k]) if support[k] else float("nan"),
            "specificity": float(tn / (tn + fp)) if (tn + fp) else float("nan"),
            "precision": float(precision[k]) if (tp + fp) else float("nan"),
            "f1": float(f1[k]) if support[k] else float("nan"),
            "support": int(support[k]),
        }
    return result


def _balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    if len(y_true) == 0:
        return float("nan")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" is expected in folds
        return balanced_accuracy_score(y_true, y_pred)


def _macro_auc(y_true, probs, n_classes) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    if len(present) < n_classes:
        # One-vs-rest AUC of the classes present only.
        return float(np.mean([roc_auc_score(y_true == k, probs[:, k]) for k in present]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def confusion_matrices(y_true, y_pred, classes) -> dict[str, pd.DataFrame]:
    """Counts, row-normalised (recall on the diagonal) and column-normalised (precision) matrices.

    Accepts class names or integer indices. Rows are true classes, columns predicted ones.
    """
    classes = list(classes)
    y_true = _as_index(y_true, classes)
    y_pred = _as_index(y_pred, classes)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    with np.errstate(invalid="ignore", divide="ignore"):
        by_row = counts / counts.sum(axis=1, keepdims=True)
        by_column = counts / counts.sum(axis=0, keepdims=True)
    frame = lambda m: pd.DataFrame(m, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))  # noqa: E731
    return {"counts": frame(counts), "by_row": frame(by_row), "by_column": frame(by_column)}


def _as_index(values, classes) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(int)
    class_of = {str(c): i for i, c in enumerate(classes)}
    return np.array([class_of[str(v)] for v in values], dtype=int)


def video_predictions(frames: pd.DataFrame, classes, method: str = "mean") -> pd.DataFrame:
    """One row per video (per seed and fold when present) from frame rows.

    ``method="mean"``: mean frame probability; ``"vote"``: fraction of frames voting for each
    class (majority vote; ties broken by mean probability).
    """
    keys = [c for c in ("seed", "fold") if c in frames] + ["sample_id"]
    columns = prob_columns(classes)
    videos = video_level(frames, columns, keys, method=method, carry=("group", "label"))
    values = videos[columns].to_numpy()
    if method == "vote":
        values = np.round(values, 5)
        videos[columns] = values
    videos["pred"] = np.asarray(list(classes))[videos[columns].to_numpy().argmax(axis=1)]
    return videos


def level_table(oof: pd.DataFrame, classes, level: str) -> pd.DataFrame:
    """The rows to score at ``level``: "frame", "video_mean" or "video_vote"."""
    if level == "frame":
        return oof
    if level == "video_mean":
        return video_predictions(oof, classes, "mean")
    if level == "video_vote":
        return video_predictions(oof, classes, "vote")
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def metrics_frame(metrics: dict) -> dict:
    """Flatten a :func:`classification_metrics` dict: ``covid_sensitivity`` etc."""
    flat = {k: v for k, v in metrics.items() if k != "per_class"}
    for name, values in metrics.get("per_class", {}).items():
        for key, value in values.items():
            flat[f"{name}_{key}"] = value
    return flat


def fold_metrics(oof: pd.DataFrame, classes, level: str = "frame") -> pd.DataFrame:
    """One row of flattened metrics per (seed, fold)."""
    table = level_table(oof, classes, level)
    keys = [c for c in ("seed", "fold") if c in table]
    rows = []
    for key, part in (table.groupby(keys) if keys else [((), table)]):
        y, probs = _labels_and_probs(part, classes)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **metrics_frame(classification_metrics(y, probs, classes))})
    return pd.DataFrame(rows)


def pooled_metrics(oof: pd.DataFrame, classes, level: str = "frame") -> pd.DataFrame:
    """One row of metrics per seed on all its out-of-fold predictions pooled."""
    table = level_table(oof, classes, level)
    rows = []
    for seed, part in (table.groupby("seed") if "seed" in table else [(0, table)]):
        y, probs = _labels_and_probs(part, classes)
        rows.append({"seed": seed, **metrics_frame(classification_metrics(y, probs, classes))})
    return pd.DataFrame(rows)


def bootstrap_ci(table: pd.DataFrame, classes, metric="balanced_accuracy", *, n_boot: int = 1000,
                 seed: int = 0, level: str | None = None, alpha: float = 0.05, vectorised: bool = True) -> dict:
    """Patient-level bootstrap interval of flattened metrics (e.g. "covid_sensitivity").

    Patients (``group``) are resampled with replacement and all their rows come along (frames
    and videos of one patient are not independent). ``metric`` is one name (returns one dict
    with estimate/low/high) or a list of names (returns a dict of such dicts). All resamples are
    scored at once (1000 resamples of 200 videos in well under a second); ``vectorised=False``
    scores one resample at a time with :func:`classification_metrics`: same draws, same numbers.
    """
    if level is not None:
        table = level_table(table, classes, level)
    names = [metric] if isinstance(metric, str) else list(metric)
    y, probs = _labels_and_probs(table, classes)
    group_column = "group" if "group" in table else "sample_id"
    groups = np.asarray(table[group_column], dtype=str)
    unique, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    point = metrics_frame(classification_metrics(y, probs, classes))
    if vectorised:
        # every resample at once: the same draws as one rng.integers(0, G, G) call per resample, in order
        chosen = rng.integers(0, len(unique), (int(n_boot), len(unique)))
        # a patient drawn c times brings its rows c times: row weights are the draw counts of the row's patient
        counts = np.zeros((int(n_boot), len(unique)))
        np.add.at(counts, (np.repeat(np.arange(int(n_boot)), len(unique)), chosen.ravel()), 1.0)
        draws = _resampled_metrics(y, probs, classes, counts[:, inverse], names)
    else:  # the definition, one resample at a time (what the vectorised form is checked against)
        rows_of = [np.nonzero(inverse == g)[0] for g in range(len(unique))]
        values = []
        for _ in range(int(n_boot)):
            rows = np.concatenate([rows_of[g] for g in rng.integers(0, len(unique), len(unique))])
            values.append(metrics_frame(classification_metrics(y[rows], probs[rows], classes)))
        draws = {name: np.array([v[name] for v in values], dtype=float) for name in names}
    result = {}
    for name in names:
        values = draws[name][~np.isnan(draws[name])]
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2]) if len(values) else (np.nan, np.nan)
        result[name] = {"metric": name, "estimate": float(point[name]), "low": float(low), "high": float(high),
                        "n_boot": int(n_boot), "n_groups": int(len(unique))}
    return result[metric] if isinstance(metric, str) else result


def _resampled_metrics(y, probs, classes, weights, names) -> dict[str, np.ndarray]:
    """:func:`classification_metrics` (flattened) of every resample at once: ``weights[b, i]`` is how often row
    ``i`` occurs in resample ``b``. Same definitions as scikit-learn (balanced accuracy over the classes present,
    MCC of the confusion matrix, one-vs-rest ROC-AUC with ties counted half), NaN where they are undefined."""
    n_classes = len(classes)
    pred = probs.argmax(axis=1)
    truth = np.eye(n_classes)[y]                      # rows x classes
    called = np.eye(n_classes)[pred]
    confusion = np.einsum("bi,ik,il->bkl", weights, truth, called)   # resample x true x predicted
    total = confusion.sum(axis=(1, 2))
    true_sum, pred_sum = confusion.sum(axis=2), confusion.sum(axis=1)
    hits = np.einsum("bkk->bk", confusion)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true_sum > 0, hits / true_sum, np.nan)
        out["accuracy"] = np.where(total > 0, hits.sum(axis=1) / total, np.nan)
        present = true_sum > 0
        out["balanced_accuracy"] = np.where(present.any(axis=1), np.nansum(recall, axis=1) / np.maximum(
            present.sum(axis=1), 1), np.nan)
        correct = hits.sum(axis=1)
        cov_tp = correct * total - (true_sum * pred_sum).sum(axis=1)
        cov_pp = total ** 2 - (pred_sum ** 2).sum(axis=1)
        cov_tt = total ** 2 - (true_sum ** 2).sum(axis=1)
        denominator = cov_tt * cov_pp
        out["mcc"] = np.where(total == 0, np.nan, np.where(denominator == 0, 0.0, cov_tp / np.sqrt(denominator)))
        for k, name in enumerate(map(str, classes)):
            tp, fp, fn = hits[:, k], pred_sum[:, k] - hits[:, k], true_sum[:, k] - hits[:, k]
            tn = total - tp - fp - fn
            out[f"{name}_sensitivity"] = recall[:, k]
            out[f"{name}_specificity"] = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
            out[f"{name}_precision"] = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
            out[f"{name}_f1"] = np.where(true_sum[:, k] > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), np.nan)
            out[f"{name}_support"] = true_sum[:, k]
        out["n"] = total
        if "macro_auc" in names:
            per_class = np.stack([_weighted_auc(y == k, probs[:, k], weights) for k in range(n_classes)], axis=1)
            per_class = np.where(present, per_class, np.nan)
            binary = per_class[:, 1] if n_classes == 2 else np.nansum(per_class, axis=1) / np.maximum(
                present.sum(axis=1), 1)
            out["macro_auc"] = np.where(present.sum(axis=1) >= 2, binary, np.nan)
    missing = sorted(set(names) - set(out))
    if missing:
        raise ValueError(f"unknown metric(s) {missing}; known: {sorted(out)}")
    return {name: np.asarray(out[name], dtype=float) for name in names}


def _weighted_auc(positive, scores, weights) -> np.ndarray:
    """ROC-AUC of every resample (rows of ``weights``): the chance a positive outscores a negative, ties half."""
    order = np.argsort(scores, kind="stable")
    _, starts = np.unique(scores[order], return_index=True)       # blocks of tied scores
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg                           # negative weight strictly below each block
    pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, pairs / total, np.nan)


SUMMARY_METRICS = ("balanced_accuracy", "accuracy", "mcc", "macro_auc")


def summarize_cv(oof: pd.DataFrame, classes, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per level: mean/std over folds, pooled OOF per seed (mean/std over seeds), bootstrap CIs."""
    classes = list(classes)
    summary: dict = {"classes": classes}
    for level in LEVELS:
        per_fold = fold_metrics(oof, classes, level)
        pooled = pooled_metrics(oof, classes, level)
        numeric = [c for c in per_fold.columns if c not in ("seed", "fold") and not c.endswith("_support")]
        entry = {
            "folds_mean": {c: float(per_fold[c].mean()) for c in numeric},
            "folds_std": {c: float(per_fold[c].std(ddof=1)) if len(per_fold) > 1 else 0.0 for c in numeric},
            "pooled_mean": {c: float(pooled[c].mean()) for c in numeric},
            "pooled_std": {c: float(pooled[c].std(ddof=1)) if len(pooled) > 1 else 0.0 for c in numeric},
            "per_seed": pooled.to_dict(orient="records"),
            "n_folds": int(len(per_fold)),
        }
        if n_boot:
            table = level_table(oof, classes, level)
            metrics = list(SUMMARY_METRICS) + [f"{c}_sensitivity" for c in classes] + \
                [f"{c}_specificity" for c in classes]
            entry["bootstrap_95ci"] = bootstrap_ci(table, classes, metrics, n_boot=n_boot, seed=seed)
        summary[level] = entry
    return summary


# ----------------------------------------------------------------------------- figures


def plot_confusion_matrices(table: pd.DataFrame, classes, title: str | None = None):
    """Row- and column-normalised confusion matrices side by side (a matplotlib Figure)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    y, probs = _labels_and_probs(table, classes)
    matrices = confusion_matrices(y, probs.argmax(axis=1), classes)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for axis, (key, caption) in zip(axes, (("by_row", "normalised by row (sensitivity)"),
                                           ("by_column", "normalised by column (precision)"))):
        sns.heatmap(matrices[key], annot=True, fmt=".2f", vmin=0, vmax=1, cmap="Blues", cbar=False, ax=axis,
                    square=True)
        axis.set_title(caption, fontsize=10)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
    figure.suptitle(title or f"confusion matrices of {len(table)} predictions", fontsize=11)
    figure.tight_layout()
    return figure


def plot_roc_curves(table: pd.DataFrame, classes, title: str | None = None):
    """One-vs-rest ROC curve per class with its AUC (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    y, probs = _labels_and_probs(table, classes)
    figure, axis = plt.subplots(figsize=(4.5, 4.2))
    for k, name in enumerate(classes):
        positives = y == k
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        axis.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positives, probs[:, k]):.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(title or "ROC, one class vs the rest", fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def plot_training_curves(histories: pd.DataFrame, title: str | None = None):
    """Training and validation loss per epoch, one thin line per (seed, fold, stage)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    if histories is None or len(histories) == 0 or "loss" not in histories or histories["loss"].isna().all():
        for axis in axes:
            axis.text(0.5, 0.5, "no epoch-wise training (linear probe)", ha="center", va="center")
            axis.set_axis_off()
        return figure
    keys = [c for c in ("seed", "fold", "stage") if c in histories]
    for key, part in histories.groupby(keys):
        label = " ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        axes[0].plot(part["epoch"], part["loss"], linewidth=0.8, label=label)
        axes[1].plot(part["epoch"], part["val_loss"], linewidth=0.8, label=label)
    for axis, name in zip(axes, ("training loss", "inner-validation loss")):
        axis.set_xlabel("epoch")
        axis.set_title(name, fontsize=10)
    if histories.groupby(keys).ngroups <= 10:
        axes[1].legend(fontsize=7)
    figure.suptitle(title or "training curves", fontsize=11)
    figure.tight_layout()
    return figure


def plot_model_selection(histories: pd.DataFrame, title: str | None = None):
    """The regularisation C each fold's logistic head chose, and its inner patient-grouped CV score."""
    import matplotlib.pyplot as plt

    rows = histories.dropna(subset=["C"])
    keys = [c for c in ("seed", "fold") if c in rows]
    labels = [" ".join(f"{k} {v}" for k, v in zip(keys, values)) for values in rows[keys].itertuples(index=False)]
    figure, axis = plt.subplots(figsize=(max(4.5, 0.45 * len(rows) + 2), 3.4))
    bars = axis.bar(range(len(rows)), rows["inner_cv_balanced_accuracy"], color="tab:blue")
    for bar, c in zip(bars, rows["C"]):
        axis.annotate(f"C={c:g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                      va="bottom", fontsize=7)
    axis.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("inner-CV balanced accuracy\n(of the chosen C)")
    axis.set_title(title or "C chosen per fold by inner patient-grouped CV", fontsize=9)
    figure.tight_layout()
    return figure
