"""Where runs go: the package's notebooks and profiles, and fresh run folders that never overwrite."""

from __future__ import annotations

import datetime as _dt
import os
from importlib import resources as importlib_resources
from pathlib import Path

from covnb.cache import cache_dir

PACKAGE_DIR = Path(str(importlib_resources.files("covnb")))
NOTEBOOKS_DIR = PACKAGE_DIR / "notebooks"
PROFILES_DIR = PACKAGE_DIR / "profiles"


def new_run_dir(out: Path, profile: str) -> Path:
    """A fresh folder for a run; never an existing one."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        run_dir = out / (f"{profile}-{stamp}" if attempt == 0 else f"{profile}-{stamp}-{attempt}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise OSError(f"could not create a new run folder in {out}")


def default_output_dir(notebook: str, *, cwd: str | Path | None = None) -> Path:
    """A new folder ``runs/<notebook>-<UTC time>`` for a notebook run by hand (its ``output_dir`` left at None).

    It lies under the working directory, except when that is inside the covnb package, its notebooks or the
    source checkout (JupyterLab runs a notebook inside ``notebooks/``) or is not writable: then under the
    covnb cache (``covnb.cache.cache_dir("runs")``). Nothing is ever written next to the notebooks.
    """
    here = Path(cwd if cwd is not None else os.getcwd()).expanduser().resolve()
    protected = {PACKAGE_DIR.resolve(), NOTEBOOKS_DIR.resolve(), PROFILES_DIR.resolve()}
    checkout = PACKAGE_DIR.resolve().parent
    if (checkout / "pyproject.toml").is_file():
        protected.add(checkout)
    inside = any(here == folder or folder in here.parents for folder in protected)
    base = cache_dir("runs") if inside or not os.access(here, os.W_OK) else here / "runs"
    return new_run_dir(base, notebook)
