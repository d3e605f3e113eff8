"""What every notebook does the same way: its output folder and figures (saved as
``<output_dir>/<name>.png``, shown once, memory freed; the names go into its ``metrics.json`` so the
report page links them), its data (the task's files of a data folder, or the embedded phantom),
the notice above any number measured on the synthetic phantom, and the table of skipped files.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from covnb.datasets import Dataset, default_task, load_dataset, select_task
from covnb.explore import save_figure, skipped_table

__all__ = ["FigureLog", "start_run", "is_synthetic", "load_task", "show_synthetic_notice", "show_skipped", "print_notes"]


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


def start_run(output_dir: str | Path, *, seed: int | None = None) -> tuple[Path, FigureLog]:
    """Create ``output_dir`` (``~`` expanded), set the seaborn theme of the figures; ``(folder, FigureLog)``.

    With a ``seed`` (notebooks that train), also seed Python, NumPy and TensorFlow
    (``keras.utils.set_random_seed``) and keep TensorFlow's retracing warnings out of the output.
    """
    import seaborn as sns

    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="notebook")
    if seed is not None:
        import logging

        import keras  # TensorFlow: only for the notebooks that train

        keras.utils.set_random_seed(int(seed))
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return out, FigureLog(out)


def is_synthetic(data_path) -> bool:
    """True when ``data_path`` means the embedded synthetic phantom (``None`` or ``"phantom"``)."""
    return data_path is None or str(data_path) == "phantom"


def load_task(data_path, *, layout: str = "auto", task: str = "auto",
              min_groups: int = 0) -> tuple[Dataset, str, pd.DataFrame, bool]:
    """``(dataset, task name, the task's samples, synthetic?)`` of a data folder or of the phantom.

    ``task="auto"`` takes :func:`covnb.datasets.default_task`; ``min_groups`` (e.g. the number of
    folds) raises ValueError, naming the folder, when the task has fewer patient groups.
    """
    dataset = load_dataset(data_path, layout=layout)
    task_name = default_task(dataset) if task == "auto" else task
    samples = select_task(dataset.samples, task_name)
    if samples["group"].nunique() < min_groups:
        raise ValueError(f"n_folds={min_groups} but only {samples['group'].nunique()} patient groups in {dataset.root}")
    return dataset, task_name, samples, is_synthetic(data_path)


def show_skipped(skipped: pd.DataFrame, root, *, none_text: str | None = None) -> None:
    """Display the table of skipped files (:func:`covnb.explore.skipped_table`), or ``none_text`` when none was."""
    from IPython.display import Markdown, display

    if len(skipped):
        display(skipped_table(skipped, root))
    elif none_text:
        display(Markdown(none_text))


def print_notes(notes, prefix: str = "") -> None:
    """Print each note on its own line after ``prefix``; nothing at all when there is none."""
    for note in notes:
        print(f"{prefix}{note}")
