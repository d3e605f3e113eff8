"""Figures of the notebooks' comparisons, drawn from computed tables (one function per figure).

Each returns a matplotlib figure; the notebook shows and saves it (:class:`covnb.notebook_figures.FigureLog`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["fold_dot_plot", "plot_feature_map", "plot_frame_agreement", "plot_sensitivity_by_option",
           "plot_source_probe", "plot_interval_bars", "plot_recipe_folds", "plot_leaky_vs_honest",
           "training_curves_or_none", "class_palette", "outcome_figures",
           "plot_patient_vs_source"]


def fold_dot_plot(results: dict, metric: str, title: str, chance: float | None = None):
    """One row per named per-fold table: a bar at the mean over folds and one dot per test fold."""
    fig, axis = plt.subplots(figsize=(8, 0.65 * len(results) + 1.6))
    for position, (name, per_fold) in enumerate(results.items()):
        values = per_fold[metric].to_numpy(dtype=float)
        axis.barh(position, np.nanmean(values), color=sns.color_palette("pastel")[position % 10], height=0.6)
        jitter = np.random.default_rng(position).uniform(-0.15, 0.15, len(values))
        axis.scatter(values, position + jitter, color="black", s=14, zorder=3)
        axis.text(min(np.nanmean(values) + 0.01, 1.0), position + 0.32, f"{np.nanmean(values):.2f}", fontsize=9,
                  va="center")
    if chance is not None:
        axis.axvline(chance, color="grey", linestyle=":", linewidth=1)
        axis.text(chance, 0.02, " chance", color="grey", fontsize=8, va="bottom", transform=axis.get_xaxis_transform())
    axis.set_yticks(range(len(results)))
    axis.set_yticklabels(list(results))
    axis.invert_yaxis()
    axis.set_xlim(0, 1.05)
    axis.set_xlabel(metric.replace("_", " ") + " (dots: test folds)")
    axis.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_feature_map(feature_map: dict, classes, palette: dict, title: str):
    """The 2-D feature map of :func:`covnb.transfer_study.feature_map`, by class and by patient."""
    embedded, labels, groups = feature_map["embedded"], feature_map["labels"], feature_map["groups"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for name in classes:
        chosen = labels == name
        axes[0].scatter(*embedded[chosen].T, s=9, alpha=0.7, color=palette[name], label=f"{name} ({chosen.sum()})")
    axes[0].legend(fontsize=9, markerscale=2, title="class", title_fontsize=9)
    axes[0].set_title("coloured by class", fontsize=11)
    axes[1].scatter(*embedded.T, s=9, alpha=0.8, c=pd.factorize(groups)[0] % 20, cmap="tab20")
    axes[1].set_title(f"coloured by patient ({len(set(groups))} patients, colours repeat)", fontsize=11)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"{feature_map['projection']} 1")
        axis.set_ylabel(f"{feature_map['projection']} 2")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def plot_frame_agreement(agreement: pd.DataFrame, title: str):
    """Histogram of the share of a video's frames voting for its predicted class, right and wrong videos stacked."""
    fig, axis = plt.subplots(figsize=(7, 3.2))
    correct = agreement["correct"].to_numpy(bool)
    axis.hist([agreement["agreement"][correct], agreement["agreement"][~correct]], bins=np.linspace(0, 1, 21),
              stacked=True, color=["tab:green", "tab:red"], label=["video correct (vote)", "video wrong (vote)"])
    axis.set_xlabel("share of a video's frames that vote for its predicted class")
    axis.set_ylabel("videos")
    axis.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axis.set_title(title, fontsize=11)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sensitivity_by_option(sensitivity: pd.DataFrame, palette: dict):
    """Bars of per-class video sensitivity (rows: classes) for each imbalance correction (columns)."""
    fig, axis = plt.subplots(figsize=(7.5, 3.6))
    sensitivity.T.plot.bar(ax=axis, rot=0, width=0.75, color=[palette[c] for c in sensitivity.index])
    for container in axis.containers:
        axis.bar_label(container, fmt="%.2f", fontsize=8)
    axis.set_ylim(0, 1.12)
    axis.set_ylabel("video-level sensitivity")
    axis.set_xlabel("imbalance correction")
    axis.set_title("Sensitivity per class (mean over folds), videos", fontsize=11)
    axis.legend(title="class", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_source_probe(overall: pd.DataFrame):
    """Balanced accuracy of naming the source per input treatment (index), chance as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh(overall.index[::-1], overall["balanced_accuracy"][::-1], color="tab:purple")
    ax.axvline(overall["chance"].iloc[0], color="k", ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy of naming the source")
    ax.legend(loc="lower right")
    return fig


def plot_interval_bars(names, means, errors, xlabel: str, *, chance: float | None = None, colors=None,
                       figsize=(6, 2.5)):
    """Horizontal bars with error bars (e.g. 95% intervals) and an optional chance line."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.barh(list(names), list(means), xerr=list(errors), color=colors)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle=":", label="chance")
        ax.legend(fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    return fig


def plot_recipe_folds(cv_results: dict, classes, n_folds: int):
    """:func:`fold_dot_plot` of the video-level balanced accuracy of every named cross-validation."""
    from covnb.evaluate import fold_metrics

    return fold_dot_plot({name: fold_metrics(cv.oof, classes, "video_mean") for name, cv in cv_results.items()},
                         "balanced_accuracy", f"Video-level balanced accuracy, patient-level {n_folds}-fold CV",
                         chance=1 / len(classes))


def plot_leaky_vs_honest(comparison: dict, recipe: str, n_classes: int):
    """:func:`fold_dot_plot` of the frame-level balanced accuracy of the leaky and the honest split
    (:func:`covnb.transfer_study.leaky_split_comparison`)."""
    return fold_dot_plot({"frame-level split (leaky)": comparison["leaky_folds"],
                          "patient-level split (honest)": comparison["honest_folds"]}, "balanced_accuracy",
                         f"Same recipe ({recipe}), same frames: frame-level balanced accuracy", chance=1 / n_classes)


def training_curves_or_none(cv, name: str):
    """Loss per epoch of a cross-validation (:func:`covnb.evaluate.plot_training_curves`), or None when its
    recipe has no epochs (a logistic regression)."""
    from covnb.evaluate import plot_training_curves

    if "loss" not in cv.histories or not cv.histories["loss"].notna().any():
        return None
    return plot_training_curves(cv.histories, title=f"{name}: loss per epoch, one line per fold")


def class_palette(classes) -> dict:
    """Class -> colour of seaborn's "deep" palette, in the order of ``classes``."""
    return dict(zip(classes, sns.color_palette("deep", len(classes))))


def outcome_figures(oof: pd.DataFrame, videos: pd.DataFrame, classes, name: str) -> dict:
    """Figure name -> figure: confusion matrices of the videos and of the frames, ROC curves of the videos
    (:func:`covnb.evaluate.plot_confusion_matrices`, :func:`covnb.evaluate.plot_roc_curves`)."""
    from covnb.evaluate import plot_confusion_matrices, plot_roc_curves

    return {"confusion_videos": plot_confusion_matrices(
                videos, classes, title=f"{name}: videos (mean probability), {len(videos)} out-of-fold predictions"),
            "confusion_frames": plot_confusion_matrices(
                oof, classes, title=f"{name}: frames, {len(oof)} out-of-fold predictions"),
            "roc_videos": plot_roc_curves(videos, classes, title=f"{name}: ROC per class, videos")}


def plot_patient_vs_source(fold_tables: dict, n_classes: int):
    """:func:`fold_dot_plot` of the video balanced accuracy on patient-grouped and source-held-out folds
    (``fold_tables`` of :func:`covnb.transfer_study.source_comparison`)."""
    return fold_dot_plot(fold_tables, "balanced_accuracy",
                         "Video balanced accuracy: patient-grouped vs source-held-out folds", chance=1 / n_classes)
