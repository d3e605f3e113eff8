"""What a training run adds so its probabilities can be trusted: calibration, uncertainty, model card.

:func:`trust_outputs` is called at the end of :func:`covnb.train.run_training`. From the run's
own files (``oof_predictions.csv``, ``folds.csv``, ``training_history.csv``) and the cached frozen
features it

* measures calibration out of fold (raw and cross-fitted maps, :mod:`covnb.calibration`) and
  draws ``reliability.png``;
* fits the map stored with the model (sidecar ``calibration`` block);
* keeps the fold models' linear heads and a density of the training features
  (``model.trust.npz`` beside ``model.keras``; sidecar ``trust`` block with the thresholds
  calibrated on held-out folds, :mod:`covnb.uncertainty`);
* measures the risk-coverage curve on held-out files (``risk_coverage.png``);
* writes ``MODEL_CARD.md`` and ``MODEL_CARD.html`` (:mod:`covnb.model_card`).

:func:`covnb.prediction_trust.annotate_predictions` (also importable from here) applies the stored
map and the uncertainty signals to the outputs of :func:`covnb.predict.predict_paths`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import keras

from covnb.calibration import DEFAULT_METHOD, evaluate_calibration, fit_final_calibration, plot_reliability
from covnb.evaluate import _labels_and_probs
from covnb.io_utils import atomic_write, atomic_write_json
from covnb.model_card import write_model_card
from covnb.models import sidecar_path
from covnb.predict import predict_paths
from covnb.prediction_trust import TRUST_SUFFIX, annotate_predictions, load_trust_arrays, trust_arrays_path
from covnb.registry import HEAD_FEATURES
from covnb.experiments.features import recipe_features, recipe_model
from covnb.trust_refits import INNER_FOLDS, fold_heads, inner_fold_predictions
from covnb.uncertainty import (LOW_CONFIDENCE_QUANTILE, MIN_FOLD_AGREEMENT, OOD_QUANTILE, feature_distance,
                               fit_feature_density, heldout_feature_distances, predictive_entropy, risk_coverage,
                               separation_auroc, video_mean_features)

__all__ = [
    "TRUST_SUFFIX",
    "inner_fold_predictions",
    "trust_outputs",
    "trust_arrays_path",
    "load_trust_arrays",
    "annotate_predictions",
    "heldout_ood_table",
    "source_shift_aurocs",
    "shift_check",
]

RISK_FRACTIONS = (0.0, 0.1, 0.2, 0.3)
#: Columns of the sample table kept in ``data_samples.csv`` (what the model card says about the data).
DATA_COLUMNS = ("sample_id", "group", "label", "kind", "probe", "modality", "view", "source", "licence", "license",
                "fps", "n_frames")


# ----------------------------------------------------------------------------- run outputs


def _video_features(frameset, config, log, client=None) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(sample ids, per-file mean clean-view pooled features, all cached features) or None when
    the recipe has no cached pooled features. Read from the feature store (the cross-validation
    filled it); what it lacks is computed by ``client``'s workers when given."""
    if config.engine != "cached" or config.trainable != "head" or config.head == "pocovid":
        return None
    classes = sorted(frameset.index["label"].unique())
    keras.utils.set_random_seed(int(config.seed))  # the cross-validation's backbone, also with random weights
    model = recipe_model(config, len(classes), config.seed)
    features = recipe_features(frameset.frames, config, model, log=None, client=client)
    ids, means = video_mean_features(features["head"][0], frameset.index["sample_id"].to_numpy())
    return ids, means, {"features": features, "model": model}


#: Evaluate calibration fully nested (inner refits of every outer fold's head) when the recipe allows;
#: :func:`covnb.backbone_comparison.compare_backbones`, whose table has no calibration, turns it off.
NESTED_CALIBRATION = True


def heldout_ood_table(ids, video_features, folds: pd.DataFrame) -> pd.DataFrame:
    """Held-out OOD score of every file (first split seed's outer folds: a density fitted on the
    other folds scores each fold)."""
    test = folds[(folds["role"] == "test") & (folds["seed"] == folds["seed"].iloc[0])]
    fold_of = test.set_index("sample_id")["fold"].reindex(ids).to_numpy()
    keep = ~pd.isna(fold_of)
    table = pd.DataFrame({"sample_id": np.asarray(ids)[keep], "fold": fold_of[keep].astype(int)})
    table["ood_score"] = heldout_feature_distances(np.asarray(video_features)[keep], table["fold"].to_numpy())
    return table


def source_shift_aurocs(ids, video_features, samples: pd.DataFrame, folds: pd.DataFrame, *,
                        column: str = "source", min_files: int = 3) -> pd.DataFrame:
    """Leave-one-source-out OOD check: for each source, densities fitted on the training folds
    WITHOUT that source score (a) held-out files of the other sources and (b) every file of the
    left-out source (mean over folds); ROC-AUC of telling (b) from (a).

    An approximation of the source-held-out protocol (issue 13) built from the patient folds.
    """
    test = folds[(folds["role"] == "test") & (folds["seed"] == folds["seed"].iloc[0])]
    fold_of = test.set_index("sample_id")["fold"].reindex(ids).to_numpy()
    info = samples.drop_duplicates("sample_id").set_index("sample_id").reindex(ids)
    if column not in info:
        return pd.DataFrame()
    source = info[column].fillna("unknown").astype(str).to_numpy()
    label = info["label"].astype(str).to_numpy()
    features = np.asarray(video_features)
    rows = []
    for name in sorted(set(source)):
        shifted = source == name
        if shifted.sum() < min_files or (~shifted).sum() < 10:
            continue
        familiar_scores, shifted_scores = [], []
        for fold in np.unique(fold_of[~pd.isna(fold_of)]):
            train = (fold_of != fold) & ~shifted
            held = (fold_of == fold) & ~shifted
            if train.sum() < 3 or not held.any():
                continue
            density = fit_feature_density(features[train])
            familiar_scores.append(feature_distance(density, features[held]))
            shifted_scores.append(feature_distance(density, features[shifted]))
        if not familiar_scores:
            continue
        shifted_mean = np.mean(shifted_scores, axis=0)
        rows.append({column: name, "files": int(shifted.sum()),
                     "labels": ", ".join(f"{k} {v}" for k, v in pd.Series(label[shifted]).value_counts().items()),
                     "auroc": separation_auroc(np.concatenate(familiar_scores), shifted_mean)})
    return pd.DataFrame(rows)


def _risk_tables(calibrated_videos: pd.DataFrame, classes, ood: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    labels, probs = _labels_and_probs(calibrated_videos, classes)
    correct = probs.argmax(axis=1) == labels
    tables = {"confidence": risk_coverage(correct, -probs.max(axis=1), RISK_FRACTIONS, labels),
              "entropy": risk_coverage(correct, predictive_entropy(probs), RISK_FRACTIONS, labels)}
    if ood is not None and len(ood):
        first = calibrated_videos[calibrated_videos["seed"] == calibrated_videos["seed"].iloc[0]]
        merged = first.merge(ood[["sample_id", "ood_score"]], on="sample_id", how="inner")
        y, p = _labels_and_probs(merged, classes)
        tables["ood_score"] = risk_coverage(p.argmax(axis=1) == y, merged["ood_score"].to_numpy(), RISK_FRACTIONS, y)
    return tables


def _plot_risk_coverage(calibrated_videos, classes):
    import matplotlib.pyplot as plt

    labels, probs = _labels_and_probs(calibrated_videos, classes)
    correct = probs.argmax(axis=1) == labels
    fractions = np.linspace(0, 0.9, 46)
    curve = risk_coverage(correct, -probs.max(axis=1), fractions, labels)
    figure, axis = plt.subplots(figsize=(4.8, 3.6))
    axis.plot(curve["coverage"], curve["accuracy"], label="accuracy")
    axis.plot(curve["coverage"], curve["balanced_accuracy"], label="balanced accuracy", linestyle="--")
    for fraction in RISK_FRACTIONS[1:]:
        axis.axvline(1 - fraction, color="grey", linewidth=0.6, linestyle=":")
    axis.invert_xaxis()
    axis.set_xlabel("coverage (share of files the model answers)")
    axis.set_ylabel("on the answered files")
    axis.set_title("risk-coverage: abstain on the least confident files\n(calibrated, out-of-fold videos)",
                   fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def trust_outputs(out_dir, result: dict, *, frameset=None, config=None, samples: pd.DataFrame | None = None,
                  n_boot: int = 1000, figures: bool = True, log: Callable[[str], None] | None = print,
                  client=None) -> dict:
    """Calibration, uncertainty and model card of the run in ``out_dir`` (see the module doc).

    Adds ``calibration`` and ``uncertainty`` blocks to ``result`` and ``metrics.json``, the
    ``calibration`` and ``trust`` blocks to ``model.json`` when a final model was saved, and
    writes ``reliability.png``, ``risk_coverage.png``, ``calibrated_oof_predictions.csv``,
    ``heldout_ood_scores.csv``, ``MODEL_CARD.md`` and ``MODEL_CARD.html``. Returns ``result``.
    ``client``: a :class:`distributed.Client` (:mod:`covnb.cluster`) whose workers compute the
    frozen features missing from the store and the nested calibration's inner refits
    (:func:`inner_fold_predictions`); the outputs are the same as without it. The fold heads,
    densities and tables are computed here.
    """
    out = Path(out_dir)
    classes = list(result["classes"])
    paths = dict(result.get("paths", {}))
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"sample_id": str, "group": str, "label": str})
    folds = pd.read_csv(out / "folds.csv", dtype={"sample_id": str, "group": str, "label": str})
    history = pd.read_csv(out / "training_history.csv") if (out / "training_history.csv").is_file() else pd.DataFrame()

    if samples is not None:
        keep = [c for c in DATA_COLUMNS if c in samples]
        paths["data_samples"] = out / "data_samples.csv"
        samples[keep].to_csv(paths["data_samples"], index=False)
    features = (_video_features(frameset, config, log, client) if frameset is not None and config is not None
                else None)
    calibration, tables = _calibration_outputs(out, oof, classes, paths, n_boot=n_boot,
                                               seed=int(result.get("config", {}).get("seed", 0)), log=log,
                                               inner=_inner_tables(frameset, config, classes, folds, history, features,
                                                                  client=client))
    calibrated_videos = tables["video"][DEFAULT_METHOD]
    uncertainty, arrays = _uncertainty_outputs(out, calibrated_videos, classes, paths, folds=folds, history=history,
                                               frameset=frameset, config=config, samples=samples, features=features)
    if figures:
        import matplotlib.pyplot as plt

        for name, figure in (("reliability", plot_reliability(tables, classes, methods=("raw", DEFAULT_METHOD, "temperature"),
                                                              summary=calibration["levels"])),
                             ("risk_coverage", _plot_risk_coverage(calibrated_videos, classes))):
            paths[name] = out / f"{name}.png"
            figure.savefig(paths[name], dpi=100, bbox_inches="tight")
            plt.close(figure)
    model_path = paths.get("model")
    if model_path is not None and Path(model_path).is_file():
        _update_model_files(model_path, paths, arrays, calibration["final_map"], uncertainty)

    result["calibration"] = calibration
    result["uncertainty"] = uncertainty
    result["paths"] = {k: str(v) for k, v in paths.items()}
    atomic_write_json(out / "metrics.json", result)
    card_paths = write_model_card(out, samples=samples)
    result["paths"].update({k: str(v) for k, v in card_paths.items()})
    atomic_write_json(out / "metrics.json", result)
    return result


def _inner_tables(frameset, config, classes, folds, history, features, *, client=None) -> dict | None:
    """Inner out-of-fold predictions for fully nested calibration, when the recipe allows it."""
    if features is None or not len(history) or not NESTED_CALIBRATION:
        return None
    return inner_fold_predictions(frameset, config, classes, folds, history=history, features=features[2]["features"],
                                  model=features[2]["model"], client=client)


def _calibration_outputs(out: Path, oof: pd.DataFrame, classes, paths: dict, *, n_boot: int, seed: int,
                         log, inner: dict | None) -> tuple[dict, dict]:
    """Nested (or cross-fitted) calibration of the out-of-fold predictions and the final map:
    (``calibration`` block of ``metrics.json``, calibrated tables by level and method). Writes the
    calibrated frames."""
    summary, tables = evaluate_calibration(oof, classes, n_boot=n_boot, seed=seed, inner_tables=inner)
    calibration_block = fit_final_calibration(oof, classes, DEFAULT_METHOD)
    if inner is not None:
        evaluation = (f"fully nested: for outer fold k, the method ('auto': none, temperature, vector, Platt or "
                      f"isotonic, by the ECE of maps cross-fitted over {INNER_FOLDS} inner patient-grouped folds) and "
                      "the map are fitted on inner out-of-fold predictions of fold k's training data only, per level")
    else:
        evaluation = ("cross-fitted: the map of outer fold k is fitted on the other outer folds' out-of-fold "
                      "predictions of the same split seed, never on fold k")
    calibration = {"method": DEFAULT_METHOD, "evaluation": evaluation,
                   "ece_bins": summary["frame"]["raw"]["ece_bins"], "levels": summary, "final_map": calibration_block}
    if inner is not None:
        calibration["selected_per_outer_fold"] = {
            level: pd.Series(list(tables[level][DEFAULT_METHOD].attrs.get("selected", {}).values())).value_counts().to_dict()
            for level in ("frame", "video")}
    paths["calibrated_oof_predictions"] = out / "calibrated_oof_predictions.csv"
    tables["frame"][DEFAULT_METHOD].to_csv(paths["calibrated_oof_predictions"], index=False)
    if log:
        for level in ("frame", "video"):
            raw, cal = summary[level]["raw"]["ece"], summary[level][DEFAULT_METHOD]["ece"]
            log(f"calibration ({level}, out of fold): ECE {raw['estimate']:.3f} raw -> {cal['estimate']:.3f} "
                f"{DEFAULT_METHOD} [{cal['low']:.3f}, {cal['high']:.3f}]")
    return calibration, tables


def _uncertainty_outputs(out: Path, calibrated_videos: pd.DataFrame, classes, paths: dict, *, folds: pd.DataFrame,
                         history: pd.DataFrame, frameset, config, samples, features) -> tuple[dict, dict]:
    """Held-out thresholds, fold heads and feature density: (``uncertainty`` block, arrays of ``model.trust.npz``)."""
    _, video_probs = _labels_and_probs(calibrated_videos, classes)
    thresholds = {"min_confidence": float(np.quantile(video_probs.max(axis=1), LOW_CONFIDENCE_QUANTILE)),
                  "min_confidence_rule": f"{LOW_CONFIDENCE_QUANTILE:.0%} quantile of the held-out files' calibrated "
                                         "top probability (video level)"}
    arrays: dict[str, np.ndarray] = {}
    ood = None
    shift = pd.DataFrame()
    if features is not None:
        ids, video_features, extra = features
        ood = heldout_ood_table(ids, video_features, folds)
        paths["heldout_ood_scores"] = out / "heldout_ood_scores.csv"
        ood.to_csv(paths["heldout_ood_scores"], index=False)
        thresholds["max_ood_score"] = float(np.quantile(ood["ood_score"], OOD_QUANTILE))
        thresholds["max_ood_score_rule"] = (f"{OOD_QUANTILE:.0%} quantile of held-out files' scores (densities fitted "
                                            "on the other outer folds)")
        arrays.update({f"density_{k}": v for k, v in fit_feature_density(video_features).items()})
        heads = fold_heads(frameset, config, classes, folds, history=history, features=extra["features"],
                           model=extra["model"]) \
            if len(history) else None
        if heads is not None:
            arrays["fold_kernels"], arrays["fold_biases"] = heads
            thresholds["min_fold_agreement"] = MIN_FOLD_AGREEMENT
        if samples is not None:
            shift = source_shift_aurocs(ids, video_features, samples, folds)
    risk = _risk_tables(calibrated_videos, classes, ood)
    uncertainty = {"thresholds": thresholds, "fold_heads": int(len(arrays.get("fold_biases", []))),
                   "risk_coverage": {k: v.to_dict(orient="records") for k, v in risk.items()},
                   "risk_coverage_note": "calibrated out-of-fold videos, every split seed pooled; abstain on the "
                                         "given fraction of least certain files"}
    if ood is not None:
        uncertainty["heldout_ood_score_quantiles"] = {str(q): float(ood["ood_score"].quantile(q))
                                                      for q in (0.5, 0.9, 0.95)}
    if len(shift):
        uncertainty["leave_one_source_out_auroc"] = shift.to_dict(orient="records")
        uncertainty["leave_one_source_out_note"] = ("approximation of source-held-out evaluation: for each source, "
                                                    "densities fitted on the training folds without it score held-out "
                                                    "files of the other sources vs the source's files")
    return uncertainty, arrays


def _update_model_files(model_path, paths: dict, arrays: dict, calibration_block: dict, uncertainty: dict) -> None:
    """Write ``model.trust.npz`` and the ``calibration`` and ``trust`` blocks of the model's sidecar."""
    if arrays:
        trust_file = trust_arrays_path(model_path)
        atomic_write(trust_file, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
        paths["trust_arrays"] = trust_file
    side = sidecar_path(model_path)
    metadata = json.loads(side.read_text())
    metadata["calibration"] = calibration_block
    metadata["trust"] = {"file": trust_arrays_path(model_path).name if arrays else None,
                         "thresholds": uncertainty["thresholds"], "fold_heads": uncertainty["fold_heads"],
                         "feature_layer": f"{HEAD_FEATURES} (video mean of the clean frames)"}
    atomic_write_json(side, metadata)


def shift_check(run_dir, paths, batch_size: int = 32) -> dict:
    """How a run's model scores files of a shifted domain (e.g. the synthetic phantom shown to a
    model trained on real data) against its held-out files: ROC-AUC of the OOD score separating
    them (``heldout_ood_scores.csv`` of the run), and how many are flagged ``uncertain``."""
    run = Path(run_dir)
    heldout = pd.read_csv(run / "heldout_ood_scores.csv")
    predictions = predict_paths(run / "model.keras", paths, batch_size=batch_size)
    videos = predictions.videos
    threshold = json.loads((run / "model.json").read_text())["trust"]["thresholds"].get("max_ood_score")
    return {"files": int(len(videos)), "auroc": separation_auroc(heldout["ood_score"], videos["ood_score"]),
            "shifted_median_score": float(videos["ood_score"].median()),
            "heldout_median_score": float(heldout["ood_score"].median()),
            "flagged_outside": float((videos["ood_score"] > threshold).mean()) if threshold else None,
            "flagged_uncertain": float(videos["uncertain"].mean()),
            "heldout_flagged_outside": float((heldout["ood_score"] > threshold).mean()) if threshold else None}
