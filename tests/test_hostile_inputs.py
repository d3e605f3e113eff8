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


# ----------------------------------------------------------------------------- helpers for data folders

import os  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from badfiles import write_video  # noqa: E402
from covnb.datasets import DataError, check_usable, explain_layout, load_dataset, merge_duplicate_groups  # noqa: E402


def _image(path: Path, seed: int, size: int = 40) -> Path:
    """A small image with random blocks (distinct seeds give clearly different pictures)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    picture = cv2.resize(blocks, (size, size), interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.dstack([picture, picture[::-1], picture.T]))
    return path


def _class_folders(root: Path, per_class: int = 3) -> Path:
    for c, label in enumerate(("covid", "regular")):
        for i in range(per_class):
            _image(root / label / f"p{c}{i}__img.png", seed=10 * c + i)
    return root


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature + IHDR declaring width x height, then a tiny IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + width) * 4)  # a few rows of a (declared) huge image
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _skipped(dataset) -> dict[str, str]:
    return {Path(p).name: r for p, r in zip(dataset.skipped["path"], dataset.skipped["reason"])}


# ----------------------------------------------------------------------------- 3 decompression bombs


def test_image_declaring_a_huge_size_is_skipped_from_its_header(tmp_path):
    root = _class_folders(tmp_path / "data")
    bomb = _png_header_only(root / "covid" / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 100_000
    clean = load_dataset(_class_folders(tmp_path / "clean"))
    dataset = load_dataset(root)
    assert "30000x30000 pixels, more than the limit of 100,000,000" in _skipped(dataset)["bomb.png"]
    assert list(dataset.samples["filename"]) == list(clean.samples["filename"])  # the rest unchanged


def test_pixel_limit_is_settable_and_applies_to_frames_and_videos(tmp_path, monkeypatch):
    from covnb.frames import FrameError, FrameSettings, read_frames

    image = _image(tmp_path / "a.png", seed=1, size=40)
    video = write_video(tmp_path / "v.mp4", size=48)
    monkeypatch.setenv("COVNB_MAX_PIXELS", "1000")
    with pytest.raises(FrameError, match="40x40 pixels, more than the limit of 1,000"):
        read_frames(image, FrameSettings(image_size=16))
    with pytest.raises(FrameError, match="48x48 pixel frames, more than the limit of 1,000"):
        read_frames(video, FrameSettings(image_size=16))
    monkeypatch.setenv("COVNB_MAX_PIXELS", "5000")
    assert read_frames(image, FrameSettings(image_size=16))[0].shape == (1, 16, 16, 3)


def test_video_declaring_too_many_frames_is_skipped(tmp_path, monkeypatch):
    import covnb.media as media

    root = _class_folders(tmp_path / "data")
    write_video(root / "covid" / "long.mp4", n_frames=12)
    monkeypatch.setattr(media, "MAX_VIDEO_FRAMES", 5)
    assert _skipped(load_dataset(root))["long.mp4"] == "video declares 12 frames, more than the limit of 5"


# ----------------------------------------------------------------------------- 6 duplicates share a group


def test_identical_and_near_identical_files_share_a_group_before_folds(tmp_path):
    root = _class_folders(tmp_path / "data", per_class=4)
    (root / "covid" / "copy__renamed.png").write_bytes((root / "covid" / "p00__img.png").read_bytes())
    picture = cv2.imread(str(root / "regular" / "p10__img.png"))
    cv2.imwrite(str(root / "regular" / "again__reencoded.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, 70])
    dataset = load_dataset(root)
    group = dict(zip(dataset.samples["filename"], dataset.samples["group"]))
    assert group["copy__renamed.png"] == group["p00__img.png"] == "copy"
    assert group["again__reencoded.jpg"] == group["p10__img.png"] == "again"
    assert len({group[f"p0{i}__img.png"] for i in range(4)}) == 4  # different pictures stay apart
    reasons = {tuple(m["groups"]): m["reason"] for m in dataset.merges}
    assert "identical files covid/copy__renamed.png and covid/p00__img.png" in reasons[("copy", "p00")] or \
        "identical files covid/p00__img.png and covid/copy__renamed.png" in reasons[("copy", "p00")]
    assert "near-identical first frames" in reasons[("again", "p10")]
    assert any("merged patient groups copy, p00" in note for note in dataset.notes)
    # the split audit that used to fail on these files now passes
    from covnb.splits import audit_split, patient_folds

    folds = patient_folds(dataset.samples, n_splits=2, seed=0)
    assert audit_split(dataset.samples, folds.to_numpy()).ok


def test_merge_is_idempotent_and_leaves_distinct_files_alone(tmp_path):
    root = _class_folders(tmp_path / "data")
    samples = load_dataset(root, merge_duplicates=False).samples
    merged, merges = merge_duplicate_groups(samples)
    assert merges == [] and merged is samples


# ----------------------------------------------------------------------------- 7 CSV index


def _csv_layout(root: Path, rows: list[str], header: str = "filename,label,patientid") -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(6):
        _image(root / "images" / f"i{i}.png", seed=100 + i)
    (root / "index.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root


def test_csv_without_patient_column_says_so_loudly(tmp_path, capsys):
    root = _csv_layout(tmp_path / "d", [f"i{i}.png,{'COVID-19' if i < 3 else 'normal'}" for i in range(6)],
                       header="filename,label")
    dataset = load_dataset(root)
    assert dataset.grouping.startswith("NO PATIENT COLUMN in index.csv")
    assert "NO PATIENT COLUMN" in capsys.readouterr().err
    assert "but NO patient column" in dataset.layout_reason
    assert dataset.summary()["grouping"] == dataset.grouping


def test_csv_empty_ids_are_warned_and_listed_duplicates_counted_once(tmp_path, capsys):
    rows = ["i0.png,COVID-19,p1", "i1.png,COVID-19,", "i2.png,COVID-19,p2", "i2.png,COVID-19,p2",
            "i3.png,normal,p3", "i4.png,normal,", "i5.png,normal,p5", "i5.png,COVID-19,p5"]
    dataset = load_dataset(_csv_layout(tmp_path / "d", rows))
    assert sorted(dataset.samples["filename"]) == ["i0.png", "i1.png", "i2.png", "i3.png", "i4.png"]
    assert _skipped(dataset)["i5.png"] == "listed 2 times in index.csv with different labels (COVID-19, normal)"
    assert "i2.png: listed 2 times in index.csv; counted once" in dataset.notes
    warning = "2 row(s) of index.csv have an empty patientid: each is its own group: i1.png, i4.png"
    assert f"WARNING {warning}" in dataset.notes and warning in capsys.readouterr().err
    assert "2 image(s) with an empty id" in dataset.grouping


def test_csv_filename_outside_the_image_folder_is_skipped(tmp_path):
    secret = tmp_path / "secret.png"
    _image(secret, seed=7)
    rows = ["i0.png,COVID-19,p1", "../../secret.png,COVID-19,p2", "i3.png,normal,p3"]
    dataset = load_dataset(_csv_layout(tmp_path / "d", rows))
    assert _skipped(dataset)["secret.png"] == "filename points outside the image folder"
    assert sorted(dataset.samples["filename"]) == ["i0.png", "i3.png"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list('ab,"\n\r;\x00é') + ["i0.png", "../i0.png", "filename", "COVID-19"]),
                    max_size=30).map("".join))
def test_any_csv_index_is_read_or_refused_with_its_name(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("csv")
    (root / "images").mkdir()
    _image(root / "images" / "i0.png", seed=1)
    (root / "index.csv").write_text("filename,label,patientid\n" + text, encoding="utf-8")
    try:
        dataset = load_dataset(root)
    except DataError as error:
        assert "index.csv" in str(error)
        return
    assert dataset.layout == "csv"
    assert set(dataset.samples["filename"]) <= {"i0.png"}
    assert len(dataset.samples) + len(dataset.skipped) >= 1  # i0.png is used or listed as skipped


# ----------------------------------------------------------------------------- 8 layout detection


def test_folder_that_looks_like_csv_layout_but_fails_its_checks_is_an_error(tmp_path):
    root = _csv_layout(tmp_path / "d", [f"i{i}.png,p{i}" for i in range(6)], header="filename,patientid")
    with pytest.raises(DataError, match=r"looks like the csv layout \(index.csv beside images/\) but index.csv "
                                        r"lacks the column\(s\) label \(has: filename, patientid\)"):
        load_dataset(root)
    assert load_dataset(root, layout="folders").layout == "folders"  # explicit choice still possible


def test_layout_detection_says_what_it_found(tmp_path):
    root = _class_folders(tmp_path / "data")
    (root / "notes.csv").write_text("comment,date\nhello,today\n")
    layout, reason = explain_layout(root)
    assert layout == "folders" and "covid, regular" in reason and "ignored notes.csv" in reason
    assert load_dataset(root).layout_reason == reason


# ----------------------------------------------------------------------------- 9 one class, no files


def test_one_class_or_no_usable_file_is_a_clear_error_before_decoding(tmp_path):
    root = _class_folders(tmp_path / "data")
    dataset = load_dataset(root)
    with pytest.raises(DataError, match=r"only one class \(covid: 3 file\(s\)\) for training"):
        check_usable(dataset.samples[dataset.samples["label"] == "covid"])
    empty = tmp_path / "empty"
    (empty / "covid").mkdir(parents=True)
    (empty / "covid" / "a.png").write_bytes(b"")
    nothing = load_dataset(empty)
    with pytest.raises(DataError, match=r"no usable files for training \(1 file\(s\) skipped; skipped: 1 zero-byte"):
        check_usable(nothing.samples, nothing.skipped)


# ----------------------------------------------------------------------------- 10 symlinks listed


def test_broken_symlinks_and_symlink_loops_are_listed_as_skipped(tmp_path):
    root = _class_folders(tmp_path / "data")
    os.symlink(root / "covid" / "gone.png", root / "covid" / "broken.png")
    os.symlink(root / "covid" / "loop_b.png", root / "covid" / "loop_a.png")
    os.symlink(root / "covid" / "loop_a.png", root / "covid" / "loop_b.png")
    os.symlink(root / "covid" / "p00__img.png", root / "covid" / "p00__link.png")
    dataset = load_dataset(root)
    skipped = _skipped(dataset)
    assert skipped["broken.png"].startswith("broken symlink (points to ")
    assert skipped["loop_a.png"] == skipped["loop_b.png"] == "symlink loop"
    assert "p00__link.png" in set(dataset.samples["filename"])  # a good symlink is a file
    assert len(dataset.samples) == 7


# ----------------------------------------------------------------------------- 11-12 cache


def test_unreadable_frame_cache_entries_are_misses_replaced(tmp_path):
    from covnb.frames import FrameCache, FrameSettings

    image = _image(tmp_path / "a.png", seed=3)
    settings = FrameSettings(image_size=16)
    cache = FrameCache(tmp_path / "frames")
    expected, _ = cache.get(image, settings)
    array_path, info_path = cache._paths(image, settings)
    for damage in (b"", array_path.read_bytes()[:100], b"\x93NUMPY garbage"):
        array_path.write_bytes(damage)
        again = FrameCache(tmp_path / "frames")
        frames, info = again.get(image, settings)
        assert np.array_equal(frames, expected) and again.misses == 1 and again.replaced == 1
        assert np.array_equal(np.load(array_path), expected)  # replaced by a good entry
    info_path.write_text("")
    assert np.array_equal(FrameCache(tmp_path / "frames").get(image, settings)[0], expected)


def test_unreadable_feature_cache_entry_is_a_miss(tmp_path):
    from covnb.cache import read_cached_array, write_cached_array

    path = tmp_path / "f.npy"
    assert write_cached_array(path, np.ones((3, 2)))
    assert read_cached_array(path, rows=3).shape == (3, 2)
    assert read_cached_array(path, rows=4) is None
    path.write_bytes(b"")
    assert read_cached_array(path, rows=3) is None


def test_unwritable_cache_never_drops_a_good_file(tmp_path, capsys):
    from covnb.frames import FrameCache, FrameSettings, extract_frames

    root = _class_folders(tmp_path / "data")
    samples = load_dataset(root).samples
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    result = extract_frames(samples, FrameSettings(image_size=16), cache=FrameCache(blocker / "frames"),
                            progress=False)
    assert len(result.skipped) == 0 and len(result) == len(samples)
    err = capsys.readouterr().err
    assert err.count("cannot be written") == 1 and str(blocker / "frames") in err
    # a cache folder that exists but where one new entry cannot be written
    cache = FrameCache(tmp_path / "frames")
    for sample in samples["path"][:2]:
        sub = cache._paths(Path(sample), FrameSettings(image_size=16))[0].parent
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_text("blocks the entry's folder")
    result = extract_frames(samples, FrameSettings(image_size=16), cache=cache, progress=False)
    assert len(result.skipped) == 0 and len(result) == len(samples)


def test_no_cache_switch_and_uncreatable_cache_folder(tmp_path, monkeypatch, capsys):
    from covnb.cache import usable_cache_dir
    from covnb.frames import FrameSettings, extract_frames

    root = _class_folders(tmp_path / "data")
    samples = load_dataset(root).samples
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("COVNB_CACHE_DIR", str(blocker / "cache"))
    assert usable_cache_dir("features") is None
    assert "cannot be written" in capsys.readouterr().err
    assert len(extract_frames(samples, FrameSettings(image_size=16), progress=False)) == len(samples)
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COVNB_NO_CACHE", "1")
    extract_frames(samples, FrameSettings(image_size=16), progress=False)
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- 13 interrupted runs


def test_partial_folders_of_interrupted_runs_are_cleaned(tmp_path, capsys):
    import subprocess
    import sys

    from covnb.cache import OWNER_FILE, staging_folder

    out = tmp_path / "runs" / "train"
    out.parent.mkdir(parents=True)
    old_empty = out.parent / ".train.partial-old"
    old_empty.mkdir()
    os.utime(old_empty, (0, 0))
    dead = out.parent / ".train.partial-dead"
    dead.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (dead / OWNER_FILE).write_text(f"{socket.gethostname()} {gone.stdout.strip()}\n")
    (dead / "metrics.json").write_text("{}")
    alive = staging_folder(out)
    fresh = out.parent / ".train.partial-fresh"
    fresh.mkdir()  # a run that just started (no owner file yet): kept
    other = out.parent / ".other.partial-x"
    other.mkdir()
    os.utime(other, (0, 0))
    second = staging_folder(out)
    remaining = sorted(p.name for p in out.parent.iterdir())
    assert remaining == sorted([alive.name, second.name, fresh.name, other.name])
    assert "left by an interrupted run" in capsys.readouterr().err
