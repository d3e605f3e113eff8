"""Notebook 01's numbers and sentences: the shortcut audit read aloud, and ``metrics.json``.

The sentences are written from the computed tables, so they say what *this* run shows (the
shortcut audit after Geirhos et al., Nature Machine Intelligence 2020; DeGrave et al. 2021).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["source_probe_summary", "heat_summary_text", "largest_sources", "gallery_summary", "exploration_metrics",
           "summary_markdown"]


def source_probe_summary(probe: pd.DataFrame) -> tuple[pd.DataFrame, dict, str]:
    """From :func:`covnb.audit.probe_treatments`: the all-classes rows by treatment, what
    ``metrics.json`` keeps (``source_probe``, ``source_probe_chance``) and one paragraph."""
    overall = probe[probe["scope"] == "all classes"].set_index("treatment")
    stored = {"source_probe": {str(name): round(float(value), 3) for name, value in overall["balanced_accuracy"].items()},
              "source_probe_chance": round(float(overall["chance"].iloc[0]), 3)}
    untreated, best = overall.loc["none"], overall["balanced_accuracy"].idxmin()
    text = (f"Untreated, the probe names the source of a video with balanced accuracy "
            f"**{untreated['balanced_accuracy']:.2f}** against chance {untreated['chance']:.2f} "
            f"({int(untreated['n_sources'])} sources, {int(untreated['n_videos'])} videos). "
            + "; ".join(f"{name}: {value:.2f}" for name, value in overall["balanced_accuracy"].items() if name != "none")
            + f". The lowest is **{best}**; "
            + ("no treatment brings it near chance: much of what tells sources apart lies inside the image itself "
               "(gain, depth, device, patients) or in what the class does to it."
               if overall["balanced_accuracy"].min() > 2 * untreated["chance"] else "it comes near chance."))
    return overall, stored, text


def heat_summary_text(heat: pd.DataFrame, by_class: pd.DataFrame, by_source: pd.DataFrame) -> tuple[dict, str]:
    """What ``metrics.json`` keeps of the CAM heat audit (``heat_inside``, ``heat_inside_by_source``) and one sentence."""
    stored = {"heat_inside": {str(k): round(float(v), 3) for k, v in by_class["heat_inside"].items()},
              "heat_inside_by_source": {str(k): round(float(v), 3) for k, v in by_source["heat_inside"].items()}}
    least = by_class["heat_inside"].idxmin()
    text = (f"On average **{heat['inside'].mean():.0%}** of the heat lies inside the ultrasound image, which covers "
            f"{heat['region_share'].mean():.0%} of the frame. The class with the most heat outside the image is "
            f"**{least}** ({by_class.loc[least, 'heat_outside']:.0%} outside)"
            + (f"; by source, from {by_source['heat_outside'].min():.0%} to "
               f"{by_source['heat_outside'].max():.0%} outside." if len(by_source) > 1 else "."))
    return stored, text


def _counts(series: pd.Series) -> dict:
    return {str(k): int(v) for k, v in series.items()}


def exploration_metrics(*, dataset, samples: pd.DataFrame, frame_set, synthetic: bool, task_name: str, settings, seed: int,
                        n_folds: int, distances: pd.DataFrame, wrong_audit, right_audit, sample_folds,
                        shortcut_metrics: dict, figures: list, runtime_s: float) -> dict:
    """Notebook 01's ``metrics.json``: data, frames, hash distances, both split audits, the shortcut audit."""
    from covnb.explore import audit_summary

    index = frame_set.index
    return {
        "data_path": None if synthetic else str(dataset.root),
        "synthetic": bool(synthetic),
        "layout": dataset.layout,
        "task": task_name,
        "settings": {"image_size": int(settings.image_size), "rate_hz": float(settings.rate_hz),
                     "max_frames": int(settings.max_frames), "seed": int(seed), "n_folds": int(n_folds)},
        "files_total": int(len(dataset.samples)),
        "samples": int(len(samples)),
        "groups": int(samples["group"].nunique()),
        "by_label": _counts(samples["label"].value_counts().sort_index()),
        "groups_by_label": _counts(samples.groupby("label")["group"].nunique()),
        "by_label_all_files": dataset.summary()["by_label"],
        "videos": int((samples["kind"] == "video").sum()),
        "images": int((samples["kind"] == "image").sum()),
        "frames": int(len(frame_set.frames)),
        "frames_by_label": _counts(index["label"].value_counts().sort_index()),
        "skipped": int(len(dataset.skipped) + len(frame_set.skipped)),
        "median_hash_distance": {str(k): float(v) for k, v in distances.groupby("relation")["distance"].median().items()},
        "audit_frame_level_split": audit_summary(wrong_audit),
        "audit_patient_split": audit_summary(right_audit),
        "fold_sizes": _counts(pd.Series(sample_folds).value_counts().sort_index()),
        "shortcut_audit": shortcut_metrics,
        "figures": list(figures),
        "runtime_s": round(runtime_s, 1),
    }


def summary_markdown(metrics: dict, out: Path) -> str:
    """The closing bullet list of notebook 01, from its metrics."""
    wrong, right = metrics["audit_frame_level_split"], metrics["audit_patient_split"]
    by_label = ", ".join(f"{k} {v} files / {metrics['groups_by_label'][k]} patients"
                         for k, v in metrics["by_label"].items())
    capped = " (the audit stops counting at 1000)" if wrong["near_duplicate_frames"] >= 1000 else ""
    right_text = ("passes the audit" if right["ok"] else f"{right['shared_groups']} shared patients, "
                  f"{right['near_duplicate_frames']} near-identical pairs to inspect")
    return (f"\n* **Data**: {'SYNTHETIC phantom, ' if metrics['synthetic'] else ''}{metrics['samples']} files from "
            f"{metrics['groups']} patients\n  for task `{metrics['task']}`: {by_label}.\n"
            f"* **Frames**: {metrics['frames']} at {metrics['settings']['image_size']} px ({metrics['videos']} videos, "
            f"{metrics['images']} images); {metrics['skipped']} file(s) skipped.\n"
            f"* **Wrong split (by frame)**: {wrong['shared_groups']} patients in several folds, "
            f"{wrong['near_duplicate_frames']} near-identical frame pairs across folds{capped}.\n"
            f"* **Right split (by patient)**: {right_text}.\n"
            f"* Written to `{out}`: `metrics.json` and {len(metrics['figures'])} figures.\n\n"
            "Next: notebook 02 trains a classifier on these patient-level folds.\n")



def largest_sources(source_table: pd.DataFrame) -> tuple[dict, str]:
    """From :func:`covnb.audit.source_class_table`: each class's largest source's share (kept in
    ``metrics.json`` as ``largest_source_share``) and one sentence."""
    by_class = source_table.drop(index="total").drop(columns="total")
    top_source, top_share = by_class.idxmax(), by_class.max() / by_class.sum()
    text = f"**{len(by_class)} source(s).** Largest source of each class: " + "; ".join(
        f"{label}: source {top_source[label]} sends {int(by_class.loc[top_source[label], label])} of "
        f"{int(by_class[label].sum())} files ({top_share[label]:.0%})" for label in by_class.columns) + "."
    return {str(k): round(float(v), 3) for k, v in top_share.items()}, text


def gallery_summary(gallery_table: pd.DataFrame) -> tuple[dict, str]:
    """From :func:`covnb.canonical.canonical_gallery`: how each file's region was found (kept as
    ``canonical_gallery``) and one sentence."""
    methods = gallery_table["method"].value_counts()
    stored = {"files": int(len(gallery_table)), "methods": {str(k): int(v) for k, v in methods.items()},
              "median_region_share": round(float(gallery_table["share"].median()), 3)}
    text = (f"Of {len(gallery_table)} files, the region came from motion in {int(methods.get('motion', 0))}, from the "
            f"backdrop of a still in {int(methods.get('still', 0))}, and in {int(methods.get('whole', 0))} nothing was "
            f"found (the whole frame is kept). The image covers a median {gallery_table['share'].median():.0%} of "
            "the frame.")
    return stored, text
