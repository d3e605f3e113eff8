"""A whole training run, what ``covnb train`` does: data -> frames -> cross-validation -> metrics,
out-of-fold CSVs, figures -> final model (:func:`run_training`), and its result for a notebook
(:class:`TrainingResult`)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd

import keras

from covnb import __version__
from covnb.datasets import (Dataset, check_usable, data_fingerprint, default_task, load_dataset,
                            merge_duplicate_groups, select_task)
from covnb.evaluate import (plot_confusion_matrices, plot_model_selection, plot_roc_curves, plot_training_curves,
                            pooled_metrics, summarize_cv, video_predictions)
from covnb.experiments.crossval import CVResult, _split_samples, fit_final_model, run_cross_validation
from covnb.experiments.recipes import TrainConfig, recipe_config
from covnb.frames import FrameSettings, extract_frames
from covnb.io_utils import to_jsonable
from covnb.models import save_model
from covnb.splits import source_held_out_folds

__all__ = ["PROTOCOL_KEYS", "TrainingResult", "run_training", "model_metadata", "save_final_model",
           "results_by_source", "results_by_kind", "write_figures"]

PROTOCOL_KEYS = {"source": "source_held_out", "patient": "patient_cv"}


class TrainingResult(dict):
    """What :func:`run_training` returns: the metrics dict written to ``metrics.json`` (so every
    existing ``result[...]`` read keeps working), with accessors for a notebook.

    ``result.cv`` is the headline :class:`~covnb.experiments.crossval.CVResult` (in memory);
    :meth:`oof` reads an out-of-fold table; :attr:`figures`, :attr:`model_path`,
    :attr:`metrics_path` are paths; :attr:`headline_metrics` the headline protocol's block.
    """

    def __init__(self, metrics: dict, cv: CVResult | None = None):
        super().__init__(metrics)
        self.cv = cv

    @property
    def paths(self) -> dict[str, Path]:
        return {name: Path(path) for name, path in self.get("paths", {}).items()}

    @property
    def out_dir(self) -> Path:
        return self.paths["metrics"].parent

    @property
    def metrics_path(self) -> Path:
        return self.paths["metrics"]

    @property
    def model_path(self) -> Path | None:
        return self.paths.get("model")

    @property
    def figures(self) -> dict[str, Path]:
        """Every figure written, by name (``confusion_videos``, ``roc_videos``, ``reliability``, ...)."""
        return {name: path for name, path in self.paths.items() if path.suffix == ".png"}

    @property
    def headline_metrics(self) -> dict:
        return self[self["headline"]]

    def oof(self, protocol: str | None = None, *, baseline: bool = False) -> pd.DataFrame:
        """Out-of-fold predictions of ``protocol`` (``"source_held_out"``, ``"patient_cv"``; default
        the headline), or of the linear-probe baseline beside it."""
        suffix = "" if protocol in (None, self["headline"]) else f"_{protocol}"
        key = f"{'baseline_' if baseline else ''}oof_predictions{suffix}"
        if key not in self.get("paths", {}):
            raise KeyError(f"this run wrote no {key}.csv (known: {sorted(self.get('paths', {}))})")
        return pd.read_csv(self["paths"][key], dtype={"sample_id": str, "group": str, "label": str})


def _baseline(frameset, config: TrainConfig, classes, *, n_folds: int, seeds, n_boot: int, log, group_by: str,
              positive_label: str, video_balanced_accuracy: float, client=None) -> tuple[dict, pd.DataFrame]:
    """The linear probe on the same backbone, folds and seeds: its summary (with the paired
    difference to ``config``'s ``video_balanced_accuracy``) and its out-of-fold predictions."""
    probe = recipe_config("linear_probe", backbone=config.backbone, weights=config.weights, alpha=config.alpha,
                          image_size=config.image_size, seed=config.seed)
    cv = run_cross_validation(frameset, probe, n_folds=n_folds, seeds=seeds, classes=classes,
                              log=(lambda message: log(f"baseline {message}")) if log else None,
                              group_by=group_by, positive_label=positive_label, client=client)
    summary = summarize_cv(cv.oof, classes, n_boot=n_boot)
    entry = {"recipe": "linear_probe", "config": probe.to_dict(), "cv_seconds": cv.seconds}
    for level in ("frame", "video_mean"):
        entry[level] = {k: summary[level][k] for k in ("folds_mean", "folds_std", "pooled_mean", "pooled_std",
                                                        "bootstrap_95ci") if k in summary[level]}
    entry["by_kind"] = results_by_kind(cv.oof, classes)
    ours = video_balanced_accuracy
    theirs = summary["video_mean"]["pooled_mean"]["balanced_accuracy"]
    entry["video_balanced_accuracy_difference"] = ours - theirs
    if log:
        log(f"baseline (linear probe, same {PROTOCOL_KEYS[group_by]} folds): video balanced accuracy {theirs:.3f} vs "
            f"{ours:.3f} for recipe {config.recipe} ({ours - theirs:+.3f})")
    return entry, cv.oof


def _videos_with(oof: pd.DataFrame, classes, columns=("source", "kind")) -> pd.DataFrame:
    videos = video_predictions(oof, classes, "mean")
    for column in columns:
        if column in oof:
            videos[column] = videos["sample_id"].map(oof.drop_duplicates("sample_id").set_index("sample_id")[column])
    return videos


def results_by_source(oof: pd.DataFrame, classes) -> list[dict]:
    """Per source and class, video level (mean frame probability): files and the share classified
    right, mean over split seeds. Under source-held-out folds, the rows of a held-out positive
    source are its sensitivity on a source never seen in training."""
    if "source" not in oof:
        return []
    videos = _videos_with(oof, classes)
    videos["correct"] = videos[[f"prob_{c}" for c in classes]].to_numpy().argmax(axis=1) == \
        videos["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    per_seed = videos.groupby(["seed", "source", "label"]).agg(files=("correct", "size"), correct=("correct", "mean"))
    table = per_seed.groupby(["source", "label"]).agg(files=("files", "first"), share_correct=("correct", "mean"))
    folds = videos.groupby(["source", "label"])["fold"].agg(lambda f: sorted({int(x) for x in f}))
    table["test_folds"] = folds
    return [{"source": str(source), "label": str(label), "files": int(row.files),
             "share_correct": float(row.share_correct), "test_folds": row.test_folds}
            for (source, label), row in table.iterrows()]


def results_by_kind(oof: pd.DataFrame, classes) -> dict:
    """Video-level metrics (pooled per seed, mean over seeds) of videos and still images separately."""
    if "kind" not in oof:
        return {}
    result = {}
    for kind, part in oof.groupby("kind"):
        pooled = pooled_metrics(part, classes, "video_mean").drop(columns=["seed"])
        entry = {"files": int(part["sample_id"].nunique())}
        for column in pooled.columns:
            if column.endswith("_support") or column == "n":
                continue
            entry[column] = float(pooled[column].mean())
        for name in classes:
            entry[f"{name}_files"] = int(part.loc[part["label"] == name, "sample_id"].nunique())
        result[str(kind)] = entry
    return result


def _protocol_block(cv: CVResult, classes, n_boot: int) -> dict:
    block = summarize_cv(cv.oof, classes, n_boot=n_boot)
    block.update(group_by=cv.group_by, cv_seconds=cv.seconds, by_kind=results_by_kind(cv.oof, classes),
                 by_source=results_by_source(cv.oof, classes),
                 splits={str(seed): attrs for seed, attrs in cv.protocol.items()})
    notes = []
    for attrs in cv.protocol.values():
        notes += [n for n in attrs.get("notes", []) if n not in notes]
    block["notes"] = notes
    if "selected" in cv.oof:
        chosen = cv.oof.drop_duplicates(["seed", "fold"])["selected"].value_counts()
        block["selected"] = {str(k): int(v) for k, v in chosen.items()}
    return block


# ----------------------------------------------------------------------------- steps of a run


class _Data(NamedTuple):
    samples: pd.DataFrame
    root: str | None
    skipped: pd.DataFrame
    grouping: str
    merges: list


def _load(data, task: str | None) -> _Data:
    """The sample table of ``data`` (folder, None for the phantom, Dataset or table) for ``task``."""
    if isinstance(data, pd.DataFrame):
        samples, merges = merge_duplicate_groups(data)
        return _Data(samples, None, pd.DataFrame(columns=["path", "reason"]), "the table's group column", merges)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    samples = select_task(dataset.samples, task or default_task(dataset))
    return _Data(samples, str(dataset.root), dataset.skipped, dataset.grouping, dataset.merges)


def _frames(loaded: _Data, config: TrainConfig, frame_settings, log, *, n_folds: int, seeds, client=None):
    """Frame settings, the frame set and every skipped file (load and frame stages)."""
    samples = loaded.samples
    check_usable(samples, loaded.skipped)  # before any decoding
    settings = frame_settings or FrameSettings(image_size=config.image_size)
    if int(settings.image_size) != int(config.image_size):
        raise ValueError(f"frame_settings.image_size {settings.image_size} != config.image_size {config.image_size}")
    if log:
        log(f"frames: {len(samples)} files at {settings.rate_hz:g} Hz, at most {settings.max_frames} per video "
            "(decoded once, then read from the cache)")
    frameset = extract_frames(samples, settings, progress=bool(log) and sys.stderr.isatty(), client=client)
    skipped = pd.concat([loaded.skipped.assign(stage="load"), frameset.skipped.assign(stage="frames")],
                        ignore_index=True)
    if log:
        log(f"data: {samples['sample_id'].nunique()} files, {samples['group'].nunique()} patients, "
            f"{len(frameset)} frames, {len(skipped)} skipped; recipe {config.recipe}, backbone "
            f"{config.backbone}, {n_folds}-fold CV, seeds {list(seeds)}")
        log(f"grouping: {loaded.grouping}" + (f"; {len(loaded.merges)} merge(s) of groups sharing identical files"
                                              if loaded.merges else ""))
        for item in skipped.head(20).itertuples():
            log(f"  skipped {item.path}: {item.reason}")
    check_usable(frameset.index, skipped)
    return settings, frameset, skipped


def _usable_protocols(frameset, protocols, *, n_folds: int, seed: int, positive_label: str, log):
    """The protocols to run (headline first) and the note of a source-held-out split that is impossible."""
    protocols = [p for p in protocols if p in PROTOCOL_KEYS] or ["patient"]
    if "source" not in protocols:
        return protocols, {}
    probe_split = source_held_out_folds(_split_samples(frameset.index), positive_label=positive_label,
                                        n_splits=n_folds, seed=seed)
    if probe_split.attrs["protocol"] == "source":
        return protocols, {}
    if log:
        log(f"source-held-out evaluation skipped: {probe_split.attrs['notes'][0]}")
    return [p for p in protocols if p != "source"] or ["patient"], {"available": False,
                                                                     "notes": probe_split.attrs["notes"]}


def _run_protocols(frameset, config: TrainConfig, protocols, classes, out: Path, paths: dict, *, n_folds: int,
                   seeds, n_boot: int, baseline: bool, log, positive_label: str,
                   client=None) -> tuple[dict, CVResult]:
    """Cross-validate under every protocol; write the OOF CSVs (and the headline's history and
    folds) into ``out``, adding them to ``paths``. Returns the metric blocks and the headline CV."""
    blocks, headline_cv = {}, None
    for position, group_by in enumerate(protocols):
        key = PROTOCOL_KEYS[group_by]
        suffix = "" if position == 0 else f"_{key}"
        if log:
            log(f"--- {key.replace('_', ' ')} cross-validation" + (" (headline)" if position == 0 else ""))
        cv = run_cross_validation(frameset, config, n_folds=n_folds, seeds=seeds, log=log, classes=classes,
                                  group_by=group_by, positive_label=positive_label, client=client)
        block = _protocol_block(cv, classes, n_boot)
        if log:
            for note in block["notes"]:
                log(f"{key}: {note}")
        paths[f"oof_predictions{suffix}"] = out / f"oof_predictions{suffix}.csv"
        cv.oof.to_csv(paths[f"oof_predictions{suffix}"], index=False)
        if baseline and config.recipe != "linear_probe":
            block["baseline"], baseline_oof = _baseline(
                frameset, config, classes, n_folds=n_folds, seeds=seeds, n_boot=n_boot, log=log, group_by=group_by,
                positive_label=positive_label, client=client,
                video_balanced_accuracy=block["video_mean"]["pooled_mean"]["balanced_accuracy"])
            paths[f"baseline_oof_predictions{suffix}"] = out / f"baseline_oof_predictions{suffix}.csv"
            baseline_oof.to_csv(paths[f"baseline_oof_predictions{suffix}"], index=False)
        blocks[key] = block
        if position == 0:
            headline_cv = cv
            cv.histories.to_csv(paths["training_history"], index=False)
            cv.folds.to_csv(paths["folds"], index=False)
    return blocks, headline_cv


def _data_name(samples: pd.DataFrame, data_root: str | None) -> str:
    from covnb.cache import cache_dir

    if data_root is None:
        return f"{samples['sample_id'].nunique()} given samples"
    if Path(data_root).parent == cache_dir("phantom"):
        return "synthetic phantom (not real patients)"
    return f"data {Path(data_root).name}"


def write_figures(cv: CVResult, out_dir: str | Path, *, config: TrainConfig, data_name: str, n_folds: int,
                  seeds) -> dict[str, Path]:
    """The figures of a cross-validation (confusion matrices, ROC, training curves or model
    selection), each saying what, on which data, with which recipe, at which level. Returns
    ``{name: path}`` of the PNGs written into ``out_dir``."""
    import matplotlib.pyplot as plt

    classes = cv.classes
    videos = video_predictions(cv.oof, classes, "mean")
    about = (f"{data_name}, recipe {config.recipe} ({config.backbone}), out-of-fold over {n_folds} patient folds"
             f" x {len(list(seeds))} split seed(s)")
    frame_title = f"Frame level, {len(cv.oof)} frame predictions: {about}"
    video_title = f"Video level (mean frame probability), {len(videos)} video predictions:\n{about}"
    figures = [("confusion_frames", plot_confusion_matrices(cv.oof, classes, title=frame_title)),
               ("confusion_videos", plot_confusion_matrices(videos, classes, title=video_title)),
               ("roc_videos", plot_roc_curves(videos, classes, title=f"ROC, one class vs the rest. {video_title}"))]
    fitted = cv.histories
    if len(fitted) and "loss" in fitted and not fitted["loss"].isna().all():
        figures.append(("training_curves", plot_training_curves(fitted, title=f"Training curves per fold: {about}")))
    elif len(fitted) and "C" in fitted:  # a logistic head: what was fitted is the C chosen by inner CV
        figures.append(("model_selection", plot_model_selection(fitted, f"Model selection per fold: {about}")))
    paths = {}
    for name, figure in figures:
        paths[name] = Path(out_dir) / f"{name}.png"
        figure.savefig(paths[name], dpi=100, bbox_inches="tight")
        plt.close(figure)
    return paths


def model_metadata(config: TrainConfig, frame_settings: FrameSettings, classes, *, cv_protocol: str,
                   cv_metrics: dict, fingerprint: str, final_history: dict) -> dict:
    """The sidecar (``model.json``) of a trained model: classes, how frames were taken, backbone,
    recipe, the cross-validated metrics of ``cv_protocol`` and the data it saw. The one place
    these keys are defined (:func:`covnb.models.validate_sidecar` checks them on load)."""
    return {"classes": list(classes), "image_size": int(config.image_size),
            "frame_settings": dataclasses.asdict(frame_settings), "rate_hz": frame_settings.rate_hz,
            "max_frames": frame_settings.max_frames, "backbone": config.backbone, "weights": str(config.weights),
            "alpha": config.alpha, "preprocessing": "raw RGB 0..255 in; backbone preprocessing inside the model",
            "training": config.to_dict(), "cv_protocol": cv_protocol,
            "cv_metrics": {k: cv_metrics[k] for k in ("video_mean", "frame") if k in cv_metrics},
            "data_fingerprint": fingerprint, "covnb_version": __version__, "final_history": final_history}


def save_final_model(model: keras.Model, path: str | Path, *, config: TrainConfig, frame_settings: FrameSettings,
                     classes, cv_protocol: str, cv_metrics: dict, fingerprint: str, final_history: dict) -> Path:
    """Save a trained model with its sidecar (:func:`model_metadata`): the one writer of a
    trained model's ``model.json``. Returns the model's path."""
    metadata = model_metadata(config, frame_settings, classes, cv_protocol=cv_protocol, cv_metrics=cv_metrics,
                              fingerprint=fingerprint, final_history=final_history)
    return save_model(model, path, metadata)


def run_training(data=None, out_dir: str | Path = "covnb-train", config: TrainConfig | None = None, *,
                 task: str | None = None, n_folds: int = 5, seeds=(0,), frame_settings=None,
                 final_model: bool = True, figures: bool = True, n_boot: int = 1000, baseline: bool = True,
                 log: Callable[[str], None] | None = print, protocols=("source", "patient"),
                 positive_label: str = "covid", cluster=None) -> TrainingResult:
    """What ``covnb train`` does: data -> frames -> CV -> metrics, OOF CSV, figures -> final model.

    Source-held-out folds (every test fold's ``positive_label`` files from sources absent from its
    training data, :func:`covnb.splits.source_held_out_folds`) are the headline, patient-grouped
    folds beside them; an impossible source-held-out split (one positive source) is skipped with
    a note. Then calibration, uncertainty and the model card (:func:`covnb.trust.trust_outputs`).

    Parameters
    ----------
    data : str, Path, covnb.datasets.Dataset, pandas.DataFrame or None
        A data folder, a loaded dataset, a sample table, or None for the synthetic phantom.
    out_dir : str or Path
        Receives ``metrics.json``, ``oof_predictions.csv`` (the headline protocol;
        ``oof_predictions_<protocol>.csv`` for the others), ``baseline_oof_predictions*.csv``,
        ``training_history.csv``, ``folds.csv``, figures (``*.png``), ``model.keras`` +
        ``model.json`` and the trust outputs.
    config : TrainConfig, optional
        The recipe (default: ``recipe_config("default")``).
    task : str, optional
        The classification task of a folder (default: :func:`covnb.datasets.default_task`).
    n_folds : int
        Outer folds per split seed.
    seeds : sequence of int
        Split seeds.
    frame_settings : covnb.frames.FrameSettings, optional
        How frames are taken (its image size must be ``config.image_size``).
    final_model : bool
        Also fit the recipe on all the data and save it.
    figures : bool
        Write the figures.
    n_boot : int
        Bootstrap resamples of the confidence intervals.
    baseline : bool
        Also cross-validate the ``"linear_probe"`` recipe (same backbone, folds, seeds) and report
        it beside the recipe (``["baseline"]`` of each protocol block).
    log : callable or None
        Receives one progress line at a time (None: silent).
    protocols : sequence of {"source", "patient"}
        The cross-validations to run, the first one the headline.
    positive_label : str
        The class whose sources are held out (and the headline class of the trust outputs).
    cluster : str or distributed.Client, optional
        Where frame decoding, the frozen features and the cross-validation folds run (the final
        model's missing features too; :mod:`covnb.cluster`): ``"local"``,
        ``"local:N"``, a scheduler address ``"tcp://host:port"`` or a Client; None: ``$COVNB_SCHEDULER``
        when set, else this process. The results are the same as in this process.

    Returns
    -------
    TrainingResult
        The metrics dict (``metrics["source_held_out"]``, ``metrics["patient_cv"]``; the top-level
        metric keys repeat the headline protocol's, ``metrics["headline"]``; ``["paths"]`` of every
        file written), with ``.cv`` (the headline :class:`CVResult`), ``.oof()``, ``.figures``,
        ``.model_path``.

    Example
    -------
    >>> result = run_training(None, "runs/phantom", recipe_config("linear_probe"), n_folds=3, log=None)
    >>> result.headline_metrics["video_mean"]["pooled_mean"]["balanced_accuracy"]  # doctest: +SKIP
    >>> result.oof().head(), result.figures["roc_videos"], result.model_path  # doctest: +SKIP
    """
    from covnb.cluster import open_cluster

    config = config or recipe_config("default")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = _load(data, task)
    with open_cluster(cluster, log=log) as client:
        settings, frameset, skipped = _frames(loaded, config, frame_settings, log, n_folds=n_folds, seeds=seeds,
                                              client=client)
        return _train_on(loaded, config, out, settings, frameset, skipped, n_folds=n_folds, seeds=seeds,
                         final_model=final_model, figures=figures, n_boot=n_boot, baseline=baseline, log=log,
                         protocols=protocols, positive_label=positive_label, client=client)


def _train_on(loaded: _Data, config: TrainConfig, out: Path, settings, frameset, skipped, *, n_folds: int, seeds,
              final_model: bool, figures: bool, n_boot: int, baseline: bool, log, protocols, positive_label: str,
              client) -> TrainingResult:
    """The cross-validations, figures, final model and trust outputs of :func:`run_training`."""
    classes = sorted(frameset.index["label"].unique())
    protocols, skipped_notes = _usable_protocols(frameset, protocols, n_folds=n_folds, seed=int(seeds[0]),
                                                 positive_label=positive_label, log=log)
    paths = {"training_history": out / "training_history.csv", "folds": out / "folds.csv",
             "metrics": out / "metrics.json"}
    blocks, cv = _run_protocols(frameset, config, protocols, classes, out, paths, n_folds=n_folds, seeds=seeds,
                                n_boot=n_boot, baseline=baseline, log=log, positive_label=positive_label,
                                client=client)
    headline = PROTOCOL_KEYS[protocols[0]]
    metrics = blocks[headline]
    if figures:
        paths.update(write_figures(cv, out, config=config, data_name=_data_name(loaded.samples, loaded.root),
                                   n_folds=n_folds, seeds=seeds))
    fingerprint = data_fingerprint(loaded.samples)
    result = {"config": config.to_dict(), "classes": classes, "n_folds": n_folds, "seeds": list(seeds),
              "data_fingerprint": fingerprint, "data_root": loaded.root,
              "cv_seconds": sum(b["cv_seconds"] for b in blocks.values()), "headline": headline,
              **{k: v for k, v in metrics.items() if k != "cv_seconds"}, **blocks,
              "grouping": loaded.grouping, "group_merges": loaded.merges, "skipped": skipped.to_dict("records")}
    if skipped_notes:
        result["source_held_out"] = skipped_notes
    if final_model:
        started = time.perf_counter()
        model, histories = fit_final_model(frameset, config, classes, log=log, group_by=protocols[0],
                                           positive_label=positive_label, client=client)
        paths["model"] = save_final_model(model, out / "model.keras", config=config, frame_settings=settings,
                                          classes=classes, cv_protocol=headline, cv_metrics=metrics,
                                          fingerprint=fingerprint, final_history=histories)
        result["final_model_seconds"] = time.perf_counter() - started
    result["paths"] = {k: str(v) for k, v in paths.items()}
    paths["metrics"].write_text(json.dumps(to_jsonable(result), indent=2))
    from covnb.trust import trust_outputs  # calibration, uncertainty, model card (issue 14); imports this package

    result = trust_outputs(out, result, frameset=frameset, config=config, samples=loaded.samples, n_boot=n_boot,
                           figures=figures, log=log, client=client)
    return TrainingResult(result, cv=cv)
