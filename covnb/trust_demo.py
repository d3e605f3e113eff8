"""Notebook 05's shift demonstration: images no training file resembles, and where their
out-of-distribution scores fall (Mahalanobis distance of the features, Lee et al. NeurIPS 2018)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write_unfamiliar_images", "plot_ood_scores", "calibration_table"]


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
