"""Notebook 02's ``metrics.json`` and the sentences that read its numbers aloud.

The honest numbers are those of patient-level folds (Born et al. 2021); the leaky frame-level split
is shown beside them only to measure how much it flatters. ``tests/test_transfer_notebook.py`` and
``covnb report`` read the keys written here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covnb.notebook_display import is_synthetic
from covnb.recipe_text import describe
from covnb.transfer_study import headline_numbers

__all__ = ["RECORDED_PARAMETERS", "transfer_metrics", "leaky_text", "closing_line", "backbone_notes", "neighbour_text",
           "variants_text", "saved_model_text", "uncertainty_heading"]

#: Notebook 02's parameters kept in its ``metrics.json`` (``seeds``: the split seeds used).
RECORDED_PARAMETERS = ("backbone", "weights", "alpha", "image_size", "rate_hz", "max_frames", "seed", "n_folds", "seeds",
                       "recipe", "epochs", "aug_views", "mirror_view", "fine_tune_epochs", "n_boot")


def transfer_metrics(parameters: dict, *, seeds, task_name: str, dataset, samples: pd.DataFrame, frame_set, classes,
                     main_name: str, summary: dict, focus: str, leaky: dict | None, source_comparison: dict | None, honest_audit,
                     recipes: pd.DataFrame, imbalance: dict, feature_map: dict, dimensions: int, model_path: Path,
                     difference: float, cv_results: dict, timings: dict, figures: list) -> dict:
    """Notebook 02's ``metrics.json``: the data, the parameters, the headline and honest numbers, the
    leaky and source-held-out comparisons, the recipes and imbalance tables, the frozen features, the
    saved model and the timings (with each cross-validation's seconds)."""
    data_path = parameters.get("data_path")
    synthetic = is_synthetic(data_path)
    recorded = {key: list(seeds) if key == "seeds" else parameters[key] for key in RECORDED_PARAMETERS}
    index = frame_set.index
    return {
        "notebook": "02_transfer_learning", "synthetic": synthetic,
        "data": {"path": None if synthetic else str(data_path), "task": task_name,
                 "classes": list(classes), "files": int(samples["sample_id"].nunique()),
                 "patients": int(index["group"].nunique()), "frames": int(len(frame_set.frames)),
                 "skipped": int(len(frame_set.skipped) + len(dataset.skipped))},
        "parameters": recorded,
        "recipe": main_name,
        "headline": headline_numbers(summary, focus, leaky),
        "honest": {level: {k: v for k, v in summary[level].items() if k != "per_seed"}
                   for level in ("frame", "video_mean", "video_vote")},
        "leaky_split": leaky,
        "source_held_out": source_comparison,
        "split_audit": {"patient_level_ok": honest_audit.ok, "checked": honest_audit.checked},
        "recipes": recipes.reset_index().to_dict(orient="records"),
        "imbalance": imbalance,
        "frozen_features": {"dimensions": int(dimensions), "projection": feature_map["projection"],
                            "nearest_neighbour_same_patient": feature_map["same_patient"],
                            "nearest_neighbour_same_class": feature_map["same_class"]},
        "model": {"path": Path(model_path).name, "sidecar": Path(model_path).with_suffix(".json").name,
                  "classes": list(classes), "reload_max_difference": difference},
        "timings": {**timings, "cross_validation_s": {name: round(float(result.seconds), 2)
                                                      for name, result in cv_results.items()}},
        "figures": list(figures),
    }


def leaky_text(leaky: dict, audit=None) -> str:
    """Frame- and video-level balanced accuracy of the leaky split against the honest one, after the
    leaky split's audit (:meth:`covnb.splits.SplitAudit.describe`) when given."""
    head = "" if audit is None else f"frame-level split:   {audit.describe(limit=3)}\n"
    return head + (f"frame-level split: frame balanced accuracy {leaky['frame_balanced_accuracy_folds_mean']:.3f} "
            f"(video {leaky['video_balanced_accuracy']:.3f})  <- optimistic, patients leak\n"
            f"patient-level split: frame balanced accuracy {leaky['honest_frame_balanced_accuracy_folds_mean']:.3f} "
            f"(video {leaky['honest_video_balanced_accuracy_folds_mean']:.3f})  <- honest")


def closing_line(metrics: dict, out: Path) -> str:
    """The last line notebook 02 prints: the headline, the leaky figure beside it, what was written where."""
    headline, leaky = metrics["headline"], metrics["leaky_split"]
    return (f"{metrics['recipe']}: video balanced accuracy {headline['video_balanced_accuracy']:.3f} "
            f"± {headline['video_balanced_accuracy_std']:.3f} (patient-level folds)"
            + (f", leaky frame-level split {leaky['frame_balanced_accuracy_folds_mean']:.3f}" if leaky else "")
            + f"; wrote metrics.json, oof_predictions.csv, model.keras and {len(metrics['figures'])} figures to {out} "
            f"in {metrics['timings']['total_s']:.0f} s")


def backbone_notes(requested, skipped: dict) -> list[str]:
    """Why the "which backbone" section compared fewer backbones than it could: none requested, or
    some skipped (name -> reason, e.g. weights not installed)."""
    notes = [] if requested else ["which backbone: skipped (backbones = []; the full profile compares "
                                  "EfficientNet-Lite0/1/2 and ResNet50)"]
    return notes + [f"skipped {name}: {reason} (covnb weights fetch {name})" for name, reason in skipped.items()]


def neighbour_text(feature_map: dict) -> str:
    """How often a frame's nearest neighbour in feature space is of the same patient, and of the same class."""
    return (f"nearest neighbour of a frame: same patient {feature_map['same_patient']:.0%}, "
            f"same class {feature_map['same_class']:.0%}")


def variants_text(variants: dict, main_name: str, seeds) -> str:
    """One line per compared recipe (:func:`covnb.recipe_text.describe`), then which one is evaluated in detail and saved."""
    return "\n".join([f"{name}: {describe(config)}" for name, config in variants.items()]
                     + [f"evaluated in detail and saved: {main_name}; split seeds {list(seeds)}"])


def saved_model_text(model_path: Path, metadata: dict, difference: float) -> str:
    """The saved model and its sidecar, its size, and how closely the reloaded model reproduces it."""
    model_path = Path(model_path)
    return (f"saved {model_path} ({model_path.stat().st_size / 1e6:.1f} MB) and {model_path.with_suffix('.json').name}; "
            f"reloaded: classes {metadata['classes']}, max probability difference {difference:.1e}")


def uncertainty_heading(main_name: str, *, n_folds: int, n_seeds: int, n_boot: int, n_patients: int) -> str:
    """The bold heading above the uncertainty table: recipe, level, folds, split seeds, bootstrap resamples."""
    return (f"**{main_name}, video level (mean probability)**, {n_folds} folds x {n_seeds} split seed(s), "
            f"{n_boot} bootstrap resamples of {n_patients} patients:")
