"""Executed notebooks as HTML pages that read offline, math included.

nbconvert's HTML loads MathJax from a CDN, so without network ``$A_k$`` stays raw text. covnb
copies the MathJax 2.7 that the ``jupyter-server-mathjax`` package ships (Jupyter's own offline
MathJax: TeX input, HTML-CSS output, STIX web fonts) into the run folder once, leaving out what a
page never loads (the accessibility extensions, translations, SVG fonts), and points each page
at it with a relative URL, so a run folder can be moved or zipped and still renders its math.
nbconvert's MathJax configuration (``$...$`` inline, ``$$...$$`` display) is kept as it is.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

MATHJAX_FOLDER = "mathjax"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe,local/covnb"
# jupyter-server-mathjax ships the STIX web fonts only (MathJax's default TeX fonts would silently fall back to
# the system's serif): the same font settings Jupyter's classic notebook used with it.
MATHJAX_LOCAL_CONFIG = """MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               linebreaks: {automatic: true}}
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/covnb.js");
"""
# Parts of jupyter-server-mathjax's static folder a page with TeX math never requests.
MATHJAX_LEFT_OUT = ("extensions/a11y", "localization", "jax/output/SVG", "LICENSE")


def mathjax_source() -> Path | None:
    """The static MathJax folder of the installed ``jupyter-server-mathjax``; None when it is not installed.

    Found without importing the package (that would import all of jupyter_server).
    """
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if (folder / "MathJax.js").is_file() else None


def _left_out(relative: str) -> bool:
    return any(relative == part or relative.startswith(part + "/") for part in MATHJAX_LEFT_OUT)


def copy_mathjax(run_dir: str | Path) -> str | None:
    """Copy MathJax into ``<run_dir>/mathjax`` (once) and return the URL a page in ``run_dir`` loads it by.

    Returns None when ``jupyter-server-mathjax`` is missing (pages then keep nbconvert's CDN URL).
    The copy is written to a temporary folder and renamed, so a half-copied MathJax is never used.
    """
    source = mathjax_source()
    if source is None:
        return None
    run_dir = Path(run_dir)
    target = run_dir / MATHJAX_FOLDER
    url = f"{MATHJAX_FOLDER}/MathJax.js?config={MATHJAX_CONFIG}"
    if (target / "MathJax.js").is_file():
        return url
    staging = run_dir / f".{MATHJAX_FOLDER}-{uuid.uuid4().hex[:8]}.tmp"
    shutil.copytree(source, staging, ignore=lambda folder, names: [
        name for name in names if _left_out(Path(folder, name).relative_to(source).as_posix())])
    (staging / "config" / "local").mkdir(parents=True, exist_ok=True)
    (staging / "config" / "local" / "covnb.js").write_text(MATHJAX_LOCAL_CONFIG, encoding="utf-8")
    try:
        os.replace(staging, target)
    except OSError:  # another page won the race: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return url


def folder_size(folder: str | Path) -> int:
    """Bytes in the files under ``folder``."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def notebook_to_html(notebook_path: str | Path, html_path: str | Path, *, mathjax_url: str | None = None) -> Path:
    """Write an executed notebook as HTML (nbconvert's lab template), atomically.

    ``mathjax_url``: where the page loads MathJax from, relative to ``html_path`` (see
    :func:`copy_mathjax`); None keeps nbconvert's default.
    """
    import nbconvert
    import nbformat

    exporter = nbconvert.HTMLExporter() if mathjax_url is None else nbconvert.HTMLExporter(mathjax_url=mathjax_url)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook_path), as_version=4))
    html_path = Path(html_path)
    tmp = html_path.with_name(f".{html_path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path
