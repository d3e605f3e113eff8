"""Shared pytest setup: quiet TensorFlow before anything imports it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
POCUS = SHARED / "data" / "pocus"
CXR = SHARED / "data" / "cxr"


def _redirect_cache(tmp_path_factory, monkeypatch) -> None:
    if "COVNB_CACHE_DIR" not in os.environ or os.environ.get("COVNB_TEST_OWN_CACHE") == "1":
        monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "covnb-cache"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes its caches into a temporary folder, never ~/.cache."""
    _redirect_cache(tmp_path_factory, monkeypatch)


@contextlib.contextmanager
def terminal_captured():
    """What reaches the terminal while inside, as pytest's ``capfd`` sees it: Python's ``sys.stdout`` /
    ``sys.stderr`` and file descriptors 1 and 2, so child processes (the notebook kernels) are caught too.
    Yields a dict that holds ``out`` and ``err`` (text) once the block has ended."""
    captured = {}
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved_fds = os.dup(1), os.dup(2)
        saved_streams = sys.stdout, sys.stderr
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        try:
            yield captured
        finally:
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            for name, file, stream in (("out", out, sys.stdout), ("err", err, sys.stderr)):
                file.seek(0)
                captured[name] = file.read().decode("utf-8", errors="replace")
                stream.write(captured[name])  # passed on, so pytest still shows it when a test fails


@pytest.fixture(scope="session")
def phantom_smoke_report(tmp_path_factory):
    """``covnb report --profile smoke`` on the embedded phantom, run ONCE per session as users run it: from a
    folder of their own (``some project``) with a relative ``--out`` holding a space (``my runs``), while
    papermill runs each kernel in its own folder. The tests that check this same run share it and only read
    it (tests/test_notebooks.py, tests/test_browser.py): one smoke run instead of one per test.

    Returns a dict: ``code`` (what ``main`` returned), ``folder`` (the working directory it ran from),
    ``out`` (``folder / "my runs"``), ``stdout`` / ``stderr`` (the terminal output of this process and of its
    kernels while it ran, as ``capfd`` would have captured it)."""
    from covnb.cli import main

    folder = tmp_path_factory.mktemp("user") / "some project"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _redirect_cache(tmp_path_factory, monkeypatch)  # the autouse fixture is function-scoped: not run yet
        monkeypatch.chdir(folder)
        with terminal_captured() as terminal:
            code = main(["report", "--profile", "smoke", "--out", "my runs", "--no-progress"])
    return {"code": code, "folder": folder, "out": folder / "my runs", "stdout": terminal["out"],
            "stderr": terminal["err"]}


def require(path: Path) -> Path:
    """Skip a test cleanly when the ../shared data is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"{path} not available (tests on real data need ../shared beside the checkout)")
    return path


@pytest.fixture
def pocus_root() -> Path:
    return require(POCUS)


@pytest.fixture
def cxr_root() -> Path:
    return require(CXR)


POCUS_SUBSET = [
    "pocus_videos/convex/Cov-Atlas+(44).gif",
    "pocus_videos/convex/Cov_denault_proposedUS_vid12.mov",
    "pocus_images/convex/Cov_unsmooth_pleuralline_prelim_study_SSRN_paper2.png",
    "pocus_videos/convex/Pneu_northumbria_0409_set6_vid7.avi",
    "pocus_images/convex/Pneu_Avi_consolidated-lung.JPG",
    "pocus_videos/convex/pneu-radiopaeda.mp4",
    "pocus_videos/convex/Reg_pat1Image_133327.mpeg",
    "pocus_videos/convex/Reg_northumbria_0409_set5_vid1.avi",
    "pocus_images/convex/Reg_Avi_Image001.jpg",
]


@pytest.fixture
def pocus_subset(tmp_path, pocus_root) -> Path:
    """A small copy of the POCUS layout (videos of every container kind, images, metadata)."""
    root = tmp_path / "pocus"
    for relative in POCUS_SUBSET:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pocus_root / relative, target)
    shutil.copy2(pocus_root / "dataset_metadata.csv", root / "dataset_metadata.csv")
    return root
