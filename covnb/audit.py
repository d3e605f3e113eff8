"""Shortcut audit: can a model tell the class from the source instead of the lung?

A patient-grouped split keeps patients apart but lets every source (hospital, web site, paper,
device) sit on both sides; when a source sends mostly one class, a model can score well by
recognising the source (shortcut learning, Geirhos et al., Nature Machine Intelligence 2020;
for COVID-19 images DeGrave et al., Nature Machine Intelligence 2021, and Roberts et al.,
Nature Machine Intelligence 2021). Three measurements:

1. :func:`source_class_table`: files per source and class.
2. :func:`source_probe`: how much the frozen backbone features know about the source. A
   logistic regression predicts ``source`` from each video's mean frozen feature (the default
   recipe's pooled mid-level features), patient-grouped stratified CV; balanced accuracy against
   chance (1 / number of sources). Run once per input treatment (:data:`TREATMENTS`: none, the
   sector mask, the canonical crop, crop + inpaint; :mod:`covnb.canonical`). Within each class
   that has several sources the same probe says how much source signal is there beyond the class.
3. :func:`cam_heat`: how much of a model's class evidence lies outside the ultrasound image:
   the fraction of Grad-CAM heat (Selvaraju et al., ICCV 2017) inside the region found by
   :func:`covnb.canonical.ultrasound_region`, next to the region's share of the frame (what
   evenly spread heat would give), per class and per source.

``covnb audit DATA [--model MODEL] [--json]`` prints all three (:func:`run_audit`, :func:`cmd_audit`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Callable

import numpy as np
import pandas as pd

from covnb.cam import explain, heat_inside_fraction
from covnb.canonical import ultrasound_region
from covnb.datasets import Dataset, default_task, load_dataset, select_task
from covnb.frames import FrameSettings, extract_frames, frame_settings_from_metadata
from covnb.models import load_model
from covnb.train import compute_features, fit_final_model, mirror_is_plausible, recipe_config

__all__ = [
    "TREATMENTS",
    "source_class_table",
    "video_features",
    "source_probe",
    "probe_treatments",
    "cam_heat",
    "heat_summary",
    "run_audit",
    "format_audit",
    "cmd_audit",
]

#: Input treatments compared by the source probe: FrameSettings fields set for each.
TREATMENTS: dict[str, dict] = {
    "none": {},
    "sector mask": {"mask_sector": True},
    "canonical crop": {"canonical": "crop"},
    "crop+inpaint": {"canonical": "crop+inpaint"},
}


def source_class_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Files per source (rows) and class (columns), with totals; largest sources first."""
    table = pd.crosstab(samples["source"].astype(str), samples["label"].astype(str))
    table = table.loc[table.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name, table.columns.name = "source", "label"
    return table


def _feature_config(image_size: int, backbone: str = "efficientnet_lite0", weights="imagenet", seed: int = 0):
    return recipe_config("default", backbone=backbone, weights=weights, image_size=int(image_size), mirror_view=False,
                         seed=seed)


def video_features(frameset, config=None) -> tuple[np.ndarray, pd.DataFrame]:
    """Mean frozen feature of every video of a FrameSet: ``(features (V, D), videos table)``.

    ``config``: a :class:`covnb.train.TrainConfig` (default: the default recipe's backbone and
    pooled mid-level features, clean view only). The table has ``sample_id``, ``group``, ``label``.
    """
    config = config or _feature_config(frameset.settings.image_size)
    features = compute_features(frameset.frames, config, cut="head", views=0, log=None)[0]
    index = frameset.index.reset_index(drop=True)
    codes, videos = pd.factorize(index["sample_id"], sort=True)
    sums = np.zeros((len(videos), features.shape[1]))
    np.add.at(sums, codes, features.astype(np.float64))
    means = sums / np.bincount(codes)[:, None]
    table = index.drop_duplicates("sample_id").set_index("sample_id").loc[list(videos), ["group", "label"]]
    return means.astype(np.float32), table.reset_index()


def source_probe(features: np.ndarray, videos: pd.DataFrame, *, target: str = "source", n_splits: int = 5,
                 seed: int = 0, min_patients: int = 3, C: float = 0.1) -> dict:
    """Balanced accuracy of predicting ``videos[target]`` from ``features``, patient-grouped CV.

    Standardised features -> class-weighted L2 logistic regression (``C``), scikit-learn's
    StratifiedGroupKFold over ``videos["group"]`` (no patient in two folds). Only values of
    ``target`` with at least ``min_patients`` patients take part (a source seen in one patient
    can never be both learned and tested); the others are listed in ``dropped``. Returns a dict:
    balanced_accuracy, chance (1 / classes), n_classes, n_videos, kept, dropped (or a reason).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    values = videos[target].astype(str).to_numpy()
    groups = videos["group"].astype(str).to_numpy()
    patients = pd.Series(groups).groupby(values).nunique()
    kept = sorted(patients[patients >= min_patients].index)
    dropped = sorted(set(values) - set(kept))
    rows = np.isin(values, kept)
    result = {"target": target, "kept": kept, "dropped": dropped, "n_videos": int(rows.sum()),
              "n_classes": len(kept), "chance": 1.0 / len(kept) if kept else float("nan"),
              "balanced_accuracy": float("nan")}
    if len(kept) < 2:
        result["reason"] = f"fewer than two {target} values with at least {min_patients} patients"
        return result
    x, y, g = features[rows], values[rows], groups[rows]
    splits = int(min(n_splits, patients[kept].min()))
    folds = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    predicted = np.empty(len(y), dtype=object)
    for train, test in folds.split(x, y, g):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000))
        model.fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
    result["balanced_accuracy"] = float(balanced_accuracy_score(y, predicted.astype(str)))
    result["n_splits"] = splits
    return result


def probe_treatments(samples: pd.DataFrame, *, treatments: dict[str, dict] | None = None, base_settings=None,
                     config=None, seed: int = 0, min_patients: int = 3,
                     log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The source probe once per input treatment, over all classes and within each class.

    Returns one row per (treatment, scope): scope "all classes" or a class name; columns
    balanced_accuracy, chance, n_classes (sources), n_videos.
    """
    base = base_settings or FrameSettings()
    source_of = dict(zip(samples["sample_id"], samples["source"].astype(str)))
    rows = []
    for name, changes in (treatments or TREATMENTS).items():
        settings = dataclasses.replace(base, **changes)
        frameset = extract_frames(samples, settings, progress=False)
        features, videos = video_features(frameset, config)
        videos["source"] = videos["sample_id"].map(source_of)
        scopes = [("all classes", np.ones(len(videos), bool))]
        scopes += [(str(label), (videos["label"] == label).to_numpy()) for label in sorted(videos["label"].unique())]
        for scope, rows_in in scopes:
            probe = source_probe(features[rows_in], videos[rows_in].reset_index(drop=True), seed=seed,
                                 min_patients=min_patients)
            rows.append({"treatment": name, "scope": scope, "balanced_accuracy": probe["balanced_accuracy"],
                         "chance": probe["chance"], "n_sources": probe["n_classes"], "n_videos": probe["n_videos"],
                         "sources": ",".join(probe["kept"])})
        if log:
            overall = rows[-len(scopes)]
            log(f"source probe, {name}: balanced accuracy {overall['balanced_accuracy']:.3f} "
                f"(chance {overall['chance']:.3f}, {overall['n_sources']} sources)")
    return pd.DataFrame(rows)


def cam_heat(model, frameset, classes: list[str], *, samples: pd.DataFrame | None = None, method: str = "gradcam",
             frames_per_video: int = 5, batch_size: int = 16) -> pd.DataFrame:
    """Grad-CAM heat inside the ultrasound image, one row per explained frame.

    Each video's region is found once from all its frames (:func:`covnb.canonical.ultrasound_region`);
    up to ``frames_per_video`` evenly spaced frames are explained for their labelled class
    (the predicted class when the label is not one of ``classes``). Columns: sample_id, label,
    source (from ``samples``), frame, inside (heat fraction inside the region), region_share.
    """
    index = frameset.index.reset_index(drop=True)
    source_of = dict(zip(samples["sample_id"], samples["source"].astype(str))) if samples is not None else {}
    class_of = {name: k for k, name in enumerate(classes)}
    picked, regions = [], {}
    for sample_id, rows in index.groupby("sample_id", sort=True).indices.items():
        regions[sample_id] = ultrasound_region(frameset.frames[rows])
        take = rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), int(frames_per_video))).round().astype(int))]
        picked.extend(int(r) for r in take)
    picked = np.asarray(picked, dtype=int)
    labels = index["label"].to_numpy()[picked]
    targets = [class_of.get(str(label)) for label in labels]
    result = explain(model, frameset.frames[picked], method=method,
                     class_index=None if any(t is None for t in targets) else np.asarray(targets), batch_size=batch_size)
    out = []
    for i, row in enumerate(picked):
        sample_id = index["sample_id"].iloc[row]
        region = regions[sample_id]
        out.append({"sample_id": sample_id, "label": labels[i], "source": source_of.get(sample_id, "unknown"),
                    "frame": int(index["frame_index"].iloc[row]), "explained": classes[int(result.class_index[i])],
                    "inside": heat_inside_fraction(result.heatmaps[i], region.mask), "region_share": region.share})
    return pd.DataFrame(out)


def heat_summary(heat: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per ``by`` (label or source): files, frames, mean heat inside, mean region share, heat outside."""
    grouped = heat.groupby(by)
    table = pd.DataFrame({"files": grouped["sample_id"].nunique(), "frames": grouped.size(),
                          "heat_inside": grouped["inside"].mean(), "region_share": grouped["region_share"].mean()})
    table["heat_outside"] = 1.0 - table["heat_inside"]
    return table.sort_values("files", ascending=False, kind="stable")


def run_audit(data=None, *, model_path=None, task: str | None = None, layout: str = "auto",
              treatments: dict[str, dict] | None = None, frame_settings=None, frames_per_video: int = 5,
              seed: int = 0, min_patients: int = 3, log: Callable[[str], None] | None = None) -> dict:
    """What ``covnb audit`` does: source x class table, source probe per treatment, CAM heat.

    ``data``: a folder, None for the synthetic phantom, or a :class:`covnb.datasets.Dataset`.
    ``model_path``: a saved covnb model whose CAM heat is measured (its sidecar's frame settings
    are used); default: a model fitted here with covnb.train's default recipe on all the data
    (where its evidence lies, not how well it does). Returns a dict of tables and numbers.
    """
    dataset = data if isinstance(data, Dataset) else load_dataset(data, layout=layout)
    samples = select_task(dataset.samples, task or default_task(dataset))
    base = frame_settings or FrameSettings()
    result = {"data_root": str(dataset.root), "task": task or default_task(dataset),
              "n_files": int(samples["sample_id"].nunique()), "n_patients": int(samples["group"].nunique()),
              "source_class": source_class_table(samples)}
    if log:
        log(f"audit: {result['n_files']} files, {result['n_patients']} patients, "
            f"{samples['source'].nunique()} sources")
    result["source_probe"] = probe_treatments(samples, treatments=treatments, base_settings=base, seed=seed,
                                              min_patients=min_patients, log=log)
    if model_path is not None:
        model, metadata = load_model(model_path)
        settings, classes = frame_settings_from_metadata(metadata), [str(c) for c in metadata["classes"]]
        model_name = str(model_path)
    else:
        settings = base
        frameset = extract_frames(samples, settings, progress=False)
        classes = sorted(frameset.index["label"].unique())
        config = recipe_config("default", image_size=settings.image_size, seed=seed,
                               mirror_view=mirror_is_plausible(samples))
        model, _ = fit_final_model(frameset, config, classes, log=None)
        model_name = "default recipe fitted on all files"
    frameset = extract_frames(samples, settings, progress=False)
    heat = cam_heat(model, frameset, classes, samples=samples, frames_per_video=frames_per_video)
    result.update({"model": model_name, "model_frame_settings": dataclasses.asdict(settings), "cam_heat": heat,
                   "heat_by_class": heat_summary(heat, "label"), "heat_by_source": heat_summary(heat, "source"),
                   "heat_inside_mean": float(heat["inside"].mean()),
                   "region_share_mean": float(heat["region_share"].mean())})
    if log:
        log(f"CAM heat inside the ultrasound image: {result['heat_inside_mean']:.3f} "
            f"(the image covers {result['region_share_mean']:.3f} of the frame)")
    return result


def _jsonable(result: dict) -> dict:
    out = {}
    for key, value in result.items():
        if key == "cam_heat":
            continue
        if isinstance(value, pd.DataFrame):
            out[key] = json.loads(value.reset_index().to_json(orient="records"))
        else:
            out[key] = value
    return out


def format_audit(result: dict) -> str:
    """The audit as plain text: the three tables and one sentence per figure, built from the numbers."""
    lines = [f"Shortcut audit of {result['data_root']} (task {result['task']}): {result['n_files']} files, "
             f"{result['n_patients']} patients", "", "Files per source and class:",
             result["source_class"].to_string(), ""]
    probe = result["source_probe"]
    lines.append("Source probe (frozen features -> source, patient-grouped CV; balanced accuracy, chance = 1/sources):")
    overall = probe[probe["scope"] == "all classes"].set_index("treatment")
    if overall["balanced_accuracy"].isna().all():
        lines.append(f"  not measurable: fewer than two sources with enough patients "
                     f"({', '.join(sorted(set(result['source_class'].index) - {'total'}))})")
    else:
        lines.append(probe.pivot_table(index="treatment", columns="scope", values="balanced_accuracy", sort=False)
                     .round(3).to_string())
        lines.append("Chance: " + ", ".join(f"{row.scope} {row.chance:.3f} ({row.n_sources} sources)"
                                            for row in probe.drop_duplicates("scope").itertuples()))
        first = overall.iloc[0]
        lines.append(f"Untreated, the features name the source with balanced accuracy {first['balanced_accuracy']:.3f} "
                     f"against chance {first['chance']:.3f} ({int(first['n_sources'])} sources with enough patients).")
    lines += ["", f"CAM heat inside the ultrasound image ({result['model']}; Grad-CAM of the labelled class):",
              result["heat_by_class"].round(3).to_string(), "", result["heat_by_source"].round(3).to_string(),
              f"On average {result['heat_inside_mean']:.3f} of the heat lies inside the image, which covers "
              f"{result['region_share_mean']:.3f} of the frame."]
    return "\n".join(lines)


def cmd_audit(args) -> int:
    """``covnb audit``: print the audit (text or JSON)."""
    result = run_audit(None if args.path == "phantom" else args.path, model_path=args.model,
                       task=None if args.task == "auto" else args.task, layout=args.layout,
                       frames_per_video=args.frames_per_video, seed=args.seed,
                       log=(lambda message: print(message, file=sys.stderr)))
    if args.json:
        print(json.dumps(_jsonable(result), indent=2, default=str))
    else:
        print(format_audit(result))
    return 0
