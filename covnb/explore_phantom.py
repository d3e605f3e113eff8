"""The synthetic phantom's classes side by side, each captioned by the pattern it is drawn with."""

from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from covnb.phantom_draw import make_clip

__all__ = ["plot_phantom_patterns", "PHANTOM_PATTERNS"]


#: Pattern each synthetic class is drawn with (see :mod:`covnb.phantom`).
PHANTOM_PATTERNS = {
    "regular": "A-lines: horizontal echoes of the pleura (healthy lung)",
    "covid": "B-lines: vertical comet tails + irregular pleura",
    "pneumonia": "consolidation: dark tissue-like patch with bright air bronchograms",
}


def plot_phantom_patterns(size: int = 192, seed: int = 0, classes=("regular", "covid", "pneumonia")
                          ) -> matplotlib.figure.Figure:
    """One synthetic frame per class from :func:`covnb.phantom.make_clip`, captioned by its pattern.

    The drawings follow the lung-ultrasound signs of Lichtenstein (2014) and Soldati et al.
    (2020); they are synthetic and only teach what to look for.
    """
    fig, axes = plt.subplots(1, len(classes), figsize=(3.6 * len(classes), 4.1), squeeze=False)
    for ax, label in zip(axes[0], classes):
        clip = make_clip(label, np.random.default_rng(seed), n_frames=1, size=size)
        ax.imshow(clip[0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label}\n" + textwrap.fill(PHANTOM_PATTERNS.get(label, ""), 34), fontsize=9.5)
        ax.axis("off")
    fig.tight_layout()
    fig.suptitle("SYNTHETIC phantom drawings (not patients)", fontsize=11, color="firebrick", y=1.03)
    return fig

