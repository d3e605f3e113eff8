"""Download the public POCUS lung-ultrasound data set (scikit-learn ``fetch_*`` style).

The data are those of Born et al., "POCOVID-Net: automatic detection of COVID-19 from a new
lung ultrasound imaging dataset (POCUS)", arXiv:2004.12084, published in the GitHub
repository jannisborn/covid19_ultrasound. :func:`fetch_pocus` downloads the repository
archive once, keeps only its ``data/`` folder and returns it. Licences are per file (see the
``License`` column of ``dataset_metadata.csv``).

Downloads are all-or-nothing: the archive streams into a temporary file, is checked, is
extracted into a temporary folder, and only a complete folder is renamed into place.

The default download is pinned: a commit archive (:data:`POCUS_COMMIT`), not a moving branch,
checked against :data:`POCUS_ARCHIVE_SHA256` when that constant is set, or against a SHA-256 the
user passes. Without either, the first download is trusted and recorded (``pocus.fetch.json``
beside the data: URL, archive SHA-256 and the SHA-256 of every extracted file), and every later
download of that URL (``force=True``) must match it; :func:`verify_pocus` re-checks the data
folder against the record, so a changed or tampered copy is found. Extraction resolves
every member's target and refuses anything that would land outside the staging folder (absolute
names, ``..``, empty components such as ``data//var/x``, drive letters, backslashes), and caps
the extracted size (:data:`MAX_EXTRACTED_BYTES`).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from covnb.cache import cache_dir
from covnb.io_utils import atomic_write_json, replace_folder
from covnb.media import file_digest

#: The commit of jannisborn/covid19_ultrasound whose data/ folder covnb's results were measured on.
POCUS_COMMIT = "bed269a62275ff39d58c7c9e9a92405db5f7f6d6"
DEFAULT_POCUS_URL = f"https://github.com/jannisborn/covid19_ultrasound/archive/{POCUS_COMMIT}.zip"
#: SHA-256 of the archive at DEFAULT_POCUS_URL. None until someone with network access records it
#: (``sha256sum`` of the downloaded zip; covnb was built on machines without access to github.com):
#: until then the first download is trusted and recorded in ``pocus.fetch.json`` (trust on first
#: use), later downloads must match that record, and the SHA-256 is printed so it can be pinned here.
POCUS_ARCHIVE_SHA256: str | None = None
#: Refuse archives whose data/ folder would extract to more than this (the public data is ~0.3 GB).
MAX_EXTRACTED_BYTES = 4 * 10**9
POCUS_FOLDER = "pocus"
#: The record of a completed download, beside the data folder (not inside it).
FETCH_RECORD = "pocus.fetch.json"
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download or archive problem; the message names the URL, the problem and a way out."""


def _advice(url: str, target: Path) -> str:
    return (
        f"Download {url} yourself (or clone the repository), and pass its data/ folder "
        f"(the one holding pocus_videos/, pocus_images/ and dataset_metadata.csv) to covnb "
        f"as the data folder, or copy it to {target}. Without internet, covnb.phantom "
        "provides a synthetic data set."
    )


def _is_pocus_folder(folder: Path) -> bool:
    return (folder / "dataset_metadata.csv").is_file() and (
        (folder / "pocus_videos").is_dir() or (folder / "pocus_images").is_dir()
    )


def fetch_pocus(
    data_home=None,
    *,
    url: str = DEFAULT_POCUS_URL,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60,
    sha256: str | None = None,
    max_bytes: int = MAX_EXTRACTED_BYTES,
) -> Path:
    """Download the POCUS data once and return the folder with ``pocus_videos/``,
    ``pocus_images/`` and ``dataset_metadata.csv`` (``<data_home>/pocus``).

    ``data_home`` defaults to ``cache_dir("data")``. An existing complete copy is returned
    without any network access unless ``force``. Raises :class:`FetchError` on any problem
    (HTTP error, no connection, truncated download, not a zip, no ``data/`` folder, unsafe
    member paths, SHA-256 mismatch, more than ``max_bytes`` extracted) and then leaves no partial
    data set nor temporary file behind. ``sha256``: the archive's expected SHA-256 (default:
    :data:`POCUS_ARCHIVE_SHA256` for :data:`DEFAULT_POCUS_URL`; otherwise the SHA-256 recorded by
    the first download of the same URL in ``<data_home>/pocus.fetch.json``; the first download
    itself is trusted and recorded, with every extracted file's SHA-256, see :func:`verify_pocus`).

    Example
    -------
    >>> folder = fetch_pocus()                      # doctest: +SKIP
    >>> verify_pocus()["changed"]                   # doctest: +SKIP
    []
    """
    data_home = Path(data_home).expanduser() if data_home is not None else cache_dir("data")
    target = data_home / POCUS_FOLDER
    if not force and _is_pocus_folder(target):
        return target
    if target.exists() and not force:
        raise FetchError(
            f"{target} exists but is not a complete POCUS folder (it needs dataset_metadata.csv "
            "and pocus_videos/ or pocus_images/). Move it away or call fetch_pocus(force=True) "
            "to replace it."
        )
    data_home.mkdir(parents=True, exist_ok=True)
    sha256, pinned_by_record = _archive_pin(data_home, url, sha256)

    archive = None
    staging = None
    try:
        handle, name = tempfile.mkstemp(prefix=".pocus-download-", suffix=".zip", dir=data_home)
        os.close(handle)
        archive = Path(name)
        _download(url, archive, timeout=timeout, progress=progress, target=target)
        try:
            actual = check_sha256(archive, sha256, url=url, target=target, progress=progress)
        except FetchError as error:
            if pinned_by_record:
                raise FetchError(f"{error} (The pin is the first download's, recorded in "
                                 f"{data_home / FETCH_RECORD}; delete that file to trust the new archive.)") from None
            raise
        staging = Path(tempfile.mkdtemp(prefix=".pocus-extract-", dir=data_home))
        _extract_data_folder(archive, staging, url=url, target=target, max_bytes=max_bytes)
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        files = file_digests(staging)
        replace_folder(staging, target)
        staging = None
        _write_fetch_record(data_home, {"url": url, "archive_sha256": actual, "files": files,
                                        "pinned": "constant or argument" if sha256 and not pinned_by_record
                                        else "first download (trust on first use)",
                                        "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _archive_pin(data_home: Path, url: str, sha256: str | None) -> tuple[str | None, bool]:
    """``(expected SHA-256, whether it comes from the first download's record)``: the argument, else the
    constant for :data:`DEFAULT_POCUS_URL`, else the one recorded for the same URL (None: trust on first use)."""
    if sha256 is None and url == DEFAULT_POCUS_URL:
        sha256 = POCUS_ARCHIVE_SHA256
    record = read_fetch_record(data_home)
    pinned_by_record = sha256 is None and record is not None and record.get("url") == url
    if pinned_by_record:
        sha256 = record["archive_sha256"]
    return sha256, pinned_by_record


def _download(url: str, destination: Path, timeout: float, progress: bool, target: Path) -> None:
    """Stream url into destination; check the length against Content-Length."""
    request = urllib.request.Request(url, headers={"User-Agent": "covnb"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise FetchError(
            f"Could not download the POCUS data from {url}: HTTP {error.code} {error.reason}. "
            + _advice(url, target)
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise FetchError(
            f"Could not connect to {url} to download the POCUS data ({reason}). " + _advice(url, target)
        ) from None

    with response:
        length_header = response.headers.get("Content-Length")
        try:
            expected = int(length_header) if length_header is not None else None
        except ValueError:
            expected = None
        received = 0
        last_report = 0.0
        try:
            with open(destination, "wb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    now = time.monotonic()
                    if progress and now - last_report > 0.5:
                        _report(url, received, expected)
                        last_report = now
        except (http.client.IncompleteRead, http.client.HTTPException, OSError) as error:
            raise FetchError(
                f"The download of {url} broke off after {received} bytes"
                + (f" of {expected}" if expected else "")
                + f" ({type(error).__name__}: {error}). Try again later. "
                + _advice(url, target)
            ) from None
        if progress:
            _report(url, received, expected, end=True)
    if expected is not None and received != expected:
        raise FetchError(
            f"The download of {url} is truncated: received {received} bytes, the server "
            f"announced {expected}. Try again later. " + _advice(url, target)
        )


def check_sha256(archive: Path, expected: str | None, *, url: str, target: Path, progress: bool = False) -> str:
    """SHA-256 of ``archive``; raises :class:`FetchError` when ``expected`` is given and differs."""
    actual = file_digest(archive, "sha256", _CHUNK)
    if expected is not None and actual.lower() != expected.strip().lower():
        raise FetchError(
            f"The archive downloaded from {url} has SHA-256 {actual}, expected {expected}: it is not "
            "the pinned data (changed upstream or tampered with). " + _advice(url, target)
        )
    if expected is None and progress:
        print(f"SHA-256 of {url}: {actual} (not pinned)", file=sys.stderr)
    return actual


def _human(n_bytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"


def _report(url: str, received: int, expected: int | None, end: bool = False) -> None:
    if expected:
        line = f"Downloading {url}: {_human(received)} / {_human(expected)} ({100 * received / expected:.0f}%)"
    else:
        line = f"Downloading {url}: {_human(received)}"
    print("\r" + line, end="\n" if end else "", file=sys.stderr, flush=True)


def unsafe_member_reason(name: str) -> str | None:
    """Why a zip member name is unsafe to extract (None when it is a plain relative path)."""
    if "\x00" in name:
        return "holds a NUL byte"
    if "\\" in name:
        return "holds a backslash"
    if name.startswith("/"):
        return "is absolute"
    parts = name.split("/")
    if name.endswith("/"):
        parts = parts[:-1]
    if any(part == "" for part in parts):
        return "has an empty component ('//'), which can make it absolute"
    if any(part in (".", "..") for part in parts):
        return "has a '.' or '..' component"
    if parts and ":" in parts[0]:
        return "starts with a drive letter"
    return None


def _safe_destination(staging: Path, relative: str) -> Path | None:
    """The resolved target of ``relative`` under ``staging``, or None when it would lie outside."""
    root = staging.resolve()
    destination = (root / relative).resolve()
    return destination if destination != root and destination.is_relative_to(root) else None


def _extract_data_folder(archive: Path, staging: Path, url: str, target: Path,
                         max_bytes: int = MAX_EXTRACTED_BYTES) -> None:
    """Extract ``<top>/data/**`` of the zip into staging, refusing unsafe member names and
    archives that would extract to more than ``max_bytes``."""
    if not zipfile.is_zipfile(archive):
        raise FetchError(
            f"The file downloaded from {url} is not a zip archive (got {archive.stat().st_size} "
            "bytes of something else, e.g. an HTML error page). " + _advice(url, target)
        )
    try:
        with zipfile.ZipFile(archive) as zf:
            prefix, wanted = _checked_data_members(zf, url, target, max_bytes)
            _write_members(zf, wanted, prefix, staging, url, target, max_bytes)
    except zipfile.BadZipFile as error:
        raise FetchError(f"The archive from {url} is corrupt ({error}). " + _advice(url, target)) from None
    except FileExistsError as error:
        raise FetchError(f"The archive from {url} holds the member {error.filename} twice; refusing it. "
                         + _advice(url, target)) from None
    except OSError as error:
        raise FetchError(f"The archive from {url} cannot be extracted into {staging} ({error}). "
                         + _advice(url, target)) from None
    if not _is_pocus_folder(staging):
        raise FetchError(
            f"The data/ folder of the archive from {url} lacks dataset_metadata.csv or "
            "pocus_videos/ / pocus_images/. " + _advice(url, target)
        )


def _checked_data_members(zf: zipfile.ZipFile, url: str, target: Path, max_bytes: int):
    """``(prefix, members)``: the ``<top>/data/`` prefix and the members below it, once every member name is
    safe, the declared size within ``max_bytes`` and every CRC right."""
    members = zf.infolist()
    for info in members:
        reason = unsafe_member_reason(info.filename)
        if reason is not None:
            raise FetchError(
                f"The archive from {url} holds an unsafe member path {info.filename!r} ({reason}); "
                "refusing to extract it. " + _advice(url, target)
            )
    prefix = _find_data_prefix([m.filename for m in members])
    if prefix is None:
        raise FetchError(
            f"The archive from {url} has no data/ folder (expected <repository>-<branch>/data/). "
            + _advice(url, target)
        )
    wanted = [info for info in members if info.filename.startswith(prefix) and info.filename != prefix]
    declared = sum(info.file_size for info in wanted)
    if declared > max_bytes:
        raise FetchError(
            f"The archive from {url} would extract to {_human(declared)}, more than the cap of "
            f"{_human(max_bytes)}; refusing it. " + _advice(url, target)
        )
    bad = zf.testzip()
    if bad is not None:
        raise FetchError(
            f"The archive from {url} is corrupt (member {bad!r} fails its CRC check). "
            + _advice(url, target)
        )
    return prefix, wanted


def _write_members(zf: zipfile.ZipFile, wanted, prefix: str, staging: Path, url: str, target: Path,
                   max_bytes: int) -> None:
    """Write ``wanted`` below ``staging`` (without ``prefix``), stopping once more than ``max_bytes`` come out."""
    written = 0
    for info in wanted:
        relative = info.filename[len(prefix):]
        destination = _safe_destination(staging, relative)
        if destination is None:
            raise FetchError(
                f"The archive from {url} holds member {info.filename!r} whose target lies outside "
                "the extraction folder; refusing to extract it. " + _advice(url, target)
            )
        if info.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as source, open(destination, "xb") as out:
            while block := source.read(_CHUNK):
                written += len(block)
                if written > max_bytes:
                    raise FetchError(
                        f"The archive from {url} extracts to more than the cap of {_human(max_bytes)} "
                        "(its members are larger than they declare); refusing it. " + _advice(url, target)
                    )
                out.write(block)


def _find_data_prefix(names: list[str]) -> str | None:
    """``"<top>/data/"`` for the first top-level folder holding data/ (or ``"data/"``)."""
    for name in names:
        parts = name.split("/")
        if len(parts) >= 2 and parts[0] == "data":
            return "data/"
        if len(parts) >= 3 and parts[1] == "data":
            return f"{parts[0]}/data/"
    return None



def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``folder``, keyed by its POSIX path relative to it."""
    digests = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            digests[path.relative_to(folder).as_posix()] = file_digest(path, "sha256", _CHUNK)
    return digests


def read_fetch_record(data_home) -> dict | None:
    """The record of the last complete download under ``data_home`` (None when there is none).
    An unreadable record is an error naming it: it is what pins the data."""
    path = Path(data_home).expanduser() / FETCH_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FetchError(f"{path} cannot be read ({type(error).__name__}: {error}); delete it to fetch anew.") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or \
            not isinstance(record.get("archive_sha256"), str):
        raise FetchError(f"{path} is not a covnb fetch record (needs url, archive_sha256 and files); "
                         "delete it to fetch anew.")
    return record


def _write_fetch_record(data_home: Path, record: dict) -> None:
    atomic_write_json(data_home / FETCH_RECORD, record, indent=1)


def verify_pocus(data_home=None) -> dict:
    """Check the fetched POCUS folder against its download record.

    Returns ``{"folder", "archive_sha256", "checked", "changed", "missing", "added"}`` (lists of
    relative paths); raises :class:`FetchError` when there is no record.
    """
    data_home = Path(data_home).expanduser() if data_home is not None else cache_dir("data")
    record = read_fetch_record(data_home)
    if record is None:
        raise FetchError(f"No download record in {data_home} ({FETCH_RECORD}): fetch the data first "
                         "(covnb data fetch).")
    folder = data_home / POCUS_FOLDER
    present = file_digests(folder) if folder.is_dir() else {}
    expected = record["files"]
    return {
        "folder": str(folder), "archive_sha256": record["archive_sha256"], "checked": len(expected),
        "changed": sorted(name for name in expected if name in present and present[name] != expected[name]),
        "missing": sorted(name for name in expected if name not in present),
        "added": sorted(name for name in present if name not in expected),
    }
