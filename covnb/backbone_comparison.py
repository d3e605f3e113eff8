"""Which backbone: the same recipe on several ImageNet backbones, same folds, one table and figure.

Transfer learning from ImageNet (Yosinski et al., NeurIPS 2014; Kornblith et al., CVPR 2019,
"Do better ImageNet models transfer better?"): whether a bigger ImageNet backbone helps on lung
images is an empirical question, answered here by running covnb's default recipe and its
linear-probe baseline on each backbone with the same patient-grouped folds and split seeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

__all__ = ["compare_backbones", "comparison_row", "plot_backbone_comparison", "feature_seconds_per_frame"]


def feature_seconds_per_frame(backbone: str, *, image_size: int = 224, weights="imagenet",
                              n_frames: int = 32, batch_size: int = 16) -> float:
    """Seconds per frame of the frozen backbone's forward pass (after one warm-up batch)."""
    from covnb.backbones import feature_extractor

    model = feature_extractor(backbone, image_size, weights)
    frames = np.random.default_rng(0).uniform(0, 255, (n_frames, image_size, image_size, 3)).astype("float32")
    model.predict(frames[:batch_size], batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    model.predict(frames, batch_size=batch_size, verbose=0)
    return (time.perf_counter() - started) / n_frames


def comparison_row(metrics: dict, *, positive: str = "covid") -> dict:
    """One table row from a :func:`covnb.train.run_training` metrics dict (video level, mean of seeds)."""
    config = metrics.get("config", {})
    video = metrics["video_mean"]["pooled_mean"]
    spread = metrics["video_mean"].get("pooled_std", {})
    probe = (metrics.get("baseline") or {}).get("video_mean", {}).get("pooled_mean", {})
    nan = float("nan")
    return {
        "backbone": config.get("backbone"),
        "image_size": config.get("image_size"),
        "balanced_accuracy": video.get("balanced_accuracy", nan),
        "balanced_accuracy_sd_seeds": spread.get("balanced_accuracy", nan),
        f"{positive}_sensitivity": video.get(f"{positive}_sensitivity", nan),
        f"{positive}_specificity": video.get(f"{positive}_specificity", nan),
        "macro_auc": video.get("macro_auc", nan),
        "linear_probe_balanced_accuracy": probe.get("balanced_accuracy", nan),
        "cv_seconds": metrics.get("cv_seconds", nan),
    }


def compare_backbones(data, backbones=("efficientnet_lite0",), *, seeds=(0,), n_folds: int = 5,
                      task: str | None = None, weights="imagenet", image_size: int = 224, frame_settings=None,
                      out_dir: str | Path | None = None, n_boot: int = 200, time_features: bool = True,
                      protocols=("patient",), cluster=None, log: Callable[[str], None] | None = print):
    """Cross-validate covnb's default recipe (and its linear probe) on each backbone.

    Same data, task, patient-grouped ``n_folds``-fold split and split ``seeds`` for every
    backbone (``covnb train --backbone NAME --seeds ... --no-final-model`` each). Returns
    ``(table, figure)``: one row per backbone (video-level balanced accuracy, sensitivity and
    specificity of COVID-19 when present, the linear probe's balanced accuracy, milliseconds per
    frame of the frozen backbone) and a bar chart of them. ``frame_settings``: a
    :class:`covnb.frames.FrameSettings` (its ``image_size`` wins). ``out_dir`` keeps each run's files.
    ``protocols``: as :func:`covnb.train.run_training`; the table reads the first one
    (patient-grouped by default; ``("source",)`` for source-held-out folds). ``cluster``: a Dask
    cluster spec or client (:mod:`covnb.cluster`), opened once for the whole grid: every backbone's
    frames, frozen features and folds run on its workers, with the numbers of a serial run.
    """
    import tempfile

    from covnb.cluster import open_cluster
    from covnb.datasets import Dataset, load_dataset
    from covnb.train import mirror_is_plausible, recipe_config, run_training

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if frame_settings is not None:
        image_size = int(frame_settings.image_size)
    mirror = mirror_is_plausible(dataset.samples)
    labels = set(dataset.samples["label"].astype(str))
    positive = "covid" if "covid" in labels else sorted(labels)[0]
    rows = []
    import covnb.trust as trust

    nested, trust.NESTED_CALIBRATION = trust.NESTED_CALIBRATION, False  # the table has no calibration column
    try:
        with (tempfile.TemporaryDirectory(prefix="covnb-backbones-") as scratch,
              open_cluster(cluster, log=log) as client):
            root = Path(out_dir) if out_dir is not None else Path(scratch)
            for name in backbones:
                config = recipe_config("default", backbone=name, weights=weights, image_size=image_size,
                                       seed=int(seeds[0]), mirror_view=mirror)
                metrics = run_training(dataset, out_dir=root / name, config=config, task=task, n_folds=n_folds,
                                       seeds=list(seeds), frame_settings=frame_settings, final_model=False, figures=False, n_boot=n_boot,
                                       baseline=True, protocols=tuple(protocols), log=None, cluster=client)
                row = comparison_row(metrics, positive=positive)
                if time_features:
                    row["feature_ms_per_frame"] = 1000 * feature_seconds_per_frame(name, image_size=image_size,
                                                                                   weights=weights)
                rows.append(row)
                if log:
                    log(f"{name}: video balanced accuracy {row['balanced_accuracy']:.3f} "
                        f"(linear probe {row['linear_probe_balanced_accuracy']:.3f})")
    finally:
        trust.NESTED_CALIBRATION = nested
    table = pd.DataFrame(rows)
    return table, plot_backbone_comparison(table, positive=positive)


def plot_backbone_comparison(table: pd.DataFrame, *, positive: str = "covid"):
    """Grouped bars: balanced accuracy (recipe and linear probe), sensitivity, specificity per backbone."""
    import matplotlib.pyplot as plt

    columns = [c for c in ("balanced_accuracy", "linear_probe_balanced_accuracy", f"{positive}_sensitivity",
                           f"{positive}_specificity") if c in table]
    figure, axis = plt.subplots(figsize=(2.2 + 1.6 * len(table), 3.6))
    width = 0.8 / max(1, len(columns))
    x = np.arange(len(table))
    for i, column in enumerate(columns):
        axis.bar(x + (i - (len(columns) - 1) / 2) * width, table[column], width,
                 label=column.replace("_", " "))
    if "balanced_accuracy_sd_seeds" in table:
        axis.errorbar(x - (len(columns) - 1) / 2 * width, table["balanced_accuracy"],
                      yerr=table["balanced_accuracy_sd_seeds"], fmt="none", ecolor="black", capsize=3)
    axis.set_xticks(x, table["backbone"], rotation=15)
    axis.set_ylim(0, 1)
    axis.set_ylabel("video level (mean over split seeds)")
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title("Which backbone: same recipe, same patient-grouped folds")
    figure.tight_layout()
    return figure
