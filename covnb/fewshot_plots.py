"""Figures of few-shot results: accuracy against K, balanced accuracy against patients."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["plot_shot_curves", "plot_learning_curve"]


def plot_shot_curves(curve: pd.DataFrame, ax=None, *, title: str = "", chance: float | None = None, label_suffix=""):
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


def plot_learning_curve(rows: pd.DataFrame, fewshot_curve: pd.DataFrame | None = None, ax=None, *,
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
