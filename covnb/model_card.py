"""A model card for every training run (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019).

:func:`write_model_card` reads a run folder written by :func:`covnb.train.run_training`
(``metrics.json``, ``folds.csv``, ``data_samples.csv``, ``oof_predictions.csv``, ``model.json``)
and renders the Jinja2 template ``covnb/resources/model_card.md.j2`` into ``MODEL_CARD.md``,
and that Markdown into ``MODEL_CARD.html`` (mistune). Sections: intended use, data, recipe and
backbone with weights provenance, results with patient-bootstrap intervals, calibration,
uncertainty, shortcut audit, known limits, versions, and a CLAIM checklist (Mongan et al.,
Radiology: Artificial Intelligence 2020) where each item points to its evidence or says
"not addressed".
"""

from __future__ import annotations

import importlib.resources
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from covnb import __version__
from covnb.evaluate import video_predictions
from covnb.io_utils import atomic_write_text
from covnb.registry import BACKBONES

__all__ = ["SECTIONS", "NOT_ADDRESSED", "CLAIM_ITEMS", "model_card_context", "render_model_card",
           "write_model_card", "markdown_table"]

SECTIONS = ("Intended use", "Data", "Model and training recipe", "Results (out of fold, patient-level folds)",
            "Calibration", "Uncertainty: when the model says \"I don't know\"", "Shortcut audit", "Known limits",
            "Versions", "CLAIM checklist")
NOT_ADDRESSED = "not addressed"

#: The 42 items of CLAIM (Mongan, Moy & Kahn, Radiology: Artificial Intelligence 2020;2(2):e200029), shortened.
CLAIM_ITEMS = (
    "Identification as a study of AI methodology", "Structured summary", "Scientific and clinical background, "
    "intended use and clinical role", "Study objectives and hypotheses", "Prospective or retrospective study",
    "Study goal", "Data sources", "Eligibility criteria", "Data pre-processing steps", "Selection of data subsets",
    "Definitions of data elements", "De-identification methods", "Handling of missing data",
    "Definition of the ground truth reference standard", "Rationale for the reference standard",
    "Source of ground-truth annotations, annotators' qualifications", "Annotation tools",
    "Inter- and intra-rater variability", "Intended sample size and how it was determined",
    "How data were assigned to partitions", "Level at which partitions are disjoint", "Detailed model description",
    "Software libraries, frameworks and packages", "Initialisation of model parameters",
    "Training details (hyperparameters, augmentation)", "Method of selecting the final model", "Ensembling",
    "Metrics of model performance", "Statistical measures of significance and uncertainty",
    "Robustness or sensitivity analysis", "Explainability or interpretability methods",
    "Validation or testing on external data", "Flow of participants or cases",
    "Demographic and clinical characteristics of cases in each partition",
    "Performance metrics on all data partitions", "Estimates of diagnostic accuracy and their precision",
    "Failure analysis of incorrectly classified cases", "Limitations, potential bias and generalisability",
    "Implications for practice, intended use and clinical role", "Registration number and registry",
    "Where the full study protocol can be accessed", "Sources of funding and other support",
)


def markdown_table(table: pd.DataFrame, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    if index:
        table = table.reset_index()
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if value != value else f"{value:.3f}"
    return str(value).replace("|", "/")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{float(value):.3f}"


def _with_ci(estimate, ci: dict | None) -> str:
    text = _fmt(estimate)
    if ci and ci.get("low") is not None:
        text += f" [{_fmt(ci['low'])}, {_fmt(ci['high'])}]"
    return text


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _versions(model_meta: dict, metrics: dict) -> dict:
    import importlib.metadata

    versions = {"covnb (card)": __version__, "covnb (model)": model_meta.get("covnb_version", "no final model"),
                "keras (model)": model_meta.get("keras_version", "no final model"), "python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "scikit-learn", "pandas", "opencv-python-headless"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _data_context(run: Path, metrics: dict, folds: pd.DataFrame, oof: pd.DataFrame) -> dict:
    samples = pd.read_csv(run / "data_samples.csv", dtype=str) if (run / "data_samples.csv").is_file() else \
        folds.drop_duplicates("sample_id")[["sample_id", "group", "label"]]
    first_seed = oof[oof["seed"] == oof["seed"].iloc[0]] if "seed" in oof else oof
    classes = metrics.get("classes", sorted(samples["label"].unique()))
    rows = []
    for name in classes:
        part = samples[samples["label"] == name]
        row = {"class": name, "patients": part["group"].nunique(), "files": len(part),
               "frames": int((first_seed["label"] == name).sum())}
        if "kind" in part:
            row["videos"] = int((part["kind"] == "video").sum())
            row["stills (images)"] = int((part["kind"] == "image").sum())
        rows.append(row)
    context = {"root": metrics.get("data_root") or "synthetic phantom or a table", "fingerprint":
               metrics.get("data_fingerprint", "n/a"), "files": len(samples), "patients": samples["group"].nunique(),
               "frames": len(first_seed), "class_table": markdown_table(pd.DataFrame(rows)),
               "source_table": "", "licence_table": "", "samples": samples}
    if "source" in samples and samples["source"].notna().any():
        table = pd.crosstab(samples["source"].fillna("unknown"), samples["label"])
        context["source_table"] = markdown_table(table, index=True)
    licence = next((c for c in ("licence", "license") if c in samples and samples[c].notna().any()), None)
    if licence:
        counts = samples[licence].fillna("not stated").value_counts().rename_axis("licence").reset_index(name="files")
        context["licence_table"] = markdown_table(counts)
    return context


def _results_context(metrics: dict, oof: pd.DataFrame, samples: pd.DataFrame) -> dict:
    classes = metrics["classes"]
    context = {"table": markdown_table(pd.DataFrame(_metric_rows(metrics, classes))), "n_boot": _n_boot(metrics),
               "baseline": "", "subgroup_table": "",
               "source_held_out": metrics.get("source_held_out_summary", NOT_ADDRESSED + " in this run (patient folds "
                                                                                         "only; see the leave-one-source-"
                                                                                         "out OOD check below)")}
    baseline = (metrics.get("baseline") or {}).get("video_mean", {})
    if baseline.get("pooled_mean"):
        context["baseline"] = (f"{_fmt(baseline['pooled_mean'].get('balanced_accuracy'))} +- "
                               f"{_fmt(baseline.get('pooled_std', {}).get('balanced_accuracy'))} (difference "
                               f"{metrics['baseline'].get('video_balanced_accuracy_difference', float('nan')):+.3f})")
    parts = _subgroup_tables(oof, samples, classes)
    if parts:
        context["subgroup_table"] = markdown_table(pd.concat(parts, ignore_index=True))
    return context


def _metric_rows(metrics: dict, classes) -> list[dict]:
    """Rows of the results table: mean +- std over seeds and the patient-bootstrap CI of each metric."""
    rows = []
    for level, caption in (("video_mean", "videos (mean probability)"), ("frame", "frames")):
        entry = metrics.get(level) or {}
        mean, std, ci = entry.get("pooled_mean", {}), entry.get("pooled_std", {}), entry.get("bootstrap_95ci", {})
        names = ["balanced_accuracy", "macro_auc", "mcc"] + [f"{c}_{m}" for c in classes
                                                             for m in ("sensitivity", "specificity")]
        for name in names:
            if name in mean:
                rows.append({"level": caption, "metric": name.replace("_", " "),
                             "mean +- std over seeds": f"{_fmt(mean[name])} +- {_fmt(std.get(name))}",
                             "95% CI (patient bootstrap)": _with_ci(ci.get(name, {}).get("estimate"), ci.get(name))
                             if name in ci else "n/a"})
    return rows


def _subgroup_tables(oof: pd.DataFrame, samples: pd.DataFrame, classes) -> list[pd.DataFrame]:
    """Video accuracy by kind, probe, modality and source (those with more than one value)."""
    videos = video_predictions(oof, classes, "mean").merge(
        samples.drop(columns=[c for c in ("group", "label") if c in samples]), on="sample_id", how="left")
    videos["correct"] = videos["pred"] == videos["label"]
    parts = []
    for column in ("kind", "probe", "modality", "source"):
        if column in videos and videos[column].notna().any() and videos[column].nunique() > 1:
            grouped = videos.groupby(videos[column].fillna("unknown"))
            table = pd.DataFrame({"by": column, "group": grouped.size().index, "predictions": grouped.size().values,
                                  "accuracy": grouped["correct"].mean().values})
            parts.append(table)
    return parts


def _n_boot(metrics: dict) -> int | str:
    for level in ("video_mean", "frame"):
        for entry in ((metrics.get(level) or {}).get("bootstrap_95ci") or {}).values():
            return entry.get("n_boot", "n/a")
    return "n/a"


def _calibration_context(metrics: dict, model_meta: dict, run: Path) -> dict:
    calibration = metrics.get("calibration")
    if not calibration:
        return {"bins": "n/a", "evaluation": NOT_ADDRESSED, "table": NOT_ADDRESSED, "method": "none",
                "parameters": "no map", "figure": None}
    rows = []
    for level, methods in calibration["levels"].items():
        for method, scores in methods.items():
            rows.append({"level": level, "probabilities": method,
                         **{name.replace("_", " "): _with_ci(scores[name]["estimate"], scores[name])
                            for name in ("ece", "classwise_ece", "brier", "log_loss")}})
    final = calibration.get("final_map", {})
    parameters = "; ".join(f"{level}: " + ", ".join(f"{k} {np.round(v, 3).tolist() if isinstance(v, list) else round(v, 3)}"
                                                     for k, v in final.get(level, {}).items()
                                                     if k not in ("method", "knots"))
                           for level in ("frame", "video") if level in final)
    return {"bins": calibration.get("ece_bins"), "evaluation": calibration.get("evaluation"),
            "table": markdown_table(pd.DataFrame(rows)), "method": calibration.get("method"),
            "parameters": parameters or "see model.json", "stored": "calibration" in model_meta,
            "figure": "reliability.png" if (run / "reliability.png").is_file() else None}


def _uncertainty_context(metrics: dict, run: Path) -> dict:
    uncertainty = metrics.get("uncertainty")
    if not uncertainty:
        return {"rules": NOT_ADDRESSED, "risk_table": NOT_ADDRESSED, "source_table": "", "figure": None}
    thresholds = uncertainty["thresholds"]
    rules = [f"- **low confidence**: calibrated top probability below {_fmt(thresholds.get('min_confidence'))} "
             f"({thresholds.get('min_confidence_rule', '')})"]
    if "min_fold_agreement" in thresholds:
        rules.append(f"- **fold models disagree**: fewer than {thresholds['min_fold_agreement']:.0%} of the "
                     f"{uncertainty['fold_heads']} cross-validation fold heads agree with the final prediction")
    else:
        rules.append("- fold-model disagreement: not available for this recipe (fold models are not kept)")
    if "max_ood_score" in thresholds:
        rules.append(f"- **outside the training data**: OOD score above {_fmt(thresholds['max_ood_score'])} "
                     f"({thresholds.get('max_ood_score_rule', '')})")
    rows = []
    for score, table in uncertainty["risk_coverage"].items():
        for row in table:
            rows.append({"ranked by": score, "abstain on": f"{row['abstain_fraction']:.0%}",
                         "files answered": row["n_kept"], "accuracy": row["accuracy"],
                         "balanced accuracy": row.get("balanced_accuracy", float("nan"))})
    source_rows = uncertainty.get("leave_one_source_out_auroc") or []
    return {"rules": "\n".join(rules), "risk_table": markdown_table(pd.DataFrame(rows)),
            "source_table": markdown_table(pd.DataFrame(source_rows)) if source_rows else "",
            "source_note": uncertainty.get("leave_one_source_out_note", ""),
            "figure": "risk_coverage.png" if (run / "risk_coverage.png").is_file() else None}


def _limits(metrics: dict, data: dict) -> list[str]:
    classes = metrics["classes"]
    samples = data["samples"]
    per_class = samples.groupby("label")["group"].nunique()
    smallest = per_class.idxmin() if len(per_class) else "?"
    ci = (metrics.get("video_mean") or {}).get("bootstrap_95ci", {}).get("balanced_accuracy", {})
    limits = [f"Small data: {data['patients']} patients; the smallest class ({smallest}) has "
              f"{int(per_class.min()) if len(per_class) else 0} patients. The 95% interval of video balanced "
              f"accuracy is {_fmt(ci.get('low'))} to {_fmt(ci.get('high'))}.",
              "Labels come from file names or the collection's metadata, not from a reference standard "
              "(PCR, expert panel) that this run can check.",
              "Patient-level cross-validation on one collection is internal validation: no external test set.",
              "The calibration map and uncertainty thresholds are fitted on the same collection's out-of-fold "
              "predictions; on other devices or populations they may not hold (the OOD flag is the warning).",
              f"Classes {', '.join(classes)} only: any other condition is forced into one of them."]
    if data["source_table"]:
        limits.append("Sources and classes are confounded (table above): a model can learn the source (screen "
                      "layout, device) instead of the lung.")
    if metrics.get("config", {}).get("recipe") in ("default", "midlevel", "nap"):
        limits.append("The default recipe's choices were made on the same public data (the mid-level head on "
                      "split seeds 0-2, the source step on split seeds 10-14); results on those seeds are optimistic.")
    return limits


def _claim(metrics: dict, data: dict, run: Path) -> list[tuple[int, str, str]]:
    config = metrics.get("config", {})
    has = lambda name: (run / name).is_file()  # noqa: E731
    evidence = {
        1: "title of this card (deep learning on lung images)",
        3: "Intended use",
        6: "model creation and internal validation (Results)",
        7: f"Data: `{data['root']}`, fingerprint `{data['fingerprint']}`" + (", sources table" if data["source_table"] else ""),
        9: "Model and training recipe: frames, size; `model.json` frame_settings",
        10: "Data: task classes; files that cannot be read are skipped and listed in the training log",
        13: "unreadable files are skipped and listed by covnb (training log)",
        20: "`folds.csv` (patient-grouped stratified folds, one row per file, seed and role)",
        21: "patient (`group`): Data, `folds.csv`",
        22: "Model and training recipe; `model.json`",
        23: "Versions",
        24: f"backbone weights: {config.get('weights')} (Model and training recipe)",
        25: "Model and training recipe; `metrics.json` config",
        26: "inner patient-grouped CV chooses the regularisation (`training_history.csv`); final model on all data",
        28: "Results, Calibration (`metrics.json`)",
        29: "Results: mean +- std over split seeds and patient-bootstrap 95% intervals",
        30: "Calibration, Uncertainty (risk-coverage, OOD), results by subgroup",
        33: f"Data: {data['files']} files of {data['patients']} patients",
        35: "Results (out-of-fold, every fold)",
        36: "Results: sensitivity / specificity per class with 95% intervals",
        37: "`oof_predictions.csv` lists every out-of-fold prediction (no written failure analysis)",
        38: "Known limits",
        39: "Intended use (research and teaching, not diagnosis)",
    }
    if config.get("fine_tune_epochs") or config.get("solver") == "keras":
        evidence[26] = "early stopping on an inner patient split (`training_history.csv`); final model on all data"
    if has("heldout_ood_scores.csv") and (metrics.get("uncertainty") or {}).get("leave_one_source_out_auroc"):
        evidence[32] = "partly: leave-one-source-out OOD check only (Uncertainty); no external test"
    if (metrics.get("uncertainty") or {}).get("fold_heads"):
        evidence[27] = "fold heads used for the disagreement signal only; the prediction is the single final model"
    return [(k, item, evidence.get(k, NOT_ADDRESSED)) for k, item in enumerate(CLAIM_ITEMS, start=1)]


def model_card_context(run_dir, samples: pd.DataFrame | None = None) -> dict:
    """Everything the template shows, read from the run folder."""
    run = Path(run_dir)
    metrics = _read_json(run / "metrics.json")
    if not metrics:
        raise FileNotFoundError(f"{run / 'metrics.json'}: no metrics, not a covnb training run")
    model_meta = _read_json(run / "model.json")
    folds = pd.read_csv(run / "folds.csv", dtype={"sample_id": str, "group": str, "label": str})
    oof = pd.read_csv(run / "oof_predictions.csv", dtype={"sample_id": str, "group": str, "label": str})
    data = _data_context(run, metrics, folds, oof)
    config = metrics.get("config", {})
    settings = model_meta.get("frame_settings") or {}
    try:
        provenance = BACKBONES[config.get("backbone")].weights_source if config.get("weights") == "imagenet" else \
            ("random initialisation" if config.get("weights") in (None, "None") else f"local file {config.get('weights')}")
    except KeyError:
        provenance = "unknown backbone"
    recipe = {"recipe": config.get("recipe"), "backbone": config.get("backbone"), "weights": config.get("weights"),
              "provenance": provenance, "head": config.get("head"), "solver": config.get("solver"),
              "train_unit": config.get("train_unit"), "image_size": config.get("image_size"),
              "imbalance": config.get("imbalance"),
              "frames": (f"{settings.get('rate_hz')} frames/s, at most {settings.get('max_frames')} per video"
                         + (", outside the ultrasound sector masked" if settings.get("mask_sector") else ""))
              if settings else "frame settings of the training run",
              "final_model": "`model.keras` + `model.json` (fitted on all files)" if model_meta else
              "none (cross-validation only)"}
    audit = _read_json(run / "audit.json")
    return {
        "title": f"covnb {config.get('recipe', '?')} recipe, {config.get('backbone', '?')}, "
                 f"{', '.join(metrics.get('classes', []))}",
        "run_folder": run.name, "classes": metrics.get("classes", []), "data": data, "recipe": recipe,
        "evaluation": {"n_folds": metrics.get("n_folds"), "seeds": metrics.get("seeds", [])},
        "results": _results_context(metrics, oof, data["samples"]),
        "calibration": _calibration_context(metrics, model_meta, run),
        "uncertainty": _uncertainty_context(metrics, run),
        "audit": audit.get("summary") if audit else (NOT_ADDRESSED + " in this run: no shortcut audit file "
                                                     "(`audit.json`) in the run folder."),
        "limits": _limits(metrics, data), "versions": _versions(model_meta, metrics),
        "claim": _claim(metrics, data, run), "covnb_version": _versions(model_meta, metrics)["covnb (card)"],
    }


def render_model_card(context: dict) -> tuple[str, str]:
    """``(markdown, html)`` of the card."""
    import jinja2
    import mistune

    template_text = importlib.resources.files("covnb").joinpath("resources/model_card.md.j2").read_text()
    environment = jinja2.Environment(autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    markdown = environment.from_string(template_text).render(**context)
    body = mistune.create_markdown(plugins=["table"])(markdown)
    title = jinja2.filters.escape(context["title"])
    html = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Model card: {title}</title><style>body{{font-family:system-ui,sans-serif;max-width:60em;"
            "margin:2em auto;padding:0 1em;line-height:1.45}table{border-collapse:collapse;margin:0.6em 0}"
            "td,th{border:1px solid #ccc;padding:0.2em 0.5em;font-size:0.92em}th{background:#f3f3f3}"
            "img{max-width:100%}code{background:#f6f6f6}</style></head><body>\n"
            f"{body}\n</body></html>\n")
    return markdown, html


def write_model_card(run_dir, samples: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``MODEL_CARD.md`` and ``MODEL_CARD.html`` into ``run_dir`` (atomically); returns their paths."""
    run = Path(run_dir)
    markdown, html = render_model_card(model_card_context(run, samples))
    paths = {"model_card_md": run / "MODEL_CARD.md", "model_card_html": run / "MODEL_CARD.html"}
    for path, text in ((paths["model_card_md"], markdown), (paths["model_card_html"], html)):
        atomic_write_text(path, text)
    return paths
