"""What every notebook displays the same way: its figures (saved as ``<output_dir>/<name>.png``,
shown once, memory freed; the names go into its ``metrics.json`` so the report page links them)
and the notice above any number measured on the synthetic phantom.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from covnb.explore import save_figure

__all__ = ["FigureLog", "show_synthetic_notice"]


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


def show_synthetic_notice(consequence: str) -> None:
    """Display :data:`covnb.phantom.SYNTHETIC_NOTICE` as a quote, followed by what it means for this notebook."""
    from IPython.display import Markdown, display

    from covnb.phantom import SYNTHETIC_NOTICE

    display(Markdown(f"> **⚠ {SYNTHETIC_NOTICE}**\n>\n> {consequence}"))
