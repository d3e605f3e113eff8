"""What a lung-image data set holds: counts per label, probe, source and licence, patients, class
imbalance and the files that could not be read (tables and figures for notebook 01)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from covnb.explore_common import _check_columns, _short, label_palette

__all__ = ["count_table", "patients_table", "plot_census", "plot_imbalance", "skipped_table"]


def count_table(samples: pd.DataFrame, by: str, top: int | None = None) -> pd.DataFrame:
    """Files per value of ``by`` (rows) and label (columns), with a total, largest first.

    ``top`` keeps the largest values and folds the rest into one "other (n values)" row.
    """
    _check_columns(samples, [by, "label"])
    keys = samples[by].fillna("unknown").astype(str).replace("", "unknown")
    table = pd.crosstab(keys, samples["label"].astype(str))
    table.columns.name = "label"
    table.index.name = by
    table["total"] = table.sum(axis=1)
    table = table.sort_values(["total"], ascending=False, kind="stable")
    if top is not None and len(table) > top:
        rest = table.iloc[top:]
        table = table.iloc[:top].copy()
        table.loc[f"other ({len(rest)} values)"] = rest.sum()
    return table


def patients_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Files, patients (groups), files per patient and share of files and patients per label."""
    _check_columns(samples, ["label", "group"])
    table = samples.groupby(samples["label"].astype(str)).agg(files=("group", "size"), patients=("group", "nunique"))
    table["files_per_patient"] = (table["files"] / table["patients"]).round(2)
    table["share_of_files"] = (table["files"] / table["files"].sum()).round(3)
    table["share_of_patients"] = (table["patients"] / table["patients"].sum()).round(3)
    if "kind" in samples:
        kinds = pd.crosstab(samples["label"].astype(str), samples["kind"].astype(str))
        for kind in ("video", "image"):
            table[f"{kind}s"] = kinds[kind] if kind in kinds else 0
    table.index.name = "label"
    return table


def plot_census(samples: pd.DataFrame, columns=("label", "probe", "source", "licence"), top: int = 8,
                palette: dict | None = None) -> matplotlib.figure.Figure:
    """One horizontal stacked bar chart per column: files per value, coloured by label."""
    _check_columns(samples, list(columns) + ["label"])
    palette = palette or label_palette(samples["label"])
    n_cols = min(3, len(columns))
    n_rows = -(-len(columns) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.4 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    for ax, column in zip(axes.ravel(), columns):
        table = count_table(samples, column, top=top).drop(columns="total")
        table = table.iloc[::-1]  # largest at the top
        table.index = [_short(i, 22) for i in table.index]
        table.plot.barh(stacked=True, ax=ax, color=[palette.get(c, "grey") for c in table.columns], width=0.75,
                        legend=False, edgecolor="white", linewidth=0.5)
        ax.set_title(f"files by {'probe / view' if column == 'probe' else column}")
        ax.set_xlabel("files")
        ax.set_ylabel("")
    handles = [matplotlib.patches.Patch(color=palette[k], label=k) for k in palette]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def plot_imbalance(samples: pd.DataFrame, palette: dict | None = None) -> matplotlib.figure.Figure:
    """Files next to patients per label: the number that matters for a patient-level split."""
    table = patients_table(samples)
    palette = palette or label_palette(table.index)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    for ax, column in zip(axes, ("files", "patients")):
        values = table[column]
        bars = ax.bar(values.index, values.values, color=[palette.get(i, "grey") for i in values.index])
        ax.bar_label(bars, labels=[f"{v}\n({v / values.sum():.0%})" for v in values.values], fontsize=9)
        ax.set_title(f"{column} per class")
        ax.set_ylabel(column)
        ax.set_ylim(0, values.max() * 1.3 + 1)
    fig.tight_layout()
    return fig


def skipped_table(skipped: pd.DataFrame, root: str | Path | None = None) -> pd.DataFrame:
    """Skipped files (path relative to ``root`` when possible) with their reasons."""
    _check_columns(skipped, ["path", "reason"])
    paths = []
    for path in skipped["path"]:
        try:
            paths.append(Path(path).relative_to(root).as_posix() if root else str(path))
        except ValueError:
            paths.append(str(path))
    return pd.DataFrame({"file": paths, "reason": list(skipped["reason"])})

