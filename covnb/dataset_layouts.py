"""The three folder layouts a data folder may have (POCUS, CSV-indexed, folder per class), each read into a
:class:`covnb.dataset_table.Dataset`; all read-only (nothing is ever written into a data folder)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from covnb.media import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, DataError, probe_media,
                         symlink_problem)
from covnb.dataset_table import Dataset, _finish

POCUS_PREFIXES = {"cov": "covid", "pneu": "pneumonia", "reg": "regular", "vir": "viral"}
POCUS_METADATA_LABELS = {
    "covid-19": "covid", "covid": "covid",
    "bacterial pneumonia": "pneumonia", "pneumonia": "pneumonia",
    "regular": "regular", "healthy": "regular", "normal": "regular",
    "viral pneumonia": "viral", "viral": "viral",
}
_POCUS_PREFIX_RE = re.compile(r"^(cov|pneu|reg|vir)(?=[^a-z]|$)", re.IGNORECASE)
CSV_LABELS = {"covid-19": "covid", "covid": "covid", "other": "other", "normal": "normal"}


def _media_files(folder: Path, skipped: list[dict] | None = None) -> list[Path]:
    """Files under ``folder`` (hidden ones left out). Broken symlinks, symlink loops and symlinks
    to folders (not followed) are appended to ``skipped`` with their reason."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith("."):
            continue
        if path.is_symlink():
            reason = symlink_problem(path)
            if reason is not None:
                if skipped is not None:
                    skipped.append({"path": str(path), "reason": reason})
                continue
        if path.is_file():
            files.append(path)
    return files



def _sample_id(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# ----------------------------------------------------------------------------- POCUS layout


def pocus_label_from_filename(filename: str) -> str | None:
    """Label from a POCUS file-name prefix (Cov/Pneu/Reg/Vir, any case and separator)."""
    match = _POCUS_PREFIX_RE.match(Path(filename).name)
    return POCUS_PREFIXES[match.group(1).lower()] if match else None


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def load_pocus(root: str | Path) -> Dataset:
    """Read the POCUS layout of Born et al. (arXiv:2004.12084): ``pocus_videos/``, ``pocus_images/``
    (each with ``convex/`` and ``linear/``) and ``dataset_metadata.csv``.

    Parameters
    ----------
    root : path
        The data folder. Nothing is written into it.

    Returns
    -------
    Dataset
        ``samples``: one row per usable file; the label comes from the file-name prefix (Cov /
        Pneu / Reg / Vir), the patient group from ``Source ID`` + ``Patient ID / Name`` of the
        metadata (a file missing from it is its own group). ``skipped``: the other files, with why.
        ``notes``: disagreements between file names and metadata.

    Raises
    ------
    DataError
        The folder holds no file under ``pocus_videos/`` or ``pocus_images/``.

    Examples
    --------
    >>> from covnb.phantom import phantom_dataset
    >>> dataset = load_pocus(phantom_dataset())  # doctest: +SKIP
    >>> sorted(dataset.samples["label"].unique())  # doctest: +SKIP
    ['covid', 'pneumonia', 'regular']
    """
    root = Path(root)
    metadata, notes = _pocus_metadata(root / "dataset_metadata.csv")
    rows, skipped = [], []
    for top in ("pocus_videos", "pocus_images"):
        folder = root / top
        if not folder.is_dir():
            continue
        for path in _media_files(folder, skipped):
            label = pocus_label_from_filename(path.name)
            if label is None:
                skipped.append({"path": str(path), "reason": "unknown label: file name has no Cov/Pneu/Reg/Vir prefix"})
                continue
            media = _probe_or_skip(path, skipped)
            if media is None:
                continue
            rows.append(_pocus_row(root, path, label, metadata.get(path.stem.lower()), notes) | media)
    if not rows and not skipped:
        raise DataError(f"{root}: no files under pocus_videos/ or pocus_images/")
    return _finish(rows, skipped, root, "pocus", notes)


def _probe_or_skip(path: Path, skipped: list[dict]) -> dict | None:
    """:func:`covnb.media.probe_media` of ``path``, or None with a ``skipped`` row saying why."""
    try:
        return probe_media(path)
    except ValueError as error:
        skipped.append({"path": str(path), "reason": str(error)})
        return None


def _pocus_metadata(metadata_path: Path) -> tuple[dict[str, dict], list[str]]:
    """{lower-case file stem: metadata record} of ``dataset_metadata.csv``, and notes."""
    if not metadata_path.is_file():
        return {}, ["no dataset_metadata.csv: every file is its own patient group"]
    metadata: dict[str, dict] = {}
    table = pd.read_csv(metadata_path, dtype=str, keep_default_na=False, encoding_errors="replace")
    for record in table.to_dict("records"):
        name = _clean(record.get("Filename"))
        if name:
            metadata[name.lower()] = record
    return metadata, []


def _pocus_row(root: Path, path: Path, label: str, record: dict | None, notes: list[str]) -> dict:
    """The sample row of one POCUS file (without its media properties); disagreements go to ``notes``."""
    relative = path.relative_to(root)
    probe = relative.parts[1].lower() if len(relative.parts) > 2 else ""
    if record is None:
        group = f"unlisted:{path.stem}"
        notes.append(f"{relative}: not in dataset_metadata.csv, loaded as its own group")
        source, licence, raw_label = "unknown", "unknown", ""
    else:
        raw_label = _clean(record.get("Label"))
        meta_label = POCUS_METADATA_LABELS.get(raw_label.lower())
        if meta_label != label:
            notes.append(
                f"{relative}: file name says {label}, metadata says {raw_label or 'nothing'}; using the file name"
            )
        group = f"{_clean(record.get('Source ID')) or '?'}:{_clean(record.get('Patient ID / Name')) or path.stem}"
        source = _clean(record.get("Source ID")) or "unknown"
        licence = _clean(record.get("License")) or "unknown"
        probe = probe or _clean(record.get("Probe")).lower()
    return {
        "sample_id": _sample_id(root, path), "path": str(path), "filename": path.name,
        "label": label, "raw_label": raw_label or path.name.split("_")[0], "group": group,
        "probe": probe or "unknown", "modality": "ultrasound", "source": source,
        "licence": licence, "in_metadata": record is not None, "dataset": "pocus",
    }


# ----------------------------------------------------------------------------- CSV-indexed layout


PATIENT_COLUMNS = ("patientid", "patient_id", "patient")


def _csv_header(candidate: Path) -> list[str] | None:
    try:
        return [str(c).strip().lower() for c in pd.read_csv(candidate, nrows=0, encoding_errors="replace").columns]
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, ValueError):
        return None


def _index_csv_problem(header: list[str] | None) -> str | None:
    """Why a CSV header cannot index images (None when it has a filename and a label column)."""
    if header is None:
        return "cannot be read as CSV"
    missing = [name for name, ok in (("filename", "filename" in header),
                                      ("label", "label" in header or "finding" in header)) if not ok]
    return f"lacks the column(s) {', '.join(missing)} (has: {', '.join(header) or 'none'})" if missing else None


def find_index_csv(root: Path) -> Path | None:
    """The CSV in ``root`` that indexes images (has filename and label columns), if any."""
    for candidate in sorted(root.glob("*.csv")):
        if _index_csv_problem(_csv_header(candidate)) is None:
            return candidate
    return None


def load_csv_indexed(root: str | Path, index_csv: str | Path | None = None, image_dir: str = "images") -> Dataset:
    """Read an image folder indexed by a CSV (the COVID-19 image data collection of Cohen et al.,
    arXiv:2006.11988: filename, label or finding, patientid, modality, view, license, url).

    Rows listing one file twice count once (reported; with different labels the file is skipped);
    without a patient column, or for rows with an empty patient id, each image is its own group,
    which is said loudly in :attr:`Dataset.grouping` and the notes.

    Parameters
    ----------
    root : path
        The data folder. Nothing is written into it.
    index_csv : path, optional
        The index CSV; default the CSV under ``root`` with ``filename`` and ``label`` columns.
    image_dir : str
        Folder of the images under ``root`` (``root`` itself when there is no such folder).

    Returns
    -------
    Dataset
        ``samples``: one row per usable listed file; ``skipped``: listed files that cannot be used
        and unlisted media files, with why; ``grouping`` and ``notes`` say how patients were grouped.

    Raises
    ------
    DataError
        No index CSV, one without ``filename`` and ``label`` (or ``finding``), or one that cannot be read.

    Examples
    --------
    >>> dataset = load_csv_indexed("covid-chestxray-dataset", index_csv="metadata.csv")  # doctest: +SKIP
    >>> dataset.samples.groupby("label")["group"].nunique()  # doctest: +SKIP
    """
    root = Path(root)
    index_path, table = _read_index_csv(root, index_csv)
    patient_column = next((c for c in PATIENT_COLUMNS if c in table.columns), None)
    folder = root / image_dir if (root / image_dir).is_dir() else root
    rows, skipped, notes = [], [], []
    grouping = _csv_grouping(index_path, patient_column)
    by_name: dict[str, list[dict]] = {}
    for record in table.to_dict("records"):
        by_name.setdefault(_clean(record.get("filename")), []).append(record)
    empty_ids = []
    for name, copies in by_name.items():
        path, label = _csv_entry(folder, index_path, name, copies, skipped, notes)
        if label is None:
            continue
        media = _probe_or_skip(path, skipped)
        if media is None:
            continue
        patient = _clean(copies[0].get(patient_column)) if patient_column else ""
        if patient_column and not patient:
            empty_ids.append(name)
        rows.append(_csv_row(root, path, name, label, copies[0], patient) | media)
    if empty_ids:
        grouping = _warn_empty_patient_ids(empty_ids, index_path, patient_column, grouping, notes)
    notes.insert(0, f"grouping: {grouping}")
    for path in _media_files(folder, skipped):
        if _unlisted_media(path, folder, by_name):
            skipped.append({"path": str(path), "reason": "unknown label: not listed in the index CSV"})
    dataset = _finish(rows, skipped, root, "csv", notes)
    dataset.grouping = grouping
    return dataset


def _warn_empty_patient_ids(empty_ids: list[str], index_path: Path, patient_column: str, grouping: str,
                            notes: list[str]) -> str:
    """Say loudly (stderr and the notes) which rows have an empty patient id; the grouping text that says so."""
    warning = (f"{len(empty_ids)} row(s) of {index_path.name} have an empty {patient_column}: each is its own "
               f"group: {', '.join(empty_ids[:20])}{' ...' if len(empty_ids) > 20 else ''}")
    print(f"covnb: warning: {warning}", file=sys.stderr)
    notes.insert(0, f"WARNING {warning}")
    return grouping + f"; {len(empty_ids)} image(s) with an empty id are their own groups"


def _csv_grouping(index_path: Path, patient_column: str | None) -> str:
    """How the csv layout groups patients; without a patient column a loud warning on stderr too."""
    if patient_column is not None:
        return f"patient groups from column {patient_column!r} of {index_path.name}"
    grouping = (f"NO PATIENT COLUMN in {index_path.name} (looked for {', '.join(PATIENT_COLUMNS)}): every image "
                "is its own group, so images of one patient can land in different folds")
    print(f"covnb: warning: {grouping}", file=sys.stderr)
    return grouping


def _unlisted_media(path: Path, folder: Path, listed) -> bool:
    """A video or image file under ``folder`` that the index does not list."""
    return (path.relative_to(folder).as_posix() not in listed and path.name not in listed
            and path.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)


def _read_index_csv(root: Path, index_csv) -> tuple[Path, pd.DataFrame]:
    """The index CSV's path and its table (lower-case column names, ``label`` filled from ``finding``)."""
    index_path = Path(index_csv) if index_csv else find_index_csv(root)
    if index_path is None or not index_path.is_file():
        raise DataError(f"{root}: no index CSV with 'filename' and 'label' columns")
    problem = _index_csv_problem(_csv_header(index_path))
    if problem is not None:
        raise DataError(f"{index_path}: {problem}; the csv layout needs 'filename' and 'label' (or 'finding')")
    try:
        table = pd.read_csv(index_path, dtype=str, keep_default_na=False, encoding_errors="replace")
    except (pd.errors.ParserError, ValueError, OSError) as error:
        raise DataError(f"{index_path}: cannot be read as CSV ({error})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    table = table.loc[:, ~pd.Index(table.columns).duplicated()]
    if "label" not in table.columns:
        table["label"] = table["finding"]
    return index_path, table


def _csv_entry(folder: Path, index_path: Path, name: str, copies: list[dict], skipped: list[dict],
               notes: list[str]) -> tuple[Path, str | None]:
    """The path and label of one file listed in the index (its rows ``copies``); label None (and a
    ``skipped`` row) when the entry cannot be used."""
    path = folder / name
    problem = None
    labels = sorted({_clean(r.get("label")) for r in copies})
    if not name:
        path, problem = index_path, f"{len(copies)} row(s) with an empty filename"
    elif "\x00" in name:
        path, problem = index_path, f"filename {name!r} holds a NUL byte"
    elif not _inside(folder, path):
        problem = "filename points outside the image folder"
    elif len(copies) > 1 and len(labels) > 1:
        problem = f"listed {len(copies)} times in {index_path.name} with different labels ({', '.join(labels)})"
    if problem is not None:
        skipped.append({"path": str(path), "reason": problem})
        return path, None
    if len(copies) > 1:
        notes.append(f"{name}: listed {len(copies)} times in {index_path.name}; counted once")
    label = CSV_LABELS.get(labels[0].lower())
    if label is None:
        skipped.append({"path": str(path), "reason": f"unknown label {labels[0]!r}"})
    return path, label


def _csv_row(root: Path, path: Path, name: str, label: str, record: dict, patient: str) -> dict:
    """The sample row of one listed file (without its media properties)."""
    url = _clean(record.get("url"))
    return {
        "sample_id": _sample_id(root, path), "path": str(path), "filename": name, "label": label,
        "raw_label": _clean(record.get("finding")) or _clean(record.get("label")),
        "group": patient or f"file:{name}",
        "probe": _clean(record.get("view")) or "unknown", "modality": _clean(record.get("modality")) or "unknown",
        "source": url.split("/")[2] if url.count("/") >= 2 else "unknown",
        "licence": _clean(record.get("license")) or "unknown", "in_metadata": True, "dataset": "csv",
    }


def _inside(folder: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the name
        return False


# ----------------------------------------------------------------------------- folder per class


def load_class_folders(root: str | Path) -> Dataset:
    """Read ``root/<label>/<file>``; a file named ``<patient>__rest`` joins that patient's group."""
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders")
    rows, skipped = [], []
    for class_dir in class_dirs:
        label = class_dir.name.lower()
        for path in _media_files(class_dir, skipped):
            media = _probe_or_skip(path, skipped)
            if media is None:
                continue
            group = path.name.split("__", 1)[0] if "__" in path.name else f"file:{_sample_id(root, path)}"
            rows.append({
                "sample_id": _sample_id(root, path), "path": str(path), "filename": path.name, "label": label,
                "raw_label": class_dir.name, "group": group, "probe": "unknown", "modality": "unknown",
                "source": root.name, "licence": "unknown", "in_metadata": False, "dataset": "folders", **media,
            })
    return _finish(rows, skipped, root, "folders", ["groups: one per file unless named <patient>__*"])
