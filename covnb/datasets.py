"""Read lung-image collections into one tidy sample table.

Three layouts are understood, all read-only (nothing is ever written into a data folder):

* ``pocus``: the POCUS layout of Born et al. (arXiv:2004.12084): ``pocus_videos/`` and
  ``pocus_images/``, each with ``convex/`` and ``linear/``; the label is the file-name prefix
  (Cov / Pneu / Reg / Vir), cross-checked with ``dataset_metadata.csv``; the patient group is
  ``Source ID`` + ``Patient ID / Name``.
* ``csv``: an image folder indexed by a CSV with ``filename``, ``label`` and ``patientid``
  columns (the COVID-19 image data collection of Cohen et al., arXiv:2006.11988).
* ``folders``: a plain folder per class (``root/<label>/<file>``), one group per file unless
  the file name starts with ``<patient>__``.

Every file becomes one row of :attr:`Dataset.samples`; a file that cannot be used becomes one
row of :attr:`Dataset.skipped` with its reason, so one bad file never stops a run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif", ".m4v", ".wmv", ".mkv"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

SAMPLE_COLUMNS = [
    "sample_id", "path", "filename", "label", "raw_label", "group", "kind", "probe",
    "modality", "source", "licence", "fps", "frame_count", "width", "height",
    "duration_s", "in_metadata", "dataset",
]
SKIPPED_COLUMNS = ["path", "reason"]

POCUS_PREFIXES = {"cov": "covid", "pneu": "pneumonia", "reg": "regular", "vir": "viral"}
POCUS_METADATA_LABELS = {
    "covid-19": "covid", "covid": "covid",
    "bacterial pneumonia": "pneumonia", "pneumonia": "pneumonia",
    "regular": "regular", "healthy": "regular", "normal": "regular",
    "viral pneumonia": "viral", "viral": "viral",
}
_POCUS_PREFIX_RE = re.compile(r"^(cov|pneu|reg|vir)(?=[^a-z]|$)", re.IGNORECASE)
CSV_LABELS = {"covid-19": "covid", "covid": "covid", "other": "other", "normal": "normal"}


class DataError(ValueError):
    """A data folder that cannot be read at all (missing, empty, unknown layout)."""


@dataclass
class Dataset:
    """A sample table plus the files that were skipped and why."""

    samples: pd.DataFrame
    skipped: pd.DataFrame
    root: Path
    layout: str
    notes: list[str] = field(default_factory=list)

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
        }


# ----------------------------------------------------------------------------- probing files


def probe_media(path: Path) -> dict:
    """Open a video or image and return its properties, or raise ``ValueError`` saying why not.

    Videos are checked by decoding their first frame (a zero-frame, truncated or corrupt video
    fails here); images by decoding them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError("file not found")
    if path.stat().st_size == 0:
        raise ValueError("zero-byte file")
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise ValueError("not a readable video (OpenCV cannot open it)")
            ok, frame = cap.read()
            if not ok or frame is None:
                raise ValueError("video has no decodable frame (empty, truncated or corrupt)")
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        height, width = frame.shape[:2]
        fps_value = fps if 0 < fps < 1000 else np.nan
        return {
            "kind": "video",
            "fps": fps_value,
            "frame_count": count if count > 0 else np.nan,
            "width": width,
            "height": height,
            "duration_s": count / fps_value if count > 0 and fps_value == fps_value else np.nan,
        }
    if ext in IMAGE_EXTENSIONS:
        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError("not a decodable image (wrong content for its extension?)")
        return {"kind": "image", "fps": np.nan, "frame_count": 1, "width": image.shape[1],
                "height": image.shape[0], "duration_s": np.nan}
    raise ValueError(f"unsupported file type {ext or '(no extension)'}")


def file_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's content (used for cache keys and duplicate audits)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _media_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=SAMPLE_COLUMNS)


def _finish(rows: list[dict], skipped: list[dict], root: Path, layout: str, notes: list[str]) -> Dataset:
    samples = pd.DataFrame(rows, columns=SAMPLE_COLUMNS) if rows else _empty_table()
    samples = samples.sort_values("path", kind="stable").reset_index(drop=True)
    for column in ("fps", "width", "height", "duration_s", "frame_count"):
        samples[column] = pd.to_numeric(samples[column], errors="coerce")
    samples["in_metadata"] = samples["in_metadata"].astype(bool)
    return Dataset(samples, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS), root, layout, notes)


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
    """Read the POCUS layout (``pocus_videos/``, ``pocus_images/``, ``dataset_metadata.csv``)."""
    root = Path(root)
    metadata_path = root / "dataset_metadata.csv"
    notes: list[str] = []
    metadata: dict[str, dict] = {}
    if metadata_path.is_file():
        table = pd.read_csv(metadata_path, dtype=str, keep_default_na=False, encoding_errors="replace")
        for record in table.to_dict("records"):
            name = _clean(record.get("Filename"))
            if name:
                metadata[name.lower()] = record
    else:
        notes.append("no dataset_metadata.csv: every file is its own patient group")

    rows, skipped = [], []
    for top in ("pocus_videos", "pocus_images"):
        folder = root / top
        if not folder.is_dir():
            continue
        for path in _media_files(folder):
            relative = path.relative_to(root)
            label = pocus_label_from_filename(path.name)
            if label is None:
                skipped.append({"path": str(path), "reason": "unknown label: file name has no Cov/Pneu/Reg/Vir prefix"})
                continue
            try:
                media = probe_media(path)
            except ValueError as error:
                skipped.append({"path": str(path), "reason": str(error)})
                continue
            record = metadata.get(path.stem.lower())
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
            rows.append({
                "sample_id": _sample_id(root, path), "path": str(path), "filename": path.name,
                "label": label, "raw_label": raw_label or path.name.split("_")[0], "group": group,
                "probe": probe or "unknown", "modality": "ultrasound", "source": source,
                "licence": licence, "in_metadata": record is not None, "dataset": "pocus", **media,
            })
    if not rows and not skipped:
        raise DataError(f"{root}: no files under pocus_videos/ or pocus_images/")
    return _finish(rows, skipped, root, "pocus", notes)


# ----------------------------------------------------------------------------- CSV-indexed layout


def find_index_csv(root: Path) -> Path | None:
    """The CSV in ``root`` that indexes images (has filename and label columns), if any."""
    for candidate in sorted(root.glob("*.csv")):
        try:
            header = pd.read_csv(candidate, nrows=0).columns.str.lower()
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError):
            continue
        if "filename" in header and ("label" in header or "finding" in header):
            return candidate
    return None


def load_csv_indexed(root: str | Path, index_csv: str | Path | None = None, image_dir: str = "images") -> Dataset:
    """Read an image folder indexed by a CSV (filename, label, patientid, modality, view, licence)."""
    root = Path(root)
    index_path = Path(index_csv) if index_csv else find_index_csv(root)
    if index_path is None or not index_path.is_file():
        raise DataError(f"{root}: no index CSV with 'filename' and 'label' columns")
    table = pd.read_csv(index_path, dtype=str, keep_default_na=False)
    table.columns = [c.lower() for c in table.columns]
    if "label" not in table.columns:
        table["label"] = table["finding"]
    folder = root / image_dir if (root / image_dir).is_dir() else root
    rows, skipped, notes = [], [], []
    listed = set()
    for record in table.to_dict("records"):
        name = _clean(record.get("filename"))
        path = folder / name
        listed.add(name)
        label = CSV_LABELS.get(_clean(record.get("label")).lower())
        if label is None:
            skipped.append({"path": str(path), "reason": f"unknown label {_clean(record.get('label'))!r}"})
            continue
        try:
            media = probe_media(path)
        except ValueError as error:
            skipped.append({"path": str(path), "reason": str(error)})
            continue
        patient = _clean(record.get("patientid")) or f"file:{name}"
        rows.append({
            "sample_id": _sample_id(root, path), "path": str(path), "filename": name, "label": label,
            "raw_label": _clean(record.get("finding")) or _clean(record.get("label")), "group": patient,
            "probe": _clean(record.get("view")) or "unknown", "modality": _clean(record.get("modality")) or "unknown",
            "source": _clean(record.get("url")).split("/")[2] if _clean(record.get("url")).count("/") >= 2 else "unknown",
            "licence": _clean(record.get("license")) or "unknown", "in_metadata": True, "dataset": "csv",
            **media,
        })
    for path in _media_files(folder):
        if path.name not in listed and path.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
            skipped.append({"path": str(path), "reason": "unknown label: not listed in the index CSV"})
    return _finish(rows, skipped, root, "csv", notes)


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
        for path in _media_files(class_dir):
            try:
                media = probe_media(path)
            except ValueError as error:
                skipped.append({"path": str(path), "reason": str(error)})
                continue
            group = path.name.split("__", 1)[0] if "__" in path.name else f"file:{_sample_id(root, path)}"
            rows.append({
                "sample_id": _sample_id(root, path), "path": str(path), "filename": path.name, "label": label,
                "raw_label": class_dir.name, "group": group, "probe": "unknown", "modality": "unknown",
                "source": root.name, "licence": "unknown", "in_metadata": False, "dataset": "folders", **media,
            })
    return _finish(rows, skipped, root, "folders", ["groups: one per file unless named <patient>__*"])


# ----------------------------------------------------------------------------- entry points

LAYOUTS = ("auto", "pocus", "csv", "folders")


def detect_layout(root: Path) -> str:
    """Guess the layout of a data folder."""
    if (root / "pocus_videos").is_dir() or (root / "pocus_images").is_dir():
        return "pocus"
    if find_index_csv(root) is not None:
        return "csv"
    return "folders"


def load_dataset(path: str | Path | None = None, layout: str = "auto") -> Dataset:
    """Load any supported data folder; ``None`` or ``"phantom"`` gives the embedded synthetic data."""
    if path is None or str(path) == "phantom":
        from covnb.phantom import phantom_dataset

        path = phantom_dataset()
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataError(f"{root}: no such data folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (give the folder that holds the data)")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    detected = detect_layout(root) if layout == "auto" else layout
    loader = {"pocus": load_pocus, "csv": load_csv_indexed, "folders": load_class_folders}[detected]
    try:
        return loader(root)
    except DataError as error:
        if layout != "auto":
            raise
        raise DataError(f"{error}. Looked for these layouts (--layout to choose one):\n{LAYOUT_HELP}") from error


LAYOUT_HELP = """\
  pocus    pocus_videos/{convex,linear}/ and/or pocus_images/{convex,linear}/ (+ dataset_metadata.csv);
           the label is the file-name prefix Cov/Pneu/Reg/Vir
  csv      an index CSV with filename, label, patientid columns, and the images in images/
  folders  one folder per label: <label>/<file> (patient <patient>__rest-of-name, else one per file)"""


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


def select_task(samples: pd.DataFrame, task: str = "pocovid3", viral: str = "drop",
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
