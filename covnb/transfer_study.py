"""Notebook 02's comparisons, computed: recipes side by side, a leaky split, source-held-out folds.

The recipe itself is trained and evaluated by :func:`covnb.train.run_training` (what ``covnb
train`` runs, writing the model and its ``model.json``); :func:`cv_results_of` reads its
cross-validations back as :class:`covnb.train.CVResult`. The rest scores out-of-fold
predictions with :mod:`covnb.evaluate` and returns tables, numbers and sentences written from
them (the notebook shows them). Patient-level folds: Born et al. (2021); the frame-level split
is the leak several POCUS results had; source-held-out folds after Zech et al. (PLOS Med 2018).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from covnb.evaluate import (bootstrap_ci, classification_metrics, fold_metrics, metrics_frame, summarize_cv,
                            video_predictions)

__all__ = ["cv_results_of", "recipe_row", "leaky_split_comparison", "source_comparison", "uncertainty_table",
           "level_table", "frame_agreement", "feature_map", "imbalance_comparison", "imbalance_summary",
           "compare_available_backbones", "recipe_variants", "headline_numbers", "split_audit", "notebook_variants",
           "class_counts", "complete_cv_results", "recipes_table", "source_held_out_study", "video_summary",
           "reload_difference"]

_TEXT_COLUMNS = {"sample_id": str, "group": str, "label": str, "source": str, "kind": str, "pred": str}


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=_TEXT_COLUMNS)


def cv_results_of(result: dict, config, probe_config=None) -> dict:
    """The cross-validations of a :func:`covnb.train.run_training` result as ``CVResult`` objects.

    Keys ``("recipe" | "linear probe", "patient" | "source")`` for every protocol and baseline it ran.
    """
    from covnb.train import CVResult, PROTOCOL_KEYS

    paths, classes, found = result["paths"], list(result["classes"]), {}
    headline = result["headline"]
    for group_by, key in PROTOCOL_KEYS.items():
        block = result.get(key)
        if not isinstance(block, dict) or "cv_seconds" not in block:
            continue
        suffix = "" if key == headline else f"_{key}"
        first = key == headline
        histories = _read(paths["training_history"]) if first and Path(paths["training_history"]).stat().st_size > 1 \
            else pd.DataFrame()
        folds = _read(paths["folds"]) if first else pd.DataFrame()
        found[("recipe", group_by)] = CVResult(_read(paths[f"oof_predictions{suffix}"]), classes, config, histories,
                                               folds, block["cv_seconds"], group_by,
                                               {int(s): v for s, v in block.get("splits", {}).items()})
        if f"baseline_oof_predictions{suffix}" in paths:
            found[("linear probe", group_by)] = CVResult(
                _read(paths[f"baseline_oof_predictions{suffix}"]), classes, probe_config, pd.DataFrame(),
                pd.DataFrame(), block["baseline"]["cv_seconds"], group_by)
    return found


def recipe_row(name: str, cv, classes, focus: str) -> dict:
    """One row of the recipe table: video- and frame-level fold means of one cross-validation."""
    per_fold = fold_metrics(cv.oof, classes, "video_mean")
    frame_fold = fold_metrics(cv.oof, classes, "frame")
    return {"recipe": name,
            "video balanced accuracy": per_fold["balanced_accuracy"].mean(),
            "± std over folds": per_fold["balanced_accuracy"].std(ddof=1),
            f"{focus} sensitivity": per_fold[f"{focus}_sensitivity"].mean(),
            f"{focus} specificity": per_fold[f"{focus}_specificity"].mean(),
            "macro ROC-AUC": per_fold["macro_auc"].mean(),
            "frame balanced accuracy": frame_fold["balanced_accuracy"].mean(),
            "seconds": round(float(cv.seconds), 1)}


def leaky_split_comparison(frame_set, config, honest_cv, classes, *, n_folds: int, seed: int, focus: str) -> dict:
    """The same recipe on a deliberately wrong frame-level split, scored at frame and video level.

    Returns ``metrics`` (what notebook 02 stores as ``leaky_split``), the audit of the wrong
    split and the per-fold frame metrics of both splits (``leaky_folds``, ``honest_folds``).
    """
    from covnb.splits import audit_split, frame_level_folds
    from covnb.train import run_cross_validation

    index = frame_set.index.reset_index(drop=True)
    wrong_folds = frame_level_folds(len(index), n_splits=n_folds, seed=seed)
    audit = audit_split(index, wrong_folds, frames=frame_set.frames, raise_on_leak=False)
    # Pretend every frame is its own patient: that is what a frame-level split assumes.
    sample_ids, groups = np.asarray(index["sample_id"], dtype=str), np.asarray(index["group"], dtype=str)
    frame_ids = np.array([f"{sample}#{row}" for row, sample in enumerate(sample_ids)])
    leaky_cv = run_cross_validation(dataclasses.replace(frame_set, index=index.assign(sample_id=frame_ids,
                                                                                      group=frame_ids)),
                                    config, n_folds=n_folds, seeds=(seed,), folds=pd.Series(wrong_folds, index=frame_ids),
                                    log=None, classes=classes)
    real = dict(zip(frame_ids, zip(sample_ids, groups)))  # back to the real videos and patients
    leaky_oof = leaky_cv.oof.assign(sample_id=[real[f][0] for f in leaky_cv.oof["sample_id"]],
                                    group=[real[f][1] for f in leaky_cv.oof["sample_id"]])
    leaky_folds = fold_metrics(leaky_oof, classes, "frame")
    videos = video_predictions(leaky_oof.drop(columns="fold"), classes, "mean")
    video = metrics_frame(classification_metrics(
        np.array([classes.index(c) for c in np.asarray(videos["label"], dtype=str)]),
        videos[[f"prob_{c}" for c in classes]].to_numpy(), classes))
    first_seed = honest_cv.oof[honest_cv.oof["seed"] == seed]
    honest_folds = fold_metrics(first_seed, classes, "frame")
    honest_video = fold_metrics(first_seed, classes, "video_mean")
    metrics = {"frame_balanced_accuracy_folds_mean": float(leaky_folds["balanced_accuracy"].mean()),
               "frame_balanced_accuracy_folds_std": float(leaky_folds["balanced_accuracy"].std(ddof=1)),
               "video_balanced_accuracy": float(video["balanced_accuracy"]),
               f"video_{focus}_sensitivity": float(video[f"{focus}_sensitivity"]),
               "honest_frame_balanced_accuracy_folds_mean": float(honest_folds["balanced_accuracy"].mean()),
               "honest_video_balanced_accuracy_folds_mean": float(honest_video["balanced_accuracy"].mean()),
               "audit_ok": audit.ok, "audit_shared_patients": len(audit.shared_groups),
               "audit_near_identical_frame_pairs": len(audit.near_duplicate_frames),
               "seconds": round(float(leaky_cv.seconds), 2)}
    return {"metrics": metrics, "audit": audit, "leaky_folds": leaky_folds, "honest_folds": honest_folds}


def _split_row(oof, classes, focus) -> dict:
    per_fold = fold_metrics(oof, classes, "video_mean")
    return {"video balanced accuracy": per_fold["balanced_accuracy"].mean(),
            "± std over folds": per_fold["balanced_accuracy"].std(ddof=1),
            f"{focus} sensitivity": per_fold[f"{focus}_sensitivity"].mean(),
            f"{focus} specificity": per_fold[f"{focus}_specificity"].mean()}


def source_comparison(patient_cv: dict, source_cv: dict, classes, *, main_name: str, focus: str,
                      leaky: dict | None, split_attrs: dict) -> dict:
    """Patient-grouped vs source-held-out folds for the recipe and the linear probe, with sentences
    written from the numbers. ``patient_cv`` / ``source_cv``: name -> CVResult. Returns what
    notebook 02 stores as ``source_held_out`` (``table``, ``held_out``, ``notes``, ``per_source``,
    ``prose``) plus, for display, the table (``frame``), the per-source table (``per_source_frame``)
    and per-fold video metrics of every cross-validation (``fold_tables``)."""
    from covnb.train import results_by_source

    rows = {}
    if leaky:
        rows[f"{main_name}, frame-level split (leaky)"] = {"video balanced accuracy": leaky["video_balanced_accuracy"],
                                                           f"{focus} sensitivity": leaky[f"video_{focus}_sensitivity"]}
    for name in patient_cv:
        rows[f"{name}, patient-grouped"] = _split_row(patient_cv[name].oof, classes, focus)
        rows[f"{name}, source-held-out"] = _split_row(source_cv[name].oof, classes, focus)
    table = pd.DataFrame(rows).T
    held_rows = [row for row in results_by_source(source_cv[main_name].oof, classes) if row["label"] == focus]
    lines = _source_prose(rows, held_rows, main_name=main_name, focus=focus, leaky=leaky,
                          with_probe="linear probe" in patient_cv)
    per_source = pd.DataFrame(held_rows, columns=["source", "label", "files", "share_correct", "test_folds"])
    folds = {f"{name}, {split}": fold_metrics(result.oof, classes, "video_mean") for name in patient_cv
             for split, result in (("patient-grouped", patient_cv[name]), ("source-held-out", source_cv[name]))}
    return {"table": table.reset_index().rename(columns={"index": "split"}).to_dict(orient="records"),
            "held_out": split_attrs["held_out"], "notes": split_attrs["notes"], "per_source": held_rows,
            "prose": " ".join(lines), "frame": table, "fold_tables": folds,
            "per_source_frame": per_source.set_index("source")[["files", "share_correct", "test_folds"]].rename(
                columns={"share_correct": f"{focus} found (share of its videos)"})}


def _source_prose(rows: dict, held_rows: list, *, main_name: str, focus: str, leaky: dict | None,
                  with_probe: bool) -> list[str]:
    """Sentences comparing patient-grouped and source-held-out folds, each written from the numbers."""
    patient = rows[f"{main_name}, patient-grouped"]["video balanced accuracy"]
    source = rows[f"{main_name}, source-held-out"]["video balanced accuracy"]
    spread = rows[f"{main_name}, source-held-out"]["± std over folds"]
    if leaky:
        lines = [f"The frame-level split gives {leaky['video_balanced_accuracy']:.3f}, patient-grouped folds "
                 f"{patient:.3f} and source-held-out folds {source:.3f} ({main_name}, video balanced accuracy)."]
    else:
        lines = [f"Patient-grouped folds give {patient:.3f} and source-held-out folds {source:.3f} "
                 f"({main_name}, video balanced accuracy)."]
    drop = patient - source
    if drop > max(0.02, spread / 2):
        lines.append(f"Holding the {focus} sources out costs {drop:.3f}: part of what patient-grouped CV credits to the "
                     f"recipe belongs to sources it has already seen, so the source-held-out figure is the one to "
                     f"quote for a new hospital.")
    elif drop < -max(0.02, spread / 2):
        lines.append(f"Here the source-held-out figure is {-drop:.3f} higher than the patient-grouped one: this run "
                     f"does not show a source effect (the folds differ in which patients they test; fold spread "
                     f"± {spread:.3f}).")
    else:
        lines.append(f"The two differ by {drop:+.3f}, within the fold spread (± {spread:.3f}): this run does not "
                     f"show a source effect.")
    if main_name != "linear probe" and with_probe:
        gap_patient = patient - rows["linear probe, patient-grouped"]["video balanced accuracy"]
        gap_source = source - rows["linear probe, source-held-out"]["video balanced accuracy"]
        lines.append(f"Against the linear probe, {main_name} is {gap_patient:+.3f} on patient-grouped folds and "
                     f"{gap_source:+.3f} on source-held-out folds"
                     + (": its lead shrinks on new sources." if gap_source < gap_patient - 0.02 else
                        ": its lead holds on new sources." if gap_source > 0.02 else "."))
    found = {row["source"]: row["share_correct"] for row in held_rows}
    if found:
        worst = min(found, key=found.get)
        lines.append(f"Per held-out source, the share of {focus} videos found ranges from {found[worst]:.2f} "
                     f"(source {worst}) to {max(found.values()):.2f}.")
    return lines


def uncertainty_table(summary: dict, classes, level: str = "video_mean") -> pd.DataFrame:
    """Per metric: fold mean ± std, pooled, and the patient-bootstrap 95% CI (Efron & Tibshirani 1993)."""
    entry, rows = summary[level], {}
    names = [("balanced_accuracy", "balanced accuracy"), ("mcc", "MCC"), ("macro_auc", "macro ROC-AUC")] + \
        [(f"{c}_{m}", f"{c} {m}") for c in classes for m in ("sensitivity", "specificity", "precision", "f1")]
    for key, caption in names:
        ci = entry.get("bootstrap_95ci", {}).get(key)
        rows[caption] = {"folds mean": entry["folds_mean"][key], "± std": entry["folds_std"][key],
                         "pooled": entry["pooled_mean"][key],
                         "95% CI": f"{ci['low']:.2f} – {ci['high']:.2f}" if ci and ci["low"] == ci["low"] else "–"}
    return pd.DataFrame.from_dict(rows, orient="index")


def level_table(oof: pd.DataFrame, classes, focus: str) -> pd.DataFrame:
    """Frame level vs video level (mean probability, majority vote): fold means of the main metrics."""
    levels = {"frame": "frames", "video_mean": "videos, mean probability", "video_vote": "videos, majority vote"}
    table = {}
    for level, caption in levels.items():
        folds = fold_metrics(oof, classes, level)
        table[caption] = {"cases per fold": folds["n"].mean(), "balanced accuracy": folds["balanced_accuracy"].mean(),
                          "± std": folds["balanced_accuracy"].std(ddof=1),
                          f"{focus} sensitivity": folds[f"{focus}_sensitivity"].mean(),
                          f"{focus} specificity": folds[f"{focus}_specificity"].mean(),
                          "macro ROC-AUC": folds["macro_auc"].mean()}
    return pd.DataFrame(table).T


def frame_agreement(oof: pd.DataFrame, classes) -> pd.DataFrame:
    """Per video of several frames: the share of its frames voting for its predicted class, and
    whether the majority vote is right."""
    videos = video_predictions(oof, classes, "mean")
    votes = video_predictions(oof, classes, "vote")
    table = pd.DataFrame({"agreement": votes[[f"prob_{c}" for c in classes]].max(axis=1).to_numpy(),
                          "correct": (votes["pred"] == votes["label"]).to_numpy(),
                          "n_frames": videos["n_frames"].to_numpy()})
    return table[table["n_frames"] > 1]


def feature_map(features: np.ndarray, index: pd.DataFrame, projection: str = "tsne", seed: int = 0) -> dict:
    """2-D picture of frozen features (t-SNE, van der Maaten & Hinton 2008, or PCA) and how often a
    frame's nearest neighbour (standardised features) is of the same patient / the same class."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    standardised = StandardScaler().fit_transform(features.astype(np.float64))
    reduced = PCA(n_components=min(50, *standardised.shape), random_state=seed).fit_transform(standardised)
    if projection == "tsne" and len(reduced) > 5:
        perplexity = float(min(30.0, (len(reduced) - 1) / 3))
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
        name = "t-SNE"
    else:
        embedded, name = reduced[:, :2], "PCA"
    neighbours = NearestNeighbors(n_neighbors=2).fit(standardised).kneighbors(standardised, return_distance=False)[:, 1]
    labels, groups = np.asarray(index["label"], dtype=str), np.asarray(index["group"], dtype=str)
    return {"embedded": embedded, "projection": name, "labels": labels, "groups": groups,
            "same_patient": float(np.mean(groups[neighbours] == groups)),
            "same_class": float(np.mean(labels[neighbours] == labels))}


def imbalance_comparison(frame_set, default, default_cv, classes, *, n_folds: int, seeds) -> tuple:
    """The default recipe's Keras head (where oversampling and class weights act differently; King &
    Zeng 2001) with no correction, class weights and oversampling, on the same folds. Returns
    ``(the config compared, option -> per-fold video metrics)``; ``default_cv`` is reused when it is one of them."""
    from covnb.train import run_cross_validation

    # a Keras head has no NAP choice (select) and no source step: logistic heads only
    base = default if default.solver == "keras" else dataclasses.replace(default, solver="keras", train_unit="frame",
                                                                         select=(), nuisance_dims=0)
    per_fold = {}
    for option in ("none", "class_weight", "oversample"):
        result = default_cv if option == base.imbalance and base == default else run_cross_validation(
            frame_set, dataclasses.replace(base, imbalance=option), n_folds=n_folds, seeds=seeds, log=None,
            classes=classes)
        per_fold[option] = fold_metrics(result.oof, classes, "video_mean")
    return base, per_fold


def imbalance_summary(per_fold: dict, classes) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """From ``option -> per-fold video metrics``: sensitivity per class and option, the summary
    table, and what notebook 02 stores as ``imbalance``."""
    sensitivity = pd.DataFrame({option: [table[f"{c}_sensitivity"].mean() for c in classes]
                                for option, table in per_fold.items()}, index=classes)
    table = pd.DataFrame({option: {"video balanced accuracy": t["balanced_accuracy"].mean(),
                                   "± std over folds": t["balanced_accuracy"].std(ddof=1),
                                   "macro ROC-AUC": t["macro_auc"].mean()} for option, t in per_fold.items()}).T
    stored = {option: {"video_balanced_accuracy": t["balanced_accuracy"].mean(),
                       "video_balanced_accuracy_std": t["balanced_accuracy"].std(ddof=1),
                       **{f"{c}_sensitivity": t[f"{c}_sensitivity"].mean() for c in classes}}
              for option, t in per_fold.items()}
    return sensitivity, table, stored


def compare_available_backbones(dataset, names, *, task: str, seeds, n_folds: int, frame_settings):
    """:func:`covnb.backbone_comparison.compare_backbones` one backbone at a time, skipping those whose
    weights are not installed. Returns ``(table or None, name -> reason skipped)``."""
    import matplotlib.pyplot as plt

    from covnb.backbone_comparison import compare_backbones
    from covnb.backbones import WeightsUnavailableError

    rows, skipped = [], {}
    for name in names:
        try:
            table, figure = compare_backbones(dataset, [name], seeds=seeds, n_folds=n_folds, task=task,
                                              frame_settings=frame_settings, n_boot=0, log=None)
        except WeightsUnavailableError as error:
            skipped[name] = str(error).split(". ")[0]
            continue
        plt.close(figure)
        rows.append(table)
    return (pd.concat(rows, ignore_index=True) if rows else None), skipped


def recipe_variants(recipe: str, *, common: dict, views: dict, epochs: int, fine_tune_epochs: int) -> tuple[dict, str]:
    """The recipes notebook 02 compares (name -> TrainConfig) and the name of the one it evaluates
    in detail and saves. ``common``: backbone, weights, alpha, image size and seed (shared, so the
    cached features are shared); ``views``: ``aug_views`` and ``mirror_view``."""
    from covnb.train import recipe_config

    variants = {"linear probe": recipe_config("linear_probe", **common)}
    if recipe_config("default", **common).head == "midlevel":  # isolates what the choice of layers does
        variants["linear probe, middle layers"] = recipe_config("linear_probe", head="midlevel", **common)
    variants["covnb default"] = recipe_config("default", epochs=epochs, **views, **common)
    if fine_tune_epochs > 0:  # the same top-layer head trained by Adam, without and with the last block trained
        variants["top-layer head, Adam"] = recipe_config("default", head="gap", solver="keras", train_unit="frame",
                                                         epochs=epochs, **views, **common)
        variants["top-layer head + fine-tuned last block"] = recipe_config(
            "default", epochs=epochs, fine_tune_epochs=fine_tune_epochs, **views, **common)
    if recipe == "pocovid":
        variants["POCOVID-Net recipe"] = recipe_config("pocovid", epochs=epochs, **common)
    main_name = {"linear_probe": "linear probe", "pocovid": "POCOVID-Net recipe"}.get(recipe, "covnb default")
    return variants, main_name


def headline_numbers(summary: dict, focus: str, leaky: dict | None) -> dict:
    """Notebook 02's ``headline`` block: video-level fold means (mean frame probability) of the evaluated
    recipe on patient-level folds, its frame level, and the leaky split's frame level beside them."""
    video = summary["video_mean"]
    return {"video_balanced_accuracy": video["folds_mean"]["balanced_accuracy"],
            "video_balanced_accuracy_std": video["folds_std"]["balanced_accuracy"],
            f"video_{focus}_sensitivity": video["folds_mean"][f"{focus}_sensitivity"],
            f"video_{focus}_specificity": video["folds_mean"][f"{focus}_specificity"],
            "video_macro_auc": video["folds_mean"]["macro_auc"],
            "frame_balanced_accuracy": summary["frame"]["folds_mean"]["balanced_accuracy"],
            "leaky_frame_balanced_accuracy": leaky["frame_balanced_accuracy_folds_mean"] if leaky else None}


def split_audit(frame_set, cv, seed: int):
    """:func:`covnb.splits.audit_split` of the test folds ``cv`` used for split seed ``seed``, frame by frame."""
    from covnb.splits import audit_split

    index = frame_set.index.reset_index(drop=True)
    tests = cv.folds[(cv.folds["role"] == "test") & (cv.folds["seed"] == seed)]
    fold_of_frame = index["sample_id"].map(dict(zip(tests["sample_id"], tests["fold"]))).to_numpy()
    return audit_split(index, fold_of_frame, frames=frame_set.frames, raise_on_leak=False)


def notebook_variants(recipe: str, samples: pd.DataFrame, *, backbone: str, weights, alpha, image_size: int, seed: int,
                      aug_views: int, mirror_view, epochs: int, fine_tune_epochs: int) -> tuple[dict, str]:
    """:func:`recipe_variants` from notebook 02's parameters; ``mirror_view="auto"`` mirrors frames when
    :func:`covnb.train.mirror_is_plausible` says so for ``samples`` (no chest X-ray or CT)."""
    from covnb.train import mirror_is_plausible

    common = dict(backbone=backbone, weights=weights, alpha=alpha, image_size=image_size, seed=seed)
    views = dict(aug_views=aug_views, mirror_view=mirror_is_plausible(samples) if mirror_view == "auto" else mirror_view)
    return recipe_variants(recipe, common=common, views=views, epochs=epochs, fine_tune_epochs=fine_tune_epochs)


def class_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Per label: distinct files, patients and frames of a frame index."""
    return index.groupby("label").agg(files=("sample_id", "nunique"), patients=("group", "nunique"),
                                      frames=("sample_id", "size"))


def complete_cv_results(frame_set, variants: dict, done: dict, *, n_folds: int, seeds, classes, log=None) -> dict:
    """Name -> CVResult for every recipe of ``variants`` (in its order): those in ``done`` as they are,
    the others cross-validated now on the same patient-grouped folds (a line per recipe to ``log``)."""
    from covnb.recipe_text import describe
    from covnb.train import run_cross_validation

    results = {}
    for name, config in variants.items():
        if name not in done:
            if log is not None:
                log(f"--- {name}: {describe(config)}")
            done = {**done, name: run_cross_validation(frame_set, config, n_folds=n_folds, seeds=seeds, log=log,
                                                       classes=classes)}
        results[name] = done[name]
    return results


def recipes_table(cv_results: dict, classes, focus: str) -> pd.DataFrame:
    """One :func:`recipe_row` per named cross-validation, indexed by recipe."""
    return pd.DataFrame([recipe_row(name, cv, classes, focus) for name, cv in cv_results.items()]).set_index("recipe")


def source_held_out_study(samples: pd.DataFrame, runs: dict, cv_results: dict, classes, *, main_name: str,
                          focus: str, leaky: dict | None, n_folds: int, seed: int, enabled: bool = True) -> tuple:
    """Notebook 02's section 4b: ``(source_comparison(...) or None, lines to print)``.

    ``runs``: :func:`cv_results_of` of the training run (its source-held-out cross-validations);
    ``cv_results``: name -> patient-grouped CVResult. None with a line saying why when the data have
    no source-held-out folds (:func:`covnb.splits.source_held_out_folds`) or ``enabled`` is False.
    """
    from covnb.splits import source_held_out_folds

    split = source_held_out_folds(samples, positive_label=focus, n_splits=n_folds, seed=seed)
    lines = [f"note: {note}" for note in split.attrs["notes"]]
    if not enabled:
        return None, lines + ["compare_source_split=False: skipped."]
    if split.attrs["protocol"] != "source" or ("recipe", "source") not in runs:
        return None, lines + [f"No source-held-out comparison on this data: {split.attrs['notes'][0]}. Only the "
                              "frame-level and patient-grouped splits above can be compared."]
    lines += [f"fold {fold}: {focus} test files only from source(s) {', '.join(held)}, none of which is in training"
              for fold, held in split.attrs["held_out"].items()]
    names = list(dict.fromkeys([main_name, "linear probe"]))
    source_cv = {name: runs[("recipe" if name == main_name else "linear probe", "source")] for name in names}
    comparison = source_comparison({name: cv_results[name] for name in names}, source_cv, classes,
                                   main_name=main_name, focus=focus, leaky=leaky, split_attrs=split.attrs)
    return comparison, lines


def video_summary(oof: pd.DataFrame, videos: pd.DataFrame, classes, *, n_boot: int, seed: int) -> dict:
    """:func:`covnb.evaluate.summarize_cv` of ``oof`` (no bootstrap of its own) with, when ``n_boot``, the
    patient bootstrap 95% intervals (Efron & Tibshirani 1993) of ``videos`` at the video level (the headline
    level): every patient's videos resampled together."""
    summary = summarize_cv(oof, classes, n_boot=0)
    if n_boot:
        metrics = ["balanced_accuracy", "mcc", "macro_auc"] + [f"{c}_{m}" for c in classes
                                                               for m in ("sensitivity", "specificity")]
        summary["video_mean"]["bootstrap_95ci"] = bootstrap_ci(videos, classes, metrics, n_boot=n_boot, seed=seed)
    return summary


def reload_difference(model_path: str | Path, frames: np.ndarray, classes, *, n_check: int = 16) -> tuple[float, dict]:
    """Load the saved model twice and compare their probabilities on the first ``n_check`` frames:
    ``(largest difference, metadata)``; ValueError naming the file when they differ (>= 1e-4) or the
    classes are not ``classes``."""
    from covnb.models import load_model
    from covnb.train import predict_frames

    (first, metadata), (second, _) = load_model(model_path), load_model(model_path)
    check = frames[: min(n_check, len(frames))]
    difference = float(np.max(np.abs(predict_frames(first, check) - predict_frames(second, check))))
    if difference >= 1e-4 or metadata["classes"] != list(classes):
        raise ValueError(f"{model_path}: the saved model does not reload as trained (max difference {difference:g}, "
                         f"classes {metadata['classes']})")
    return difference, metadata
