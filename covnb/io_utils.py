"""Small helpers every module shares: atomic writes, JSON-safe values, file-name slugs, error reasons.

Atomic writes go to a temporary file in the target's folder and are renamed into place
(``os.replace``), so a reader never sees half a file and an interrupted run leaves the old file.
Only the standard library is imported here (NumPy lazily, for :func:`to_jsonable`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "replace_folder",
    "to_jsonable",
    "slug",
    "error_reason",
]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, suffix: str = "",
                 mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary file beside ``path``, then rename it to ``path``.

    ``suffix`` ends the temporary name (some writers need it: ``.npz``, ``.weights.h5``);
    ``mode`` is the file's permission bits (default: what ``open`` would give, ``0o666`` less
    the umask; ``mkstemp`` alone makes private files). The temporary file is removed on any error.
    The parent folder must exist.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)


def atomic_write_json(path: str | os.PathLike, payload, *, indent: int | None = 2, mode: int | None = None,
                      **dumps_kwargs) -> Path:
    """Write ``payload`` as JSON (after :func:`to_jsonable`) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(payload), indent=indent, **dumps_kwargs), mode=mode)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the finished folder ``staging`` to ``target``: an existing ``target`` is moved aside
    first and removed after (put back if the rename fails); an empty one is just removed."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            old = target.with_name(f".{target.name}.old-{staging.name.rsplit('-', 1)[-1]}")
            target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None and not target.exists():
            old.rename(target)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return target


def to_jsonable(value, *, nan_to_none: bool = True):
    """``value`` with NumPy scalars and arrays as Python values, tuples as lists, paths as text, keys as text.

    A Python float NaN becomes ``None`` (JSON has no NaN) unless ``nan_to_none`` is False; NumPy
    scalars become their Python value as they are.

    >>> import numpy as np
    >>> to_jsonable({"a": np.float32(0.5), "b": (1, float("nan")), 2: np.arange(2)})
    {'a': 0.5, 'b': [1, None], '2': [0, 1]}
    """
    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v, nan_to_none=nan_to_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, nan_to_none=nan_to_none) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if nan_to_none and isinstance(value, float) and value != value:
        return None
    return value


def slug(text, *, default: str = "file", strip: str = "_.") -> str:
    """A file-name-safe form of ``text``: runs of other characters become ``_``; ``strip`` is
    trimmed from both ends and ``default`` stands for an empty result.

    >>> slug("COVID 19 / p=0.9")
    'COVID_19_p_0.9'
    """
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip(strip) or default


def error_reason(error: BaseException, path: str | os.PathLike) -> str:
    """The message of ``error`` without a leading ``"<path>: "`` (the table already names the file).

    >>> error_reason(ValueError("/data/a.mp4: no frames"), "/data/a.mp4")
    'no frames'
    """
    message = str(error)
    return message.split(": ", 1)[-1] if message.startswith(str(path)) else message
