"""The sample table of a data folder (:class:`Dataset`), the checks that it can make a classification run, the named
tasks (which classes to learn) and the table's fingerprint. :mod:`covnb.dataset_layouts` fills it from a folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from covnb.media import DataError

SAMPLE_COLUMNS = [
    "sample_id", "path", "filename", "label", "raw_label", "group", "kind", "probe",
    "modality", "source", "licence", "fps", "frame_count", "width", "height",
    "duration_s", "in_metadata", "dataset",
]
SKIPPED_COLUMNS = ["path", "reason"]


@dataclass
class Dataset:
    """A sample table plus the files that were skipped and why."""

    samples: pd.DataFrame
    skipped: pd.DataFrame
    root: Path
    layout: str
    notes: list[str] = field(default_factory=list)
    layout_reason: str = ""  # what detection found and why it chose this layout
    grouping: str = ""  # how rows were put into patient groups (folds never split a group)
    merges: list[dict] = field(default_factory=list)  # groups joined because they share identical files

    def __len__(self) -> int:
        return len(self.samples)

    def summary(self) -> dict:
        """Counts by label, kind, probe/modality, source and licence; groups; skipped files."""
        s = self.samples

        def counts(column: str) -> dict:
            return {str(k): int(v) for k, v in s[column].fillna("unknown").value_counts().sort_index().items()}

        return {
            "root": str(self.root),
            "layout": self.layout,
            "samples": int(len(s)),
            "groups": int(s["group"].nunique()),
            "by_label": counts("label"),
            "by_kind": counts("kind"),
            "by_probe": counts("probe"),
            "by_modality": counts("modality"),
            "by_source": counts("source"),
            "by_licence": counts("licence"),
            "groups_by_label": {str(k): int(v) for k, v in s.groupby("label")["group"].nunique().items()},
            "frames_in_videos": int(s.loc[s["kind"] == "video", "frame_count"].fillna(0).sum()),
            "skipped": [
                {"path": str(p), "reason": str(r)} for p, r in zip(self.skipped["path"], self.skipped["reason"])
            ],
            "notes": list(self.notes),
            "layout_reason": self.layout_reason,
            "grouping": self.grouping,
            "merges": list(self.merges),
        }



def _empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=SAMPLE_COLUMNS)


def _finish(rows: list[dict], skipped: list[dict], root: Path, layout: str, notes: list[str]) -> Dataset:
    samples = pd.DataFrame(rows, columns=SAMPLE_COLUMNS) if rows else _empty_table()
    samples = samples.sort_values("path", kind="stable").reset_index(drop=True)
    for column in ("fps", "width", "height", "duration_s", "frame_count"):
        samples[column] = pd.to_numeric(samples[column], errors="coerce")
    samples["in_metadata"] = samples["in_metadata"].astype(bool)
    return Dataset(samples, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS), root, layout, notes)



def check_usable(samples: pd.DataFrame, skipped: pd.DataFrame | None = None, what: str = "training") -> None:
    """Raise :class:`DataError` before any decoding when ``samples`` cannot make a classification
    run: no usable file, or a single class."""
    n_skipped = 0 if skipped is None else len(skipped)
    if len(samples) == 0 or "label" not in samples:
        reasons = ""
        if n_skipped:
            counts = skipped["reason"].astype(str).value_counts().head(5)
            reasons = "; skipped: " + ", ".join(f"{n} {r}" for r, n in counts.items())
        raise DataError(f"no usable files for {what} ({n_skipped} file(s) skipped{reasons})")
    labels = samples["label"].value_counts()
    if len(labels) < 2:
        raise DataError(f"only one class ({labels.index[0]}: {int(labels.iloc[0])} file(s)) for {what}: a classifier "
                        "needs at least 2 classes (check the task, the labels and the skipped files)")



# ----------------------------------------------------------------------------- tasks

TASKS = {
    "pocovid3": "covid / pneumonia / regular (POCOVID-Net); viral dropped or merged into pneumonia",
    "pocus4": "covid / pneumonia / regular / viral",
    "covid_vs_other": "covid vs every other label",
    "all": "labels as they are",
}


def default_task(dataset: Dataset) -> str:
    """POCOVID's 3-class task for ultrasound, COVID-19 vs other for chest X-ray / CT."""
    return "pocovid3" if dataset.layout == "pocus" else "covid_vs_other"


def select_task(samples: pd.DataFrame, task: str = "pocovid3", *, viral: str = "drop",
                probe: str | None = None, modality: str | None = None) -> pd.DataFrame:
    """Rows and labels for a classification task.

    ``viral`` is ``"drop"`` or ``"merge"`` (into pneumonia) for ``pocovid3``; ``probe`` and
    ``modality`` filter rows (e.g. ``probe="convex"`` as POCOVID-Net, ``modality="X-ray"``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if viral not in ("drop", "merge"):
        raise ValueError(f"viral must be 'drop' or 'merge', not {viral!r}")
    table = samples.copy()
    if probe:
        table = table[table["probe"].str.lower() == probe.lower()]
    if modality:
        table = table[table["modality"].str.lower() == modality.lower()]
    if task == "pocovid3":
        if viral == "merge":
            table.loc[table["label"] == "viral", "label"] = "pneumonia"
        table = table[table["label"].isin(["covid", "pneumonia", "regular"])]
    elif task == "covid_vs_other":
        table["label"] = np.where(table["label"] == "covid", "covid", "other")
    return table.reset_index(drop=True)


def data_fingerprint(samples: pd.DataFrame) -> str:
    """A short hash of the sample table (paths relative to their root, sizes, labels, groups)."""
    digest = hashlib.sha1()
    for row in samples.sort_values("sample_id")[["sample_id", "path", "label", "group"]].itertuples(index=False):
        size = Path(row.path).stat().st_size if Path(row.path).exists() else -1
        digest.update(f"{row.sample_id}|{row.label}|{row.group}|{size}\n".encode())
    return digest.hexdigest()[:16]
