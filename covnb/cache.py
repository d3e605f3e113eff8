"""Where covnb keeps what it computes or downloads: one user cache folder.

The folder is ``$COVNB_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/covnb``, else
``~/.cache/covnb``. Input data folders are never written to.

The cache is only ever a speed-up: an unreadable entry is a miss (recomputed and replaced),
a folder that cannot be created or written means running without caching (one warning naming
the folder), and ``COVNB_NO_CACHE=1`` (``--no-cache``) switches it off. Interrupted runs'
``.partial-*`` staging folders are removed by the next run (:func:`staging_folder`).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from covnb.io_utils import atomic_write

CACHE_ENV = "COVNB_CACHE_DIR"
NO_CACHE_ENV = "COVNB_NO_CACHE"
_WARNED: set[str] = set()


class CacheError(OSError):
    """The cache folder cannot be created; the message names it and how to move it."""


def cache_root() -> Path:
    """The cache folder (not created)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "covnb"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a sub-folder of the covnb cache; :class:`CacheError` when it cannot be created."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheError(f"cannot create the covnb cache folder {path} ({error.strerror or error}); set "
                         f"{CACHE_ENV} to a writable folder") from None
    return path


def cache_enabled() -> bool:
    """False when ``$COVNB_NO_CACHE`` is set to 1/true/yes (``--no-cache``)."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def warn_cache_unwritable(folder: Path | str, error: BaseException | str) -> None:
    """Say once per folder (per process) that the cache cannot be written and covnb goes on without it."""
    key = str(folder)
    if key in _WARNED:
        return
    _WARNED.add(key)
    reason = getattr(error, "strerror", None) or str(error)
    print(f"covnb: warning: cache folder {folder} cannot be written ({reason}); going on without caching there "
          f"(set {CACHE_ENV} to a writable folder, or --no-cache)", file=sys.stderr)


def usable_cache_dir(*parts: str) -> Path | None:
    """:func:`cache_dir` when caching is on and the folder can be created, else None (warned once)."""
    if not cache_enabled():
        return None
    try:
        return cache_dir(*parts)
    except CacheError as error:
        warn_cache_unwritable(cache_root().joinpath(*parts), error.args[0].split("(", 1)[-1].rsplit(")", 1)[0])
        return None


# ----------------------------------------------------------------------------- cached arrays


def read_cached_array(path: Path, rows: int | None = None):
    """A cached ``.npy`` array, or None when it is missing, unreadable (0-byte, truncated,
    garbled) or has not ``rows`` rows: a miss, never an error (the caller recomputes and replaces it)."""
    import numpy as np

    if not Path(path).is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(array, np.ndarray) or array.ndim < 1 or (rows is not None and array.shape[0] != rows):
        return None
    return array


def write_cached_array(path: Path, array) -> bool:
    """Write ``array`` to ``path`` atomically (temporary file + rename); on a read-only or full
    cache warn once and return False (the caller goes on with the array it has)."""
    import numpy as np

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # mode 0644: the cache is shared
        atomic_write(path, lambda tmp: np.save(tmp, array, allow_pickle=False), suffix=".npy", mode=0o644)
        return True
    except OSError as error:
        warn_cache_unwritable(path.parent, error)
        return False


# ----------------------------------------------------------------------------- staging folders

OWNER_FILE = ".covnb-owner"
STALE_SECONDS = 60


def _owner_alive(folder: Path) -> bool:
    try:
        host, pid = (folder / OWNER_FILE).read_text().split()
        if host != socket.gethostname():
            return True  # another machine's run on a shared disk: leave it alone
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.<out name>.partial-*`` folders beside ``out`` left by interrupted runs: those whose
    owning process is gone (or, without an owner file, untouched for :data:`STALE_SECONDS`).
    Returns the removed folders."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for folder in sorted(out.parent.glob(f".{out.name}.partial-*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        if (folder / OWNER_FILE).exists():
            stale = not _owner_alive(folder)
        else:
            stale = time.time() - folder.stat().st_mtime > STALE_SECONDS
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


def staging_folder(out: Path) -> Path:
    """A new ``.<out name>.partial-*`` folder beside ``out`` for a run's outputs (renamed into place
    on success), after removing those of interrupted runs. It records its owner process."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for folder in clean_stale_partials(out):
        print(f"covnb: removed {folder}, left by an interrupted run", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (staging / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return staging
