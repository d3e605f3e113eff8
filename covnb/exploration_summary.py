"""Notebook 01's numbers and sentences: the shortcut audit read aloud, and ``metrics.json``.

The sentences are written from the computed tables, so they say what *this* run shows (the
shortcut audit after Geirhos et al., Nature Machine Intelligence 2020; DeGrave et al. 2021).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covnb.audit import cam_heat, heat_summary, probe_treatments
from covnb.datasets import TASKS
from covnb.explore import audit_summary, canonical_gallery, sampling_summary
from covnb.train import fit_final_model, mirror_is_plausible, recipe_config

__all__ = ["source_probe_summary", "heat_summary_text", "largest_sources", "gallery_summary", "exploration_metrics",
           "summary_markdown", "data_markdown", "census_columns", "intensity_medians", "distance_quartiles",
           "wrong_split_text", "patient_split_text", "gallery_of", "source_probe", "cam_heat_audit", "mixed_patients_notes",
           "sampling_overview"]

#: Metadata columns the census shows when they vary (besides the label).
CENSUS_COLUMNS = ("kind", "probe", "modality", "source", "licence")


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


def data_markdown(dataset, samples: pd.DataFrame, task_name: str, *, synthetic: bool) -> str:
    """One paragraph: where the files come from, how many of each kind and patient, what the task keeps."""
    kinds = dataset.samples["kind"].value_counts().to_dict()
    return (f"**{'SYNTHETIC phantom' if synthetic else dataset.root.name}**: {len(dataset.samples)} files "
            f"({kinds.get('video', 0)} videos, {kinds.get('image', 0)} images) from "
            f"{dataset.samples['group'].nunique()} patients, layout `{dataset.layout}`. "
            f"Task `{task_name}` ({TASKS[task_name]}) keeps {len(samples)} files with labels "
            f"{', '.join(sorted(samples['label'].unique()))}.")


def census_columns(files: pd.DataFrame) -> list[str]:
    """``label`` and the metadata columns of :data:`CENSUS_COLUMNS` that take more than one value in ``files``."""
    return ["label"] + [column for column in CENSUS_COLUMNS if column in files and files[column].nunique() > 1]


def intensity_medians(intensity: pd.DataFrame) -> pd.DataFrame:
    """Per label, the median brightness, contrast and black share of :func:`covnb.explore.intensity_table` (2 digits)."""
    return intensity.groupby("label")[["mean", "std", "black_share"]].median().round(2).rename(
        columns={"mean": "median brightness", "std": "median contrast", "black_share": "median black share"})


def distance_quartiles(distances: pd.DataFrame) -> pd.DataFrame:
    """Count and quartiles of the hash distance per relation (same video, same patient, ...), 1 digit."""
    return distances.groupby("relation")["distance"].describe()[["count", "25%", "50%", "75%"]].round(1)


def wrong_split_text(frame_index: pd.DataFrame, audit) -> str:
    """The heading of the per-fold table of the frame-level split, after a note when there are no videos."""
    text = "**How many folds each patient's frames land in** (only 1 is safe):"
    if (frame_index["kind"] == "video").any():
        return text
    return ("No videos here, so a split by frame is a split by image: the leak comes from patients with "
            f"several images, {len(audit.shared_groups)} of whom land in more than one fold.\n\n" + text)


def patient_split_text(audit) -> str:
    """What the audit of the patient-level split says: it passes, or how to read what it still flags."""
    if audit.ok:
        return "The patient-level split passes: no patient, file or near-identical frame is in two folds."
    return ("The audit still flags something. Patients are separated, so each flagged pair belongs to two *different* "
            "patient IDs: either one patient under two IDs in the metadata (worth fixing), or two look-alike frames "
            "near the 12-bit threshold (small images make this likelier). Look at them before trusting the split:")


def gallery_of(samples: pd.DataFrame, *, n_files: int | None, seed: int, rate_hz: float, max_frames: int):
    """:func:`covnb.explore.canonical_gallery` (crop + inpaint) of ``n_files`` random files (all when None),
    at most 10 frames each; ``(figure, table)``."""
    chosen = samples if n_files is None else samples.sample(min(len(samples), n_files), random_state=seed)
    return canonical_gallery(chosen.sort_values("path"), mode="crop+inpaint", rate_hz=rate_hz,
                             max_frames=min(max_frames, 10))


def source_probe(samples: pd.DataFrame, *, settings, seed: int, min_patients: int = 3) -> tuple:
    """The linear source probe of :func:`covnb.audit.probe_treatments` when at least two sources have
    ``min_patients`` patients: ``(table treatment x scope or None, all-classes rows or None, stored, text)``;
    ``stored`` is ``{"source_probe": None}`` and ``text`` says why when it is not run."""
    patients_per_source = samples.groupby("source")["group"].nunique()
    enough = int((patients_per_source >= min_patients).sum())
    if enough < 2:
        return None, None, {"source_probe": None}, (
            f"Only {enough} source(s) with at least {min_patients} patients "
            f"({', '.join(map(str, patients_per_source.index))}): the source probe needs two, so it is not run.")
    probe = probe_treatments(samples, base_settings=settings, seed=seed)
    table = probe.pivot_table(index="treatment", columns="scope", values="balanced_accuracy", sort=False)
    overall, stored, text = source_probe_summary(probe)
    return table, overall, stored, text


def cam_heat_audit(frame_set, samples: pd.DataFrame, *, image_size: int, seed: int, frames_per_video: int = 3) -> tuple:
    """Fit the default recipe on all of ``frame_set`` and measure where its Grad-CAM heat lies
    (:func:`covnb.audit.cam_heat`): ``(by class, by source, stored, text)`` as :func:`heat_summary_text`."""
    classes = sorted(frame_set.index["label"].unique())
    config = recipe_config("default", image_size=int(image_size), seed=int(seed),
                           mirror_view=mirror_is_plausible(samples))
    model, _ = fit_final_model(frame_set, config, classes, log=None)
    heat = cam_heat(model, frame_set, classes, samples=samples, frames_per_video=frames_per_video)
    by_class, by_source = heat_summary(heat, "label"), heat_summary(heat, "source")
    return (by_class, by_source, *heat_summary_text(heat, by_class, by_source))


def mixed_patients_notes(samples: pd.DataFrame) -> list[str]:
    """A line when some patients have files of more than one label (they count in several classes)."""
    mixed = int((samples.groupby("group")["label"].nunique() > 1).sum())
    return [f"{mixed} patient(s) have files of more than one label, so they count in several classes."] if mixed else []


def sampling_overview(samples: pd.DataFrame, frame_index: pd.DataFrame):
    """:func:`covnb.explore.sampling_summary` when there are videos, else a Markdown note (one frame per image)."""
    from IPython.display import Markdown

    if (samples["kind"] == "video").any():
        return sampling_summary(samples, frame_index)
    return Markdown("**No videos in this data set**: every file is a single image and gives exactly one frame.")
