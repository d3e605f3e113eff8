"""Figures of a notebook run: saved as ``<output_dir>/<name>.png``, shown once, memory freed.

Every notebook shows its figures the same way; the names it saved go into its ``metrics.json``
(``figures``) so the report page can link them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from covnb.explore import save_figure

__all__ = ["FigureLog"]


class FigureLog:
    """Save, display and close figures of one notebook run; ``names`` lists the files written.

    Example::

        figures = FigureLog(out)
        figures.show(fig, "census")      # out/census.png, displayed in the notebook
        metrics["figures"] = figures.names
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.names: list[str] = []

    def show(self, fig, name: str) -> Path:
        """Write ``fig`` as ``<output_dir>/<name>.png``, display it once and close it."""
        from IPython.display import display

        path = save_figure(fig, self.output_dir, name)
        self.names.append(path.name)
        display(fig)
        plt.close(fig)
        return path
