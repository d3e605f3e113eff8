"""Tables and figures for exploring a lung-image data set before training anything.

Every function takes the sample table of :func:`covnb.datasets.load_dataset` (or the frames of
:func:`covnb.frames.extract_frames`) and returns a pandas DataFrame or a matplotlib Figure, so
notebook 01 only explains, calls and shows. Nothing here changes global plotting styles or
writes files except :func:`save_figure`.

The near-duplicate view uses the 256-bit difference hash of :func:`covnb.splits.perceptual_hash`
(Krawetz 2013): frames of one video are nearly identical, which is why a frame-level split
leaks (Born et al., "Accelerating detection of lung pathologies with explainable ultrasound
image analysis", Applied Sciences 11:672, 2021; Roberts et al., Nature Machine Intelligence
3:199, 2021, on data leakage in COVID-19 imaging models).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import cv2
import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from covnb.canonical import canonicalize
from covnb.frames import FrameError, FrameSettings, apply_clahe, read_frames
from covnb.splits import AuditReport, perceptual_hash
from covnb.phantom_draw import make_clip

#: Pattern each synthetic class is drawn with (see :mod:`covnb.phantom`).
PHANTOM_PATTERNS = {
    "regular": "A-lines: horizontal echoes of the pleura (healthy lung)",
    "covid": "B-lines: vertical comet tails + irregular pleura",
    "pneumonia": "consolidation: dark tissue-like patch with bright air bronchograms",
}


# ----------------------------------------------------------------------------- helpers


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


# ----------------------------------------------------------------------------- census


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


# ----------------------------------------------------------------------------- frames


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


# ----------------------------------------------------------------------------- near-duplicates


def hash_distances(frames: np.ndarray, frame_index: pd.DataFrame, max_pairs: int = 3000,
                   seed: int = 0) -> pd.DataFrame:
    """Hamming distances between 256-bit dHash values of frame pairs, by how the pair is related.

    ``relation`` is "same file" (two frames of one video), "same patient, other file" or
    "other patient"; up to ``max_pairs`` random pairs of each kind.
    """
    _check_columns(frame_index, ["sample_id", "group"])
    if len(frame_index) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(frame_index)} index rows")
    n = len(frames)
    if n < 2:
        return pd.DataFrame(columns=["a", "b", "relation", "distance"])
    bits = np.unpackbits(np.stack([perceptual_hash(f) for f in frames]), axis=1).astype(np.int16)
    sample = np.asarray(frame_index["sample_id"], dtype=str)
    group = np.asarray(frame_index["group"], dtype=str)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size=max_pairs * 20)
    b = rng.integers(0, n, size=max_pairs * 20)
    # same-file and same-patient pairs are rare among random pairs: add them explicitly
    extra_a, extra_b = [], []
    for key in (sample, group):
        order = np.argsort(key, kind="stable")
        same = key[order][1:] == key[order][:-1]
        extra_a.append(order[:-1][same])
        extra_b.append(order[1:][same])
    a = np.concatenate([a, *extra_a])
    b = np.concatenate([b, *extra_b])
    keep = a != b
    a, b = a[keep], b[keep]
    relation = np.where(sample[a] == sample[b], "same file",
                        np.where(group[a] == group[b], "same patient, other file", "other patient"))
    table = pd.DataFrame({"a": a, "b": b, "relation": relation}).drop_duplicates(["a", "b"])
    table = pd.concat([part.sample(min(len(part), max_pairs), random_state=seed)
                       for _, part in table.groupby("relation", sort=True)])
    table["distance"] = np.abs(bits[table["a"].to_numpy()] - bits[table["b"].to_numpy()]).sum(axis=1)
    return table.reset_index(drop=True)


RELATION_COLOURS = {"same file": "tab:red", "same patient, other file": "tab:orange", "other patient": "tab:blue"}


def _near_duplicate_panels(fig, grid, frames: np.ndarray, frame_index: pd.DataFrame, distances: pd.DataFrame,
                           pair) -> None:
    """Top row of :func:`plot_near_duplicates`: the pair's two frames and the closest frame of
    another patient (same class when there is one), with their distances."""
    first, second = int(pair["a"]), int(pair["b"])
    third = _closest_other_patient(frame_index, distances, first)
    bits = {i: perceptual_hash(frames[i]) for i in (first, second, third) if i is not None}

    def distance(i, j):
        return int(np.unpackbits(np.bitwise_xor(bits[i], bits[j])).sum())

    ids = np.asarray(frame_index["sample_id"], dtype=str)
    groups = np.asarray(frame_index["group"], dtype=str)
    times = frame_index["time_s"].to_numpy() if "time_s" in frame_index else np.zeros(len(frame_index))
    videos = np.asarray(frame_index["kind"] == "video") if "kind" in frame_index else np.zeros(len(times), bool)

    def when(i):
        return f"t = {times[i]:.2f} s" if videos[i] else "image"

    panels = [(first, f"{_short(Path(ids[first]).name)}\n{when(first)}"),
              (second, f"{pair['relation']}, {when(second)}\ndistance {distance(first, second)} bits")]
    if third is not None:
        panels.append((third, f"other patient ({_short_tail(groups[third], 16)})\ndistance {distance(first, third)} bits"))
    for col, (index, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(frames[index])
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def _closest_other_patient(frame_index: pd.DataFrame, distances: pd.DataFrame, first: int) -> int | None:
    """The frame of another patient closest to frame ``first`` (same class when possible), else
    any frame of another patient, else None."""
    others = distances[(distances["relation"] == "other patient")
                       & ((distances["a"] == first) | (distances["b"] == first))]
    labels = np.asarray(frame_index["label"], dtype=str)
    same_label = others[[labels[int(x)] == labels[first] for x in np.where(others["a"] == first, others["b"], others["a"])]]
    others = same_label if len(same_label) else others
    if len(others):
        row = others.sort_values("distance").iloc[0]
        return int(row["b"] if row["a"] == first else row["a"])
    group = np.asarray(frame_index["group"], dtype=str)
    candidates = np.nonzero(group != group[first])[0]
    return int(candidates[0]) if len(candidates) else None


def plot_near_duplicates(frames: np.ndarray, frame_index: pd.DataFrame, *, max_distance: int = 12,
                         seed: int = 0, distances: pd.DataFrame | None = None) -> matplotlib.figure.Figure:
    """Two frames of one video, a frame of another patient, and the distance histogram.

    Top: the closest pair of frames of one file next to the closest frame of another patient
    of the same class, with their dHash distances. Bottom: distances of many pairs by
    relation; pairs left of the dashed line are what :func:`covnb.splits.audit_split` calls
    near-identical.
    """
    distances = hash_distances(frames, frame_index, seed=seed) if distances is None else distances
    if distances.empty:
        return _empty_figure("fewer than two frames: nothing to compare")
    fig = plt.figure(figsize=(11, 6.4))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.1, 1])
    close = distances[distances["relation"] == "same file"]
    close = (close if len(close) else distances[distances["relation"] != "other patient"]).sort_values("distance")
    if len(close):
        pair = close.iloc[len(close) // 10]  # a close pair, but not the most extreme one
        _near_duplicate_panels(fig, grid, frames, frame_index, distances, pair)
    ax = fig.add_subplot(grid[1, :])
    top = int(distances["distance"].max()) + 2
    bins = np.arange(0, max(top, max_distance + 4), 2)
    for relation, colour in RELATION_COLOURS.items():
        part = distances.loc[distances["relation"] == relation, "distance"]
        if len(part):
            ax.hist(part, bins=bins, density=True, alpha=0.55, color=colour, label=f"{relation} ({len(part)} pairs)")
    ax.axvline(max_distance + 0.5, color="black", ls="--", lw=1)
    ax.text(max_distance + 1, ax.get_ylim()[1] * 0.9, f"near-identical\n(≤ {max_distance} bits)", fontsize=8, va="top")
    ax.set_xlabel("dHash distance (bits differing out of 256)")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_flagged_pairs(frames: np.ndarray, frame_index: pd.DataFrame, report: AuditReport,
                       limit: int = 3) -> matplotlib.figure.Figure:
    """The near-identical frame pairs an audit found in two folds, side by side."""
    pairs = report.near_duplicate_frames[:limit]
    if not pairs:
        return _empty_figure("no near-identical frame pairs cross folds")
    ids = np.asarray(frame_index["sample_id"], dtype=str)
    if "frame_index" in frame_index:
        ids = np.array([f"{n}#{i}" for n, i in zip(ids, frame_index["frame_index"])])
    row_of = {name: i for i, name in enumerate(ids)}
    groups = np.asarray(frame_index["group"], dtype=str)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(6.4, 3.2 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        for col, (name, fold) in enumerate(((pair["a"], pair["fold_a"]), (pair["b"], pair["fold_b"]))):
            ax = axes[row, col]
            ax.axis("off")
            if name in row_of:
                ax.imshow(frames[row_of[name]])
                ax.set_title(f"{_short(Path(name).name, 30)}\npatient {_short_tail(groups[row_of[name]], 16)}, fold {fold}",
                             fontsize=8)
        axes[row, 0].text(1.04, 0.5, f"{pair['distance']} bits", transform=axes[row, 0].transAxes, ha="left",
                          va="center", fontsize=9, color="firebrick")
    fig.tight_layout()
    return fig


def audit_summary(report: AuditReport) -> dict:
    """Counts from an :class:`covnb.splits.AuditReport`, ready for ``metrics.json``."""
    return {"ok": bool(report.ok), "shared_groups": len(report.shared_groups),
            "identical_files": len(report.identical_files),
            "near_duplicate_frames": len(report.near_duplicate_frames)}


def leak_examples(report: AuditReport, limit: int = 5) -> pd.DataFrame:
    """The first near-identical frame pairs an audit found in two folds, as a table."""
    rows = report.near_duplicate_frames[:limit]
    return pd.DataFrame(rows, columns=["a", "fold_a", "b", "fold_b", "distance"])


def per_fold_groups(frame_index: pd.DataFrame, folds) -> pd.DataFrame:
    """For each patient group: in how many folds its frames land (1 is the only safe answer)."""
    _check_columns(frame_index, ["group"])
    work = frame_index.assign(fold=np.asarray(folds))
    spread = work.groupby("group")["fold"].nunique()
    return spread.value_counts().sort_index().rename_axis("folds_per_patient").rename("patients").to_frame()


# ----------------------------------------------------------------------------- phantom


def plot_phantom_patterns(size: int = 192, seed: int = 0, classes=("regular", "covid", "pneumonia")
                          ) -> matplotlib.figure.Figure:
    """One synthetic frame per class from :func:`covnb.phantom.make_clip`, captioned by its pattern.

    The drawings follow the lung-ultrasound signs of Lichtenstein (2014) and Soldati et al.
    (2020); they are synthetic and only teach what to look for.
    """
    fig, axes = plt.subplots(1, len(classes), figsize=(3.6 * len(classes), 4.1), squeeze=False)
    for ax, label in zip(axes[0], classes):
        clip = make_clip(label, np.random.default_rng(seed), n_frames=1, size=size)
        ax.imshow(clip[0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label}\n" + textwrap.fill(PHANTOM_PATTERNS.get(label, ""), 34), fontsize=9.5)
        ax.axis("off")
    fig.tight_layout()
    fig.suptitle("SYNTHETIC phantom drawings (not patients)", fontsize=11, color="firebrick", y=1.03)
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
