"""Notebook 05's shift demonstration: images no training file resembles, and where their
out-of-distribution scores fall (Mahalanobis distance of the features, Lee et al. NeurIPS 2018)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from covnb.io_utils import atomic_write_json
from covnb.predict import predict_paths
from covnb.uncertainty import separation_auroc

__all__ = ["write_unfamiliar_images", "plot_ood_scores", "calibration_table", "stored_map_text", "risk_table",
           "unfamiliar_comparison", "record_shift"]

#: The columns of ``covnb predict``'s file table notebook 05 shows (the trust ones when the model has them).
SHOWN_COLUMNS = ["path", "pred", "probabilities", "confidence", "uncertainty", "uncertain", "uncertain_reason"]


def write_unfamiliar_images(folder: str | Path, seed: int = 0, size: int = 160) -> list[Path]:
    """Write noise, a checkerboard and a gradient (``size`` px PNGs) into ``folder``; return their paths."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(seed))
    checker = np.kron((np.indices((8, 8)).sum(axis=0) % 2) * 255, np.ones((size // 8, size // 8))).astype(np.uint8)
    pictures = {"noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "checkerboard": checker[..., None].repeat(3, axis=2),
                "gradient": np.linspace(0, 255, size, dtype=np.uint8)[None, :, None].repeat(size, axis=0).repeat(3, axis=2)}
    paths = []
    for name, picture in pictures.items():
        paths.append(folder / f"{name}.png")
        cv2.imwrite(str(paths[-1]), picture)
    return sorted(paths)


def plot_ood_scores(heldout: pd.Series, unfamiliar: pd.Series | None, threshold: float):
    """Histograms of log10 OOD scores: held-out training files vs unfamiliar images, and the threshold."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3))
    axis.hist(np.log10(heldout), bins=20, alpha=0.7, label="held-out training files")
    if unfamiliar is not None:
        axis.hist(np.log10(unfamiliar), bins=5, alpha=0.7, label="unfamiliar images")
    axis.axvline(np.log10(threshold), color="black", linestyle=":", label="threshold")
    axis.set_xlabel("log10 out-of-distribution score")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def calibration_table(calibration: dict) -> pd.DataFrame:
    """Per level and kind of probabilities: ECE, class-wise ECE, Brier score and log loss, each
    ``estimate [low, high]`` (the ``calibration`` block of :func:`covnb.train.run_training`'s result)."""
    rows = []
    for level, methods in calibration["levels"].items():
        for method, scores in methods.items():
            rows.append({"level": level, "probabilities": method,
                         **{name: f"{scores[name]['estimate']:.3f} [{scores[name]['low']:.3f}, {scores[name]['high']:.3f}]"
                            for name in ("ece", "classwise_ece", "brier", "log_loss")}})
    return pd.DataFrame(rows).set_index(["level", "probabilities"])


def stored_map_text(stored: dict) -> str:
    """One line on the calibration map stored with the model (``calibration["final_map"]``) and the
    cross-fitted ECE of each candidate at the video level."""
    candidates = {k: round(v, 3) for k, v in stored.get("video_selection_ece", {}).items()}
    return (f"stored with the model ({stored['method']}): frames {stored['frame']['method']}, "
            f"videos {stored['video']['method']}; cross-fitted ECE of each candidate, videos: {candidates}")


def risk_table(risk_coverage: dict) -> pd.DataFrame:
    """The risk-coverage rows of every ranking (``uncertainty["risk_coverage"]``), indexed by ranking
    and abstained fraction."""
    risk = pd.concat({name: pd.DataFrame(rows) for name, rows in risk_coverage.items()}, names=["ranked by"])
    return risk.droplevel(1).set_index("abstain_fraction", append=True)


def unfamiliar_comparison(run_dir: str | Path, familiar, unfamiliar, *, threshold: float) -> tuple:
    """Predict ``familiar`` and ``unfamiliar`` files with the run's ``model.keras`` (:func:`covnb.predict.predict_paths`)
    and compare the unfamiliar files' OOD scores with the held-out training files' (``heldout_ood_scores.csv``).

    Returns ``(shown table, the unfamiliar files' rows, ROC-AUC unfamiliar vs held-out or None, figure)``;
    the AUROC is None when the model has no OOD score.
    """
    run_dir = Path(run_dir)
    videos = predict_paths(run_dir / "model.keras", [str(p) for p in list(familiar) + list(unfamiliar)]).videos
    shown = SHOWN_COLUMNS + [c for c in ("fold_agreement", "ood_score") if c in videos]
    table = videos[shown].assign(path=lambda t: t["path"].map(lambda p: Path(p).name))
    heldout = pd.read_csv(run_dir / "heldout_ood_scores.csv")
    folder = Path(list(unfamiliar)[0]).parent.name  # the unfamiliar files' own folder
    rows = videos[videos["path"].str.contains(folder, regex=False)]
    scored = "ood_score" in rows
    auroc = separation_auroc(heldout["ood_score"], rows["ood_score"]) if scored else None
    figure = plot_ood_scores(heldout["ood_score"], rows["ood_score"] if scored else None, threshold)
    return table, rows, auroc, figure


def record_shift(metrics_path: str | Path, auroc, unfamiliar_rows: pd.DataFrame) -> dict:
    """Add notebook 05's ``notebook_05`` block (AUROC, unfamiliar files flagged, their number) to the
    run's ``metrics.json``, written atomically; return the whole metrics."""
    metrics = json.loads(Path(metrics_path).read_text())
    flagged = int(unfamiliar_rows["uncertain"].sum()) if "uncertain" in unfamiliar_rows else None
    metrics["notebook_05"] = {"unfamiliar_vs_heldout_ood_auroc": auroc, "unfamiliar_flagged": flagged,
                              "unfamiliar_files": int(len(unfamiliar_rows))}
    atomic_write_json(metrics_path, metrics)
    return metrics
