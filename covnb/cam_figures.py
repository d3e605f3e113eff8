"""Notebook 04's CAM figures and choices: which frames to show, galleries, heat inside the sector.

Heatmaps come from :func:`covnb.cam.explain` (Grad-CAM, Selvaraju et al. ICCV 2017; Grad-CAM++,
Chattopadhay et al. WACV 2018; CAM, Zhou et al. CVPR 2016); this module picks frames and draws.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from covnb import cam

__all__ = ["short_name", "most_confident", "plot_gallery", "plot_heat_inside_sector", "plot_method_agreement",
           "plot_methods_side_by_side", "explorer_samples", "median_or_none", "explain_all", "heat_statistics",
           "agreement_medians", "summary_markdown", "prediction_table", "exercise_explorer", "frame_accuracy",
           "confusion_counts", "peak_box", "plot_peaks_over_mean_frame", "heat_inside_example", "inside_summary",
           "agreement_tables", "same_map_note", "set_explorer_view", "cam_metrics", "timing_line", "accuracy_line"]


def short_name(sample_id, width: int = 24) -> str:
    """The file name of a sample, shortened for titles."""
    text = Path(str(sample_id)).name
    return text if len(text) <= width else text[: width - 1] + "…"


def most_confident(table: pd.DataFrame, probs: np.ndarray, class_index: int, count: int, *, class_names,
                   labelled: bool = True) -> np.ndarray:
    """Positions of the best frame of each file for ``class_index`` (its own files when ``labelled``),
    most confident first, one file per patient before a second one."""
    candidates = table.assign(position=np.arange(len(table)), score=probs[:, class_index])
    if labelled:
        own = candidates[candidates["label"].astype(str) == class_names[class_index]]
        candidates = own if len(own) else candidates
    best = candidates.sort_values("score", ascending=False, kind="stable").drop_duplicates("sample_id")
    one_per_patient = best.drop_duplicates("group")
    return pd.concat([one_per_patient, best.drop(one_per_patient.index)])["position"].to_numpy()[:count]


def plot_gallery(model, frames, table, probs, *, class_names, n_gallery: int, method: str, layer, threshold: float,
                 labelled: bool, title: str):
    """Heatmaps of the most confident frames per class (rows). Returns ``(figure, class -> sample ids)``."""
    fig, axes = plt.subplots(len(class_names), n_gallery, figsize=(2.6 * n_gallery, 2.8 * len(class_names)),
                             squeeze=False)
    gallery = {}
    for row, name in enumerate(class_names):
        positions = most_confident(table, probs, row, n_gallery, class_names=class_names, labelled=labelled)
        gallery[name] = [str(table["sample_id"].iloc[p]) for p in positions]
        if len(positions):
            result = cam.explain(model, frames[positions], method=method, class_index=row, layer=layer)
        for col in range(n_gallery):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(positions):
                continue
            p = positions[col]
            ax.imshow(cam.overlay(frames[p], result.heatmaps[col], alpha=0.4, threshold=threshold or None))
            ax.set_title(f"{short_name(table['sample_id'].iloc[p])}\nframe {table['frame_index'].iloc[p]}, "
                         f"p({name})={probs[p, row]:.2f}", fontsize=8)
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=12, fontweight="bold")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig, gallery


def plot_heat_inside_sector(frames, index, example: int, heatmap, *, peaks: pd.DataFrame, method: str):
    """One frame's sector and heatmap, and per class the fraction of heat inside the sector.

    Returns ``(figure, heat inside on the example, median sector share of a frame)``.
    """
    example_frames = frames[(index["sample_id"] == index["sample_id"].iloc[example]).to_numpy()]
    mask = cam.sector_mask(example_frames)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), width_ratios=[1, 1, 1.6])
    axes[0].imshow(frames[example])
    axes[0].contour(mask, levels=[0.5], colors="lime", linewidths=1.5)
    axes[0].set_title("ultrasound sector (green)", fontsize=10)
    axes[1].imshow(cam.overlay(frames[example], heatmap, alpha=0.45))
    axes[1].contour(mask, levels=[0.5], colors="lime", linewidths=1.5)
    inside = cam.heat_inside_fraction(heatmap, mask)
    axes[1].set_title(f"{method}: {inside:.0%} of the heat inside", fontsize=10)
    for ax in axes[:2]:
        ax.axis("off")
    sector_share = float(np.median([cam.sector_mask(frame).mean() for frame in frames]))
    sns.boxplot(data=peaks, x="class", y="inside", hue="method", ax=axes[2], fliersize=2)
    axes[2].axhline(sector_share, color="grey", linestyle="--", linewidth=1)
    axes[2].text(-0.45, sector_share + 0.02, f"uniform heat: {sector_share:.2f}", fontsize=8, color="grey")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_xlabel("predicted class")
    axes[2].set_ylabel("fraction of heat inside the sector")
    axes[2].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig, inside, sector_share


def plot_method_agreement(agreement: pd.DataFrame):
    """Box plots per method pair: correlation of the maps, peak distance, IoU of the top 20 %."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, column, title in zip(axes, ("correlation", "peak_distance", "top_iou"),
                                 ("correlation of the maps", "peak distance (x diagonal)", "IoU of the top 20 %")):
        sns.boxplot(data=agreement, x="pair", y=column, ax=ax, fliersize=2, hue="pair", legend=False)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.tight_layout()
    return fig


def plot_methods_side_by_side(frames, results: dict, agreement: pd.DataFrame, table, *, class_names, predicted,
                              box: int, threshold: float):
    """The frames with the most, typical and least agreement between methods, every method's map beside them."""
    # An empty (constant) map has no correlation: such frames count as the least agreement.
    per_frame = agreement.groupby("frame")["correlation"].mean().fillna(-2.0).sort_values()
    picks = {"most agreement": int(per_frame.index[-1]), "typical": int(per_frame.index[len(per_frame) // 2]),
             "least agreement": int(per_frame.index[0])}
    names = list(results)
    fig, axes = plt.subplots(len(picks), 1 + len(names), figsize=(2.7 * (1 + len(names)), 2.9 * len(picks)),
                             squeeze=False)
    for row, (title, position) in enumerate(picks.items()):
        axes[row, 0].imshow(frames[position])
        r_text = "an empty map" if per_frame[position] < -1 else f"r={per_frame[position]:.2f}"
        axes[row, 0].set_title(f"{title}\n{short_name(table['sample_id'].iloc[position])} ({r_text})", fontsize=8)
        for col, name in enumerate(names, start=1):
            heat = results[name].heatmaps[position]
            axes[row, col].imshow(cam.overlay(frames[position], heat, alpha=0.45, threshold=threshold or None))
            x, y = cam.heatmap_peak(heat, box=box, frame_size=frames.shape[1:3])
            axes[row, col].plot(x, y, marker="x", color="white", markersize=9, markeredgewidth=2)
            axes[row, col].set_title(f"{name} ({results[name].layer})\nfor {class_names[predicted[position]]}",
                                     fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def explorer_samples(table, probs, frames, *, class_names, labelled: bool = True) -> dict:
    """Per class, the file (a video when there is one) with the highest mean probability: ``"class: file" -> frames``."""
    by_sample = table.assign(position=np.arange(len(table)))
    chosen = {}
    for k, name in enumerate(class_names):
        candidates = by_sample[by_sample["label"].astype(str) == name] if labelled else by_sample
        videos = candidates[candidates["kind"] == "video"]
        candidates = videos if len(videos) else candidates  # videos first: there is a timeline to explore
        if not len(candidates):
            continue
        means = candidates.groupby("sample_id")["position"].apply(lambda rows: probs[rows.to_numpy(), k].mean())
        best = means.idxmax()
        chosen[f"{name}: {short_name(best, 40)}"] = frames[by_sample.loc[by_sample["sample_id"] == best,
                                                                          "position"].to_numpy()]
    if not chosen:
        raise ValueError("no file to show in the explorer")
    return chosen


def median_or_none(values, digits: int = 4):
    """The median of the finite values, rounded, or None when there is none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return round(float(np.median(finite)), digits) if len(finite) else None


def explain_all(model, frames, index, class_names, *, methods, class_index, layer=None, box: int = 19) -> tuple:
    """Every method's heatmaps of every frame (for ``class_index``) and their peaks.

    Returns ``(method -> CamResult, peaks of all methods, timings)``; the first call of each
    method compiles it and is not timed.
    """
    import time

    results, tables, timings = {}, [], {}
    for name in methods:
        name_layer = None if name == "cam" else layer
        cam.explain(model, frames[:1], method=name, layer=name_layer)  # compile once, untimed
        clock = time.perf_counter()
        results[name] = cam.explain(model, frames, method=name, class_index=class_index, layer=name_layer,
                                    batch_size=16)
        seconds = time.perf_counter() - clock
        timings[f"heatmaps_{name}_s"] = round(seconds, 2)
        timings[f"heatmaps_{name}_ms_per_frame"] = round(1000 * seconds / len(frames), 2)
        peaks = cam.cam_peaks(None, frames, index=index, class_names=class_names, box=box, result=results[name])
        tables.append(peaks.assign(method=name))
    return results, pd.concat(tables, ignore_index=True), timings


def heat_statistics(peaks: pd.DataFrame, method: str, methods) -> dict:
    """Median heat inside the sector per method and class and overall, and the mean peak per class of ``method``."""
    return {
        "heat_inside_median": {name: {str(c): median_or_none(group["inside"])
                                      for c, group in peaks[peaks["method"] == name].groupby("class")}
                               for name in methods},
        "heat_inside_overall_median": {name: median_or_none(peaks.loc[peaks["method"] == name, "inside"])
                                       for name in methods},
        "peak_mean_by_class": {str(c): {"x": round(float(g["peak_x"].mean()), 4), "y": round(float(g["peak_y"].mean()), 4)}
                               for c, g in peaks[peaks["method"] == method].groupby("class")},
    }


def agreement_medians(summary: pd.DataFrame) -> dict:
    """pair -> metric -> median (None when undefined), from the per-pair median table."""
    return {pair: {k: (None if pd.isna(v) else round(float(v), 4)) for k, v in row.items()}
            for pair, row in summary.iterrows()}


def summary_markdown(metrics: dict, out) -> str:
    """The closing bullet list of notebook 04, from its metrics."""
    model, settings, explorer = metrics["model"], metrics["settings"], metrics["explorer"]
    inside = ", ".join(f"{m} {v:.0%}" for m, v in metrics["heat_inside_overall_median"].items() if v is not None)
    agree = "; ".join(f"{pair}: r {row['correlation']}, IoU {row['top_iou']}"
                      for pair, row in metrics["agreement_median"].items())
    return (f"\n* **Model**: {model['source']}, {model['image_size']} px, classes {', '.join(model['classes'])}.\n"
            f"* **Data**: {'SYNTHETIC phantom, ' if metrics['synthetic'] else ''}{metrics['samples']} files, "
            f"{metrics['frames']} frames; frame accuracy {metrics['frame_accuracy']}"
            f"{' (on its own training frames)' if model['quick_demo'] else ''}.\n"
            f"* **Heat inside the ultrasound sector** (median over frames): {inside}; "
            f"{metrics['frames_mostly_outside_sector']} frames put most of their {settings['method']} heat outside it.\n"
            f"* **Agreement** (median): {agree or 'one method only'}.\n"
            f"* **Explorer**: cached redraw {explorer['cached_redraw_ms']} ms, new frame "
            f"{explorer['new_frame_heatmap_ms']} ms for the heatmap.\n"
            f"* Written to `{out}`: `metrics.json`, `cam_peaks.csv` and {len(metrics['figures'])} figures.\n")


def prediction_table(index: pd.DataFrame, probs: np.ndarray, class_names) -> pd.DataFrame:
    """One row per frame: sample, patient, label, frame, kind, predicted class and every class's probability."""
    table = index[["sample_id", "group", "label", "frame_index", "kind"]].copy()
    table["predicted"] = np.asarray(class_names)[probs.argmax(axis=1)]
    for k, name in enumerate(class_names):
        table[f"prob_{name}"] = probs[:, k]
    return table


def exercise_explorer(explorer) -> tuple[dict, Path]:
    """Move the explorer as a user would: a new opacity (a cached redraw), then the next frame (a new
    heatmap); return its timings in ms (what each step cost on this machine) and the PNG it saved."""
    explorer.opacity_slider.value = 0.6  # a cached redraw
    timings = {"cached_redraw_ms": round(explorer.timings["overlay"], 1)}
    explorer.frame_slider.value = (explorer.frame + 1) % (explorer.frame_slider.max + 1)  # a new frame
    timings.update({"new_frame_heatmap_ms": round(explorer.timings["heatmap"], 1),
                    "new_frame_overlay_ms": round(explorer.timings["overlay"], 1),
                    "plot_ms": round(explorer.timings["plot"], 1)})
    return timings, explorer.save_png()


def frame_accuracy(table: pd.DataFrame, known: np.ndarray) -> float:
    """Share of frames (among those with a label the model knows) whose predicted class is the label; NaN without any."""
    if not known.any():
        return float("nan")
    return float((table["predicted"] == table["label"].astype(str))[known].mean())


def confusion_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Frames counted by true label (rows) and predicted class (columns)."""
    return pd.crosstab(table["label"], table["predicted"], rownames=["true"], colnames=["predicted"])


def peak_box(image_size: int) -> int:
    """The box filter before the heatmap peak: 19 px at 224 px as POCOVID-Net, scaled, odd, at least 1."""
    return max(1, int(round(19 * image_size / 224)) | 1)


def plot_peaks_over_mean_frame(frames: np.ndarray, peaks: pd.DataFrame, method: str):
    """:func:`covnb.cam.plot_peak_scatter` of ``method``'s peaks by predicted class over the mean frame."""
    return cam.plot_peak_scatter(peaks[peaks["method"] == method], hue="class",
                                 background=frames.astype(np.float32).mean(axis=0),
                                 title=f"Peaks of {method} heatmaps by predicted class (over the mean frame)")


def heat_inside_example(frames, index, *, table: pd.DataFrame, probs, results: dict, peaks: pd.DataFrame, method: str,
                        class_names, labelled: bool = True) -> tuple:
    """:func:`plot_heat_inside_sector` on the frame the model is surest is of the first class (frame 0
    when there is none): ``(figure, inside fraction of that frame, median sector share)``."""
    best = most_confident(table, probs, 0, 1, class_names=class_names, labelled=labelled)
    example = int(best[0]) if len(best) else 0
    return plot_heat_inside_sector(frames, index, example, results[method].heatmaps[example], peaks=peaks,
                                   method=method)


def inside_summary(peaks: pd.DataFrame) -> pd.DataFrame:
    """Median inside fraction per predicted class (rows) and method (columns)."""
    return peaks.pivot_table(index="class", columns="method", values="inside", aggfunc="median").rename_axis(
        columns="median inside fraction")


def agreement_tables(results: dict, frame_size, *, box: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`covnb.cam.method_agreement` of every pair of methods (with a ``pair`` column) and its
    per-pair medians; two empty tables with fewer than two methods."""
    if len(results) < 2:
        return pd.DataFrame(), pd.DataFrame()
    agreement = cam.method_agreement(results, frame_size, box=box)
    agreement["pair"] = agreement["method_a"] + " vs " + agreement["method_b"]
    summary = agreement.groupby("pair", sort=False)[["correlation", "peak_distance", "top_iou"]].median()
    return agreement, summary.rename_axis(columns="median over frames")


def same_map_note(results: dict) -> list[str]:
    """The largest Grad-CAM vs CAM difference when both explain the same layer (they give the same map)."""
    if not {"gradcam", "cam"} <= set(results) or results["gradcam"].layer != results["cam"].layer:
        return []
    difference = float(np.abs(results["gradcam"].heatmaps - results["cam"].heatmaps).max())
    return [f"Grad-CAM vs CAM on '{results['cam'].layer}': largest difference {difference:.2e} (the same map, "
            "as expected)"]


def set_explorer_view(explorer, *, method: str, layer: str, threshold: float, class_names, labelled: bool) -> None:
    """Put the explorer on ``method``, ``layer`` (added to its menu when missing; not for CAM) and the
    threshold (to its 0.05 steps, at most 0.95), at the most confident frame of its first sample's class."""
    explorer.method_dropdown.value = method
    if method != "cam":
        if layer not in explorer.layer_dropdown.options:
            explorer.layer_dropdown.options = list(explorer.layer_dropdown.options) + [layer]
        explorer.layer_dropdown.value = layer
    explorer.threshold_slider.value = min(round(threshold / 0.05) * 0.05, 0.95)
    first = class_names.index(next(iter(explorer.samples)).split(":")[0]) if labelled else 0
    explorer.jump_to_class(first)


def cam_metrics(*, dataset, synthetic: bool, task_name: str, model_info: dict, settings: dict, table: pd.DataFrame,
                n_frames: int, accuracy: float, gallery: dict, peaks: pd.DataFrame, method: str, methods,
                n_outside: int, sector_share: float, agreement_summary: pd.DataFrame, explorer_samples,
                explorer_ms: dict, timings: dict, figures, runtime_s: float) -> dict:
    """Notebook 04's ``metrics.json``: data, model, settings, accuracy, galleries, heat statistics
    (:func:`heat_statistics`), agreement medians, the explorer's samples and timings."""
    return {
        "data_path": None if synthetic else str(dataset.root),
        "synthetic": bool(synthetic),
        "task": task_name,
        "model": model_info,
        "settings": settings,
        "samples": int(table["sample_id"].nunique()),
        "frames": int(n_frames),
        "frame_accuracy": None if np.isnan(accuracy) else round(accuracy, 4),
        "gallery": gallery,
        **heat_statistics(peaks, method, methods),
        "frames_mostly_outside_sector": int(n_outside),
        "sector_share_of_frame_median": round(sector_share, 4),
        "agreement_median": agreement_medians(agreement_summary),
        "explorer": {"samples": list(explorer_samples), **explorer_ms},
        "timings": timings,
        "figures": list(figures),
        "runtime_s": round(runtime_s, 1),
    }


def timing_line(timings: dict, methods, n_frames: int, box: int) -> str:
    """How long each method took per frame (from :func:`explain_all`'s timings) and the box filter used."""
    per_frame = ", ".join(f"{m} {timings[f'heatmaps_{m}_ms_per_frame']:.0f} ms" for m in methods)
    return f"{n_frames} frames explained ({per_frame} per frame); box filter {box} px"


def accuracy_line(accuracy: float, *, quick_demo: bool) -> str:
    """The frame accuracy, flagged as optimistic for the demo model (trained on these very frames)."""
    return (f"Frame accuracy on these frames: {accuracy:.2f}"
            + (" (the demo model was trained on them: an optimistic number)" if quick_demo else ""))
