"""What the sampled frames look like: sample grids, video sampling, intensities, mean frames, CLAHE
and the canonical region of each file (before/after thumbnails)."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from covnb.canonical import canonicalize
from covnb.explore_common import _check_columns, _empty_figure, _gray, _short, _short_tail, label_palette
from covnb.frames import FrameError, FrameSettings, apply_clahe, read_frames

__all__ = ["sample_grid", "video_table", "sampling_summary", "plot_video_sampling", "intensity_table",
           "plot_intensity_histograms", "plot_mean_frames", "plot_clahe", "canonical_gallery"]


def _frame_labels(frame_index: pd.DataFrame, frames: np.ndarray) -> np.ndarray:
    _check_columns(frame_index, ["label"])
    if len(frame_index) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(frame_index)} index rows")
    return np.asarray(frame_index["label"], dtype=str)


def sample_grid(frames: np.ndarray, frame_index: pd.DataFrame, *, per_class: int = 4, seed: int = 0,
                palette: dict | None = None) -> matplotlib.figure.Figure:
    """A row of example frames per class, each from a different patient where possible.

    The middle sampled frame of each chosen file is shown, titled with its file and patient.
    """
    labels = _frame_labels(frame_index, frames)
    if not len(frames):
        return _empty_figure("no frames to show")
    _check_columns(frame_index, ["sample_id", "group"])
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    palette = palette or label_palette(classes)
    work = frame_index.reset_index(drop=True).assign(_row=np.arange(len(frame_index)))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(2.3 * per_class, 2.55 * len(classes)), squeeze=False)
    for row, label in enumerate(classes):
        files = work[labels == label].groupby("sample_id", sort=True).agg(group=("group", "first"), rows=("_row", list))
        # one file per patient first, then more files if there are fewer patients than panels
        order = rng.permutation(len(files))
        chosen, seen = [], set()
        for i in order:
            if files["group"].iloc[i] not in seen:
                chosen.append(i)
                seen.add(files["group"].iloc[i])
        chosen += [i for i in order if i not in chosen]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color(palette.get(label, "grey"))
                side.set_linewidth(3)
            if col >= len(chosen):
                ax.set_facecolor("#f4f4f4")
                continue
            entry = files.iloc[chosen[col]]
            ax.imshow(frames[entry["rows"][len(entry["rows"]) // 2]])
            ax.set_title(f"{_short(Path(files.index[chosen[col]]).name, 24)}\npatient {_short_tail(entry['group'], 18)}",
                         fontsize=7.5)
        axes[row, 0].set_ylabel(label, fontsize=13, color=palette.get(label, "black"), fontweight="bold")
    fig.tight_layout()
    return fig


def video_table(samples: pd.DataFrame, frame_index: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per video: frame rate, length, duration and (given frames) how many were kept."""
    _check_columns(samples, ["sample_id", "label", "kind", "fps", "frame_count", "duration_s"])
    videos = samples[samples["kind"] == "video"][["sample_id", "label", "group", "fps", "frame_count", "duration_s"]]
    videos = videos.reset_index(drop=True)
    if frame_index is not None and len(frame_index):
        kept = frame_index.groupby("sample_id").size()
        videos["frames_kept"] = videos["sample_id"].map(kept).fillna(0).astype(int)
        videos["share_kept"] = (videos["frames_kept"] / videos["frame_count"]).round(3)
    return videos


def sampling_summary(samples: pd.DataFrame, frame_index: pd.DataFrame) -> pd.DataFrame:
    """Per label: files, videos, frames in the videos and frames kept by the sampling."""
    _check_columns(frame_index, ["sample_id", "label"])
    videos = samples[samples["kind"] == "video"]
    rows = []
    for label in sorted(samples["label"].astype(str).unique()):
        mine = frame_index[frame_index["label"] == label]
        vids = videos[videos["label"] == label]
        rows.append({"label": label, "files": int((samples["label"] == label).sum()), "videos": len(vids),
                     "frames_in_videos": int(vids["frame_count"].fillna(0).sum()),
                     "frames_kept": int(len(mine)),
                     "frames_kept_from_videos": int(mine["sample_id"].isin(vids["sample_id"]).sum())})
    table = pd.DataFrame(rows).set_index("label")
    table.loc["total"] = table.sum()
    return table


def plot_video_sampling(samples: pd.DataFrame, frame_index: pd.DataFrame | None = None, *, rate_hz: float = 3.0,
                        max_frames: int = 30, palette: dict | None = None) -> matplotlib.figure.Figure:
    """Video durations, frame rates and frames kept by sampling at ``rate_hz`` up to ``max_frames``.

    With no videos in ``samples`` a small figure says so instead.
    """
    videos = video_table(samples, frame_index)
    if videos.empty:
        return _empty_figure("no videos in this data set: every file is a single image")
    palette = palette or label_palette(samples["label"])
    n_panels = 3 if "frames_kept" in videos else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 3.6))
    sns.histplot(data=videos, x="duration_s", hue="label", multiple="stack", palette=palette, ax=axes[0],
                 bins=min(20, max(5, len(videos) // 3)))
    axes[0].set_title("video duration")
    axes[0].set_xlabel("seconds")
    fps = videos.assign(fps=videos["fps"].round().astype("Int64").astype(str).replace("<NA>", "unknown"))
    order = sorted(fps["fps"].unique(), key=lambda v: (v == "unknown", float(v) if v != "unknown" else 0))
    stacked = pd.crosstab(fps["fps"], fps["label"].astype(str)).reindex(order)
    stacked.plot.bar(stacked=True, ax=axes[1], color=[palette.get(c, "grey") for c in stacked.columns], width=0.8,
                     edgecolor="white", linewidth=0.5)
    axes[1].set_ylabel("videos")
    axes[1].set_title("frame rate reported by the file")
    axes[1].set_xlabel("frames per second (rounded)")
    axes[1].tick_params(axis="x", labelrotation=90 if len(order) > 8 else 0)
    if n_panels == 3:
        ax = axes[2]
        sns.scatterplot(data=videos, x="duration_s", y="frames_kept", hue="label", palette=palette, ax=ax,
                        alpha=0.8, legend=False)
        top = float(np.nanmax(videos["duration_s"])) if videos["duration_s"].notna().any() else 10.0
        grid = np.linspace(0, max(top, 1.0), 200)
        ax.plot(grid, np.minimum(np.floor(grid * rate_hz) + 1, max_frames), color="black", lw=1, ls="--",
                label=f"{rate_hz:g} Hz, at most {max_frames}")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("frames kept per video")
        ax.set_xlabel("video duration (s)")
        ax.set_ylabel("frames kept")
    fig.tight_layout()
    return fig


def intensity_table(frames: np.ndarray, frame_index: pd.DataFrame) -> pd.DataFrame:
    """Per frame: mean brightness, contrast (std) and share of black pixels (< 10), with label."""
    labels = _frame_labels(frame_index, frames)
    gray = _gray(frames)
    flat = gray.reshape(len(gray), -1)
    return pd.DataFrame({"label": labels, "mean": flat.mean(axis=1), "std": flat.std(axis=1),
                         "black_share": (flat < 10).mean(axis=1)})


def plot_intensity_histograms(frames: np.ndarray, frame_index: pd.DataFrame, *, palette: dict | None = None,
                              max_frames_per_class: int = 300, seed: int = 0) -> matplotlib.figure.Figure:
    """Gray-level histogram per class and each frame's mean brightness per class.

    Classes that differ in overall brightness (a device or a hospital, not a disease) hand a
    network a shortcut; this figure makes such differences visible before any training.
    """
    labels = _frame_labels(frame_index, frames)
    if not len(frames):
        return _empty_figure("no frames to show")
    palette = palette or label_palette(labels)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
    bins = np.arange(0, 257, 4)
    for label in sorted(set(labels)):
        rows = np.nonzero(labels == label)[0]
        if len(rows) > max_frames_per_class:
            rows = np.sort(rng.choice(rows, max_frames_per_class, replace=False))
        values = _gray(frames[rows]).ravel()
        values = values[values >= 10]  # ignore the black background around the image
        hist, _ = np.histogram(values, bins=bins, density=True)
        axes[0].plot(bins[:-1] + 2, hist, color=palette[label], lw=2, label=label)
    axes[0].set_title("gray levels per class (black background ignored)")
    axes[0].set_xlabel("gray level")
    axes[0].set_ylabel("density")
    axes[0].set_xlim(0, 255)
    axes[0].legend()
    table = intensity_table(frames, frame_index)
    classes = [c for c in sorted(palette) if (table["label"] == c).any()]
    boxes = axes[1].boxplot([table.loc[table["label"] == c, "mean"].to_numpy() for c in classes],
                            positions=np.arange(len(classes)), widths=0.6, patch_artist=True,
                            flierprops={"markersize": 2}, medianprops={"color": "black"})
    for patch, label in zip(boxes["boxes"], classes):
        patch.set_facecolor(palette[label])
    axes[1].set_xticks(np.arange(len(classes)), classes)
    axes[1].set_title("mean brightness of each frame")
    axes[1].set_xlabel("")
    axes[1].set_ylabel("mean gray level")
    fig.tight_layout()
    return fig


def plot_mean_frames(frames: np.ndarray, frame_index: pd.DataFrame, per_file: bool = True) -> matplotlib.figure.Figure:
    """Average frame (top) and pixel-wise standard deviation (bottom) of every class.

    With ``per_file`` each file weighs the same (a long video does not dominate its class).
    A class whose average shows a shape (a sector, a text overlay, a border) tells where a
    network could look besides the lung.
    """
    labels = _frame_labels(frame_index, frames)
    if not len(frames):
        return _empty_figure("no frames to show")
    classes = sorted(set(labels))
    gray = _gray(frames)
    fig, axes = plt.subplots(2, len(classes), figsize=(2.9 * len(classes), 6.0), squeeze=False)
    for col, label in enumerate(classes):
        rows = np.nonzero(labels == label)[0]
        if per_file and "sample_id" in frame_index:
            ids = np.asarray(frame_index["sample_id"], dtype=str)[rows]
            per = np.stack([gray[rows[ids == s]].mean(axis=0) for s in np.unique(ids)])
        else:
            per = gray[rows]
        axes[0, col].imshow(per.mean(axis=0), cmap="gray", vmin=0, vmax=255)
        axes[0, col].set_title(f"{label}\nmean of {len(per)} {'files' if per_file else 'frames'}", fontsize=10)
        std_image = axes[1, col].imshow(per.std(axis=0), cmap="magma", vmin=0, vmax=100)
        axes[1, col].set_title("pixel-wise std", fontsize=9)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(std_image, ax=axes[1, :].tolist(), shrink=0.8, label="std (gray levels)")
    return fig


def plot_clahe(frames: np.ndarray, frame_index: pd.DataFrame, *, per_class: int = 1, clip_limit: float = 2.0,
               seed: int = 0) -> matplotlib.figure.Figure:
    """Frames before and after CLAHE (Zuiderveld 1994), with their gray-level histograms.

    CLAHE equalises contrast in small tiles, clipping each tile's histogram so noise is not
    amplified: faint B-lines and pleura stand out, and images from different devices look
    more alike.
    """
    labels = _frame_labels(frame_index, frames)
    if not len(frames):
        return _empty_figure("no frames to show")
    rng = np.random.default_rng(seed)
    picks = []
    for label in sorted(set(labels)):
        rows = np.nonzero(labels == label)[0]
        picks += [(label, int(r)) for r in rng.choice(rows, min(per_class, len(rows)), replace=False)]
    fig, axes = plt.subplots(len(picks), 3, figsize=(9.5, 3.0 * len(picks)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.3]})
    for row, (label, index) in enumerate(picks):
        before = frames[index]
        after = apply_clahe(before, clip_limit=clip_limit)
        axes[row, 0].imshow(before)
        axes[row, 0].set_title(f"{label}: original", fontsize=10)
        axes[row, 1].imshow(after)
        axes[row, 1].set_title(f"after CLAHE (clip {clip_limit:g})", fontsize=10)
        for ax in axes[row, :2]:
            ax.axis("off")
        bins = np.arange(0, 257, 4)
        for image, name, colour in ((before, "original", "0.5"), (after, "CLAHE", "tab:orange")):
            values = _gray(image).ravel()
            axes[row, 2].hist(values[values >= 10], bins=bins, density=True, histtype="step", lw=2,
                              color=colour, label=name)
        axes[row, 2].set_title("gray levels (background ignored)", fontsize=10)
        axes[row, 2].legend(fontsize=8)
        axes[row, 2].set_yticks([])
    fig.tight_layout()
    return fig



def canonical_gallery(samples, *, mode: str = "crop+inpaint", rate_hz: float = 3.0, max_frames: int = 10,
                      columns: int = 6, thumb: int = 120, label_column: str = "label"):
    """Before/after thumbnails of every file of a sample table: a matplotlib Figure and a table.

    Each file gives one pair: its middle sampled frame as decoded (region outline drawn in green)
    and the same frame after :func:`covnb.canonical.canonicalize`. The table has one row per file: path, label,
    method ("motion", "still", "whole", or "error: ..."), region share of the frame and crop box.
    """
    settings = FrameSettings(rate_hz=rate_hz, max_frames=max_frames)
    rows, pairs = [], []
    for sample in samples.to_dict("records"):
        path = sample["path"]
        try:
            raw, _ = read_frames(path, settings, raw=True)
        except (FrameError, OSError, cv2.error) as error:
            rows.append({"path": str(path), "label": sample.get(label_column, ""), "method": f"error: {error}"})
            continue
        after, region = canonicalize(raw, mode)
        middle = len(raw) // 2
        before = raw[middle].copy()
        contours, _ = cv2.findContours(region.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(before, contours, -1, (0, 255, 0), max(1, round(max(before.shape[:2]) / 150)))
        pairs.append((before, after[middle], f"{sample.get(label_column, '')} {Path(str(path)).name}"[:28]))
        rows.append({"path": str(path), "label": sample.get(label_column, ""), "method": region.method,
                     "share": round(region.share, 3), "box": region.box, "frame_size": raw.shape[1:3]})
    table = pd.DataFrame(rows)
    n = max(1, len(pairs))
    grid_rows = int(np.ceil(n / max(1, columns // 2)))
    figure, axes = plt.subplots(grid_rows, columns, figsize=(columns * thumb / 60, grid_rows * thumb / 60 * 1.1),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for i, (before, after, title) in enumerate(pairs):
        row, col = divmod(i, columns // 2)
        axes[row, 2 * col].imshow(before)
        axes[row, 2 * col].set_title(title, fontsize=6)
        axes[row, 2 * col + 1].imshow(after)
        axes[row, 2 * col + 1].set_title(mode, fontsize=6)
    figure.tight_layout(pad=0.2)
    return figure, table

