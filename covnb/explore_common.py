"""Shared pieces of the exploration tables and figures: class colours, short labels, saving a figure.

Nothing here changes global plotting styles; only :func:`save_figure` writes files.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["label_palette", "save_figure"]


def label_palette(labels) -> dict:
    """One colour per label, stable across every figure of a notebook (seaborn colorblind)."""
    names = sorted({str(x) for x in labels})
    colours = sns.color_palette("colorblind", max(len(names), 1))
    return {name: colours[i % len(colours)] for i, name in enumerate(names)}


def _check_columns(table: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {', '.join(missing)}; got {', '.join(map(str, table.columns))}")


def _short(text: str, width: int = 26) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_tail(text: str, width: int = 18) -> str:
    """Keep the end of a long identifier (where patient numbers usually are)."""
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _gray(frames: np.ndarray) -> np.ndarray:
    """(N,H,W,3) RGB uint8 -> (N,H,W) float luminance 0..255 (ITU-R BT.601 weights)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return frames.astype(np.float32)
    return frames[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def save_figure(fig: matplotlib.figure.Figure, output_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``output_dir/name.png`` (folder created) and return the path."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _empty_figure(message: str, figsize=(6, 1.2)) -> matplotlib.figure.Figure:
    fig, ax = plt.subplots(figsize=figsize)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return fig

