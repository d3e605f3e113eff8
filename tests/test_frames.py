from pathlib import Path

import cv2
import numpy as np
import pytest

from badfiles import add_bad_files, write_video
from covnb.datasets import load_dataset
from covnb.frames import (ASSUMED_FPS, FrameCache, FrameError, FrameSettings, apply_clahe, effective_fps,
                          extract_frames, read_frames, sample_indices)


def test_sample_indices_follow_the_rate_and_the_cap():
    assert list(sample_indices(300, fps=30, rate_hz=3, max_frames=30)) == list(range(0, 300, 10))
    assert list(sample_indices(300, fps=30, rate_hz=3, max_frames=5)) == [0, 10, 20, 30, 40]
    # slower than the rate: every frame once, no division by zero
    assert list(sample_indices(6, fps=2, rate_hz=3, max_frames=30)) == [0, 1, 2, 3, 4, 5]
    assert list(sample_indices(0, fps=30, rate_hz=3, max_frames=30)) == []


def test_effective_fps_distrusts_implausible_or_contradicted_rates():
    stamps_10hz = [i * 100.0 for i in range(20)]
    assert effective_fps(10, stamps_10hz) == (10, "container")
    assert effective_fps(25, stamps_10hz) == (pytest.approx(10), "timestamps")  # container lies
    assert effective_fps(1000, stamps_10hz) == (pytest.approx(10), "timestamps")  # implausible
    assert effective_fps(0, []) == (ASSUMED_FPS, "assumed")  # unknown
    assert effective_fps(0, [0.0] * 20) == (ASSUMED_FPS, "assumed")  # stamps without information
    assert effective_fps(24, [0.0] * 20) == (24, "container")


def test_low_fps_video_gives_every_frame(tmp_path):
    path = write_video(tmp_path / "slow.avi", n_frames=6, fps=2)
    frames, info = read_frames(path, FrameSettings(image_size=32))
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    assert info["frame_index"] == [0, 1, 2, 3, 4, 5]


def test_video_sampled_at_3hz_up_to_max(tmp_path):
    path = write_video(tmp_path / "fast.avi", n_frames=90, fps=30)
    frames, info = read_frames(path, FrameSettings(image_size=32, max_frames=4))
    assert info["frame_index"] == [0, 10, 20, 30]
    assert info["time_s"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # the frames really are those indices: brightness encodes the index in write_video
    assert [int(f[0, 0, 0]) for f in frames] == pytest.approx([(i * 20) % 255 for i in (0, 10, 20, 30)], abs=3)


def test_real_containers_decode(pocus_subset):
    for path in sorted(pocus_subset.rglob("*.*")):
        if path.suffix.lower() == ".csv":
            continue
        frames, info = read_frames(path, FrameSettings(image_size=64, max_frames=5))
        assert 1 <= len(frames) <= 5 and frames.shape[1:] == (64, 64, 3), path.name


def test_crop_clahe_and_grayscale(tmp_path):
    gray = np.tile(np.linspace(100, 140, 80, dtype=np.uint8), (60, 1))
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    frames, _ = read_frames(path, FrameSettings(image_size=40, crop=(0.0, 0.5, 0.0, 0.5)))
    assert frames.shape == (1, 40, 40, 3)
    assert np.all(frames[0, ..., 0] == frames[0, ..., 1])  # gray -> RGB
    assert frames.max() <= 121  # the left half of the ramp only
    enhanced = apply_clahe(np.repeat(gray[..., None], 3, axis=2))
    assert np.ptp(enhanced[..., 0].astype(int)) > np.ptp(gray.astype(int))  # contrast stretched
    with pytest.raises(ValueError, match="crop"):
        FrameSettings(crop=(0.5, 0.2, 0, 1))


def test_bad_files_raise_frame_errors_naming_the_file(tmp_path):
    good = write_video(tmp_path / "good.mp4")
    bad = add_bad_files(tmp_path / "bad", good)
    for name in ("zero_byte", "truncated", "corrupt", "zero_frames", "unreadable_image", "text_as_image"):
        with pytest.raises(FrameError) as error:
            read_frames(bad[name])
        assert str(bad[name]) in str(error.value)


def test_frame_cache_hits_and_keys(tmp_path):
    (tmp_path / "data").mkdir()
    video = write_video(tmp_path / "data" / "clip.avi", n_frames=30, fps=10)
    cache = FrameCache(tmp_path / "cache")
    settings = FrameSettings(image_size=32)
    first, _ = cache.get(video, settings)
    second, _ = cache.get(video, settings)
    assert (cache.misses, cache.hits) == (1, 1) and np.array_equal(first, second)
    cache.get(video, FrameSettings(image_size=48))  # other settings, other entry
    assert cache.misses == 2
    write_video(video, n_frames=30, fps=10, seed=5)  # other content, other entry
    cache.get(video, settings)
    assert cache.misses == 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["clip.avi"]  # nothing written beside the data


def test_extract_frames_skips_bad_files_and_uses_cache_dir(pocus_subset, tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cachehome"))
    good = pocus_subset / "pocus_videos/convex/pneu-radiopaeda.mp4"
    add_bad_files(pocus_subset / "pocus_videos" / "convex", good)
    dataset = load_dataset(pocus_subset)
    samples = dataset.samples
    frame_set = extract_frames(samples, FrameSettings(image_size=32, max_frames=3), progress=False)
    assert len(frame_set.frames) == len(frame_set.index)
    assert set(frame_set.index["sample_id"]) == set(samples["sample_id"])
    assert frame_set.index.groupby("sample_id").size().max() <= 3
    assert any((tmp_path / "cachehome" / "frames").rglob("*.npy"))
    gone = Path(samples["path"].iloc[0])
    gone.unlink()
    again = extract_frames(samples, FrameSettings(image_size=32, max_frames=3), progress=False)
    assert list(again.skipped["path"]) == [str(gone)] and "not found" in again.skipped["reason"].iloc[0]


def test_mask_outside_sector_blacks_out_text_and_keeps_the_fan():
    from covnb.frames import mask_outside_sector

    frames = np.zeros((2, 64, 64, 3), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    fan = ((yy - 4) ** 2 + (xx - 32) ** 2 < 55 ** 2) & (np.abs(xx - 32) < (yy - 4) * 0.9 + 2) & (yy > 6)
    frames[:, fan] = 120
    frames[:, 58:62, 1:4] = 255  # a "logo" in the bottom-left corner, away from the fan
    assert not fan[58:62, 1:4].any()
    masked = mask_outside_sector(frames)
    assert masked[:, 58:62, 1:4].max() == 0
    kept = (masked[:, fan] == frames[:, fan]).all(axis=-1).mean()
    assert kept > 0.99  # the fan stays (the mask's opening may trim a pixel or two at its apex)
    empty = np.zeros((1, 16, 16, 3), np.uint8)
    np.testing.assert_array_equal(mask_outside_sector(empty), empty)  # no fan found: unchanged
    settings = FrameSettings(mask_sector=True)
    assert settings.key() != FrameSettings().key()  # cached separately
