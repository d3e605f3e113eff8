"""Where covnb keeps what it computes or downloads: one user cache folder.

The folder is ``$COVNB_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/covnb``, else
``~/.cache/covnb``. Input data folders are never written to.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "COVNB_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a sub-folder of the covnb cache."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "covnb"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
