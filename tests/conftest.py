"""Shared pytest setup: quiet TensorFlow before anything imports it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
POCUS = SHARED / "data" / "pocus"
CXR = SHARED / "data" / "cxr"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes its caches into a temporary folder, never ~/.cache."""
    if "COVNB_CACHE_DIR" not in os.environ or os.environ.get("COVNB_TEST_OWN_CACHE") == "1":
        monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "covnb-cache"))


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
