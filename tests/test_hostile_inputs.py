"""Bad, odd and hostile input (issue 11): each test builds its input and asserts the exact outcome,
refused with a message naming the thing, or skipped and listed with the rest unchanged."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covnb.fetch import (DEFAULT_POCUS_URL, POCUS_COMMIT, FetchError, _extract_data_folder, check_sha256,
                         unsafe_member_reason)

TOP = "covid19_ultrasound-0123"
METADATA = b"Current location,Filename,Label\npocus_videos/convex,Cov_x,COVID-19\n"


def _zip(members: dict[str, bytes], path: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    path.write_bytes(buffer.getvalue())
    return path


def _good_members() -> dict[str, bytes]:
    return {f"{TOP}/data/dataset_metadata.csv": METADATA, f"{TOP}/data/pocus_videos/convex/Cov_x.mp4": b"video"}


# ----------------------------------------------------------------------------- 1 zip traversal


def test_default_download_is_a_pinned_commit_archive():
    assert len(POCUS_COMMIT) == 40 and DEFAULT_POCUS_URL.endswith(f"/archive/{POCUS_COMMIT}.zip")
    assert "master" not in DEFAULT_POCUS_URL


@pytest.mark.parametrize("name", [f"{TOP}/data//tmp/covnb_escape", f"{TOP}/data/../../escape", "/tmp/covnb_abs",
                                  f"{TOP}/data/a\\..\\..\\escape", "C:/escape", f"{TOP}/data/./x"])
def test_zip_member_escaping_the_staging_folder_is_refused(tmp_path, name):
    archive = _zip({**_good_members(), name: b"escaped"}, tmp_path / "evil.zip")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(FetchError, match="unsafe member path") as caught:
        _extract_data_folder(archive, staging, url="http://x/evil.zip", target=tmp_path / "pocus")
    assert repr(name) in str(caught.value)
    assert not Path("/tmp/covnb_escape").exists() and not (tmp_path / "escape").exists()
    assert list(staging.iterdir()) == []  # refused before anything was written


def test_zip_over_the_size_cap_is_refused(tmp_path):
    members = {**_good_members(), f"{TOP}/data/pocus_videos/convex/Cov_big.mp4": b"\0" * 10_000}
    archive = _zip(members, tmp_path / "big.zip")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(FetchError, match="more than the cap"):
        _extract_data_folder(archive, staging, url="u", target=tmp_path / "pocus", max_bytes=5_000)
    _extract_data_folder(archive, staging, url="u", target=tmp_path / "pocus", max_bytes=20_000)
    assert (staging / "pocus_videos" / "convex" / "Cov_big.mp4").stat().st_size == 10_000


def test_sha256_pin_is_checked_on_a_local_archive(tmp_path):
    import hashlib

    archive = _zip(_good_members(), tmp_path / "a.zip")
    right = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert check_sha256(archive, right, url="u", target=tmp_path) == right
    assert check_sha256(archive, right.upper(), url="u", target=tmp_path) == right
    with pytest.raises(FetchError, match=f"SHA-256 {right}, expected 00"):
        check_sha256(archive, "00" * 32, url="u", target=tmp_path)


_NAME = st.lists(st.sampled_from(["a", "b", ".", "/", "\\", ":", "..", "//", "\x00", "data"]),
                 max_size=10).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_NAME)
def test_zip_extractor_never_writes_outside_staging(tmp_path_factory, name):
    """Any member name: refused with a FetchError naming it when unsafe, else extracted inside staging."""
    work = tmp_path_factory.mktemp("zip")
    member = f"{TOP}/data/{name}"
    archive = _zip({**_good_members(), member: b"payload"}, work / "fuzz.zip")
    staging = work / "outer" / "staging"
    staging.mkdir(parents=True)
    before = set(work.rglob("*"))
    with zipfile.ZipFile(archive) as zf:
        member = zf.namelist()[-1]  # as zipfile reads it back (a NUL ends the name)
    name = member[len(f"{TOP}/data/"):]
    unsafe = unsafe_member_reason(member)
    try:
        _extract_data_folder(archive, staging, url="u", target=work / "pocus")
    except FetchError as error:
        assert unsafe is None or f"unsafe member path {member!r}" in str(error)
    else:
        assert unsafe is None
        if not member.endswith("/"):
            assert (staging / name).read_bytes() == b"payload"
    for path in set(work.rglob("*")) - before:
        assert staging.resolve() in path.resolve().parents, path
