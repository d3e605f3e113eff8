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

from pathlib import Path

from covnb.media import (IMAGE_EXTENSIONS, MAX_PIXELS, MAX_VIDEO_FRAMES, VIDEO_EXTENSIONS,  # noqa: F401 (API)
                         DataError, check_image_header, check_video_header, file_sha1, image_header_size, max_pixels,
                         probe_media, symlink_problem)
from covnb.near_duplicates import (MIN_HASH_BITS, NEAR_DUPLICATE_BITS, describe_merge,  # noqa: F401 (API)
                                   first_frame_hash, merge_duplicate_groups, perceptual_hash)
from covnb.phantom import phantom_dataset

# the table and the tasks live in dataset_table, the layouts' readers in dataset_layouts; every name stays
# importable from here
from covnb.dataset_table import (SAMPLE_COLUMNS, SKIPPED_COLUMNS, TASKS, Dataset, _empty_table,  # noqa: F401
                                 _finish, check_usable, data_fingerprint, default_task, select_task)
from covnb.dataset_layouts import (CSV_LABELS, PATIENT_COLUMNS, POCUS_METADATA_LABELS, POCUS_PREFIXES,  # noqa: F401
                                   _POCUS_PREFIX_RE, _csv_header, _index_csv_problem, _media_files, _sample_id,
                                   find_index_csv, load_class_folders, load_csv_indexed, load_pocus,
                                   pocus_label_from_filename)


# ----------------------------------------------------------------------------- entry points

LAYOUTS = ("auto", "pocus", "csv", "folders")


def explain_layout(root: Path) -> tuple[str, str]:
    """The layout of a data folder and why: ``(layout, reason)``.

    Raises :class:`DataError` for a folder that looks like the csv layout (an ``images/`` folder
    or a CSV with index-like columns) but whose CSV fails the layout's checks: reading it as
    class folders would label every image by its folder name (e.g. "images").
    """
    root = Path(root)
    pocus = [name for name in ("pocus_videos", "pocus_images") if (root / name).is_dir()]
    if pocus:
        return "pocus", f"found {' and '.join(n + '/' for n in pocus)}"
    csvs = sorted(root.glob("*.csv"))
    headers = {path: _csv_header(path) for path in csvs}
    for path, header in headers.items():
        if _index_csv_problem(header) is None:
            return "csv", _csv_layout_reason(path, header)
    _refuse_csv_lookalike(root, headers)
    classes = [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    ignored = f"; ignored {', '.join(p.name for p in csvs)} (no index columns)" if csvs else ""
    return "folders", (f"no pocus_videos/, pocus_images/ nor index CSV: one class per folder "
                       f"({', '.join(classes[:10]) or 'none'}){ignored}")


def _csv_layout_reason(path: Path, header: list[str]) -> str:
    patient = next((c for c in PATIENT_COLUMNS if c in header), None)
    return (f"{path.name} has columns filename and {'label' if 'label' in header else 'finding'}"
            f"{f' and patient column {patient}' if patient else ' but NO patient column'}")


def _refuse_csv_lookalike(root: Path, headers: dict[Path, list[str] | None]) -> None:
    """Raise :class:`DataError` when ``root`` looks like the csv layout but none of its CSVs passes."""
    index_like = {"filename", "label", "finding", *PATIENT_COLUMNS}
    suspicious = [path for path, header in headers.items() if header and index_like & set(header)]
    has_images = (root / "images").is_dir()
    if not suspicious and not (headers and has_images):
        return
    path = (suspicious or list(headers))[0]
    raise DataError(f"{root}: looks like the csv layout ({path.name}"
                    f"{' beside images/' if has_images else ''}) but {path.name} "
                    f"{_index_csv_problem(headers[path])}. Fix the CSV, or pass --layout folders to read "
                    "class folders")


def detect_layout(root: Path) -> str:
    """Guess the layout of a data folder (see :func:`explain_layout`)."""
    return explain_layout(root)[0]


def load_dataset(path: str | Path | None = None, layout: str = "auto", merge_duplicates: bool = True) -> Dataset:
    """Load any supported data folder; ``None`` or ``"phantom"`` gives the embedded synthetic data.

    ``merge_duplicates``: patient groups that share identical or near-identical files are joined
    (:func:`merge_duplicate_groups`) so that no fold split can separate them; the merges are in
    :attr:`Dataset.merges` and the notes.
    """
    if path is None or str(path) == "phantom":
        path = phantom_dataset()
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataError(f"{root}: no such data folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (give the folder that holds the data)")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    auto = layout == "auto"
    if auto:
        layout, reason = explain_layout(root)
    else:
        reason = "chosen by the caller (--layout)"
    loader = {"pocus": load_pocus, "csv": load_csv_indexed, "folders": load_class_folders}[layout]
    try:
        dataset = loader(root)
    except DataError as error:
        if not auto:
            raise
        raise DataError(f"{error}. Looked for these layouts (--layout to choose one):\n{LAYOUT_HELP}") from error
    dataset.layout_reason = reason
    if not dataset.grouping:
        dataset.grouping = {"pocus": "patient groups from dataset_metadata.csv (Source ID + Patient ID / Name)",
                            "folders": "one group per file unless named <patient>__*"}.get(layout, "")
    if merge_duplicates and len(dataset.samples):
        dataset.samples, dataset.merges = merge_duplicate_groups(dataset.samples)
        dataset.notes.extend(describe_merge(m) for m in dataset.merges)
    return dataset


LAYOUT_HELP = """\
  pocus    pocus_videos/{convex,linear}/ and/or pocus_images/{convex,linear}/ (+ dataset_metadata.csv);
           the label is the file-name prefix Cov/Pneu/Reg/Vir
  csv      an index CSV with filename, label, patientid columns, and the images in images/
  folders  one folder per label: <label>/<file> (patient <patient>__rest-of-name, else one per file)"""
