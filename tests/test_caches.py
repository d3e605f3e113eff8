"""The two content-addressed caches: decoded frames (covnb.frames.FrameCache) and frozen features
(covnb.train.compute_features). A hit returns exactly what a miss computed; anything that changes
the content or the settings is a miss; a damaged entry is a miss that is replaced (see also
test_hostile_inputs.py and test_hostile_training.py for every kind of damage)."""

import cv2
import numpy as np
import pytest

from covnb.frames import FrameCache, FrameSettings

keras = pytest.importorskip("keras")

from test_train import synthetic_frameset, tiny  # noqa: E402

import covnb.train as train  # noqa: E402


def _video(path, seed=0, n_frames=8):
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 6.0, (40, 32))
    for _ in range(n_frames):
        writer.write(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    writer.release()
    return path


def test_frame_cache_hit_miss_and_damaged_entry(tmp_path):
    video = _video(tmp_path / "clip.avi")
    settings = FrameSettings(image_size=24, rate_hz=3.0, max_frames=4)
    cache = FrameCache(tmp_path / "frames")
    first, info = cache.get(video, settings)
    assert (cache.misses, cache.hits) == (1, 0) and first.shape[1:] == (24, 24, 3)
    fresh = FrameCache(tmp_path / "frames")  # another process: the entry on disk is a hit
    again, again_info = fresh.get(video, settings)
    assert (fresh.misses, fresh.hits) == (0, 1)
    assert np.array_equal(again, first) and again_info["frame_index"] == info["frame_index"]
    fresh.get(video, FrameSettings(image_size=24, rate_hz=3.0, max_frames=2))  # other settings: a miss
    assert fresh.misses == 1
    _video(video, seed=1)  # same name, new content: a miss
    changed, _ = fresh.get(video, settings)
    assert fresh.misses == 2 and not np.array_equal(changed, first)
    array_path, info_path = fresh._paths(video, settings)
    info_path.write_text("{not json")  # damaged sidecar: a miss, decoded again and replaced
    damaged = FrameCache(tmp_path / "frames")
    assert np.array_equal(damaged.get(video, settings)[0], changed)
    assert (damaged.misses, damaged.replaced) == (1, 1)
    assert FrameCache(tmp_path / "frames").get(video, settings)[0].shape == changed.shape


def test_feature_cache_hit_miss_and_damaged_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    frames = synthetic_frameset(n_groups=2, videos=1, frames=2).frames
    config = tiny("linear_probe")
    log = []
    computed = train.compute_features(frames, config, log=log.append)
    (entry,) = (tmp_path / "cache" / "features").glob("*.npy")
    assert "computed" in log[-1]
    cached = train.compute_features(frames, config, log=log.append)
    assert "read from cache" in log[-1]
    np.testing.assert_array_equal(cached, computed)
    # one more view (the mirror): only that view is computed, the clean view is read
    mirrored = train.compute_features(frames, tiny("default", head="gap", mirror_view=True), views=0, log=log.append)
    assert log[-1].startswith("features: 1 view(s)") and "computed" in log[-1]
    np.testing.assert_array_equal(mirrored[0], computed[0])
    # other frames: a miss
    changed = frames.copy()
    changed[0, 0, 0, 0] ^= 1
    train.compute_features(changed, config, log=log.append)
    assert "computed" in log[-1]
    # a damaged entry: recomputed, identical, and replaced
    entry.write_bytes(b"\x93NUMPY damaged")
    np.testing.assert_array_equal(train.compute_features(frames, config, log=log.append), computed)
    assert "computed" in log[-1]
    np.testing.assert_array_equal(np.load(entry), computed[0])
    train.compute_features(changed, config, log=log.append)
    assert "read from cache" in log[-1]  # the other entries were not touched
