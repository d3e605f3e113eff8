"""Shortcut audit: source x class table, source probe, CAM heat inside the ultrasound image."""

import numpy as np
import pandas as pd
import pytest

from covnb.audit import cam_heat, format_audit, heat_summary, source_class_table, source_probe


def _videos(n_sources=3, patients_per_source=4, videos_per_patient=2):
    rows = []
    for s in range(n_sources):
        for p in range(patients_per_source):
            for v in range(videos_per_patient):
                rows.append({"sample_id": f"s{s}p{p}v{v}", "group": f"s{s}p{p}", "source": f"src{s}",
                             "label": ["covid", "regular"][(s + p) % 2]})
    return pd.DataFrame(rows)


def test_source_class_table_counts_files_with_totals():
    samples = pd.DataFrame({"source": ["18", "18", "14", "2", "18"], "label": ["pneu", "reg", "reg", "cov", "pneu"]})
    table = source_class_table(samples)
    assert list(table.index) == ["18", "14", "2", "total"]  # largest source first
    assert table.loc["18", "pneu"] == 2 and table.loc["18", "total"] == 3
    assert table.loc["total", "total"] == 5 and table.loc["total", "reg"] == 2


def test_source_probe_finds_a_source_written_in_the_features_and_not_in_noise():
    videos = _videos()
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(videos), 20))
    tell = noise.copy()
    tell[np.arange(len(videos)), videos["source"].str[-1].astype(int)] += 6.0  # each source lights its own feature
    found = source_probe(tell, videos, seed=0)
    blind = source_probe(noise, videos, seed=0)
    assert found["chance"] == pytest.approx(1 / 3) and found["n_classes"] == 3
    assert found["balanced_accuracy"] > 0.9
    assert blind["balanced_accuracy"] < 0.6


def test_source_probe_drops_sources_with_too_few_patients():
    videos = _videos()
    extra = pd.DataFrame([{"sample_id": "x1", "group": "lonely", "source": "src9", "label": "covid"}])
    videos = pd.concat([videos, extra], ignore_index=True)
    features = np.random.default_rng(1).normal(size=(len(videos), 5))
    result = source_probe(features, videos, min_patients=3)
    assert result["dropped"] == ["src9"] and result["n_videos"] == len(videos) - 1
    single = source_probe(features[:8], videos.iloc[:8].reset_index(drop=True))
    assert np.isnan(single["balanced_accuracy"]) and "fewer than two" in single["reason"]


@pytest.mark.slow
def test_cam_heat_measures_heat_inside_the_found_region():
    import keras

    from covnb.frames import FrameSet, FrameSettings

    size = 64
    rng = np.random.default_rng(0)
    frames = np.zeros((6, size, size, 3), np.uint8)
    frames[:, 8:56, 12:52] = rng.integers(40, 200, (6, 48, 40, 1), dtype=np.uint8)  # moving "tissue"
    frames[:, 2:6, 2:30] = 255  # static text at the top
    index = pd.DataFrame({"sample_id": ["a"] * 3 + ["b"] * 3, "label": ["covid"] * 3 + ["regular"] * 3,
                          "group": ["a"] * 3 + ["b"] * 3, "frame_index": [0, 1, 2] * 2})
    frameset = FrameSet(frames, index, pd.DataFrame(columns=["path", "reason"]), FrameSettings(image_size=size))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    maps = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs / 255.0)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(maps))
    model = keras.Model(inputs, keras.layers.Softmax(name="probs")(logits))
    samples = pd.DataFrame({"sample_id": ["a", "b"], "source": ["14", "18"]})
    heat = cam_heat(model, frameset, ["covid", "regular"], samples=samples, frames_per_video=2)
    assert len(heat) == 4 and set(heat["source"]) == {"14", "18"}
    assert (heat["explained"] == heat["label"]).all()  # the labelled class is explained
    assert heat["region_share"].between(0.4, 0.6).all()  # 48 x 40 of 64 x 64 = 0.47
    assert heat["inside"].dropna().between(0, 1).all()
    summary = heat_summary(heat, "label")
    assert set(summary.index) == {"covid", "regular"} and (summary["files"] == 1).all()
    np.testing.assert_allclose(summary["heat_outside"], 1 - summary["heat_inside"])


def test_format_audit_says_when_the_probe_cannot_be_measured():
    heat = pd.DataFrame({"sample_id": ["a"], "label": ["covid"], "source": ["x"], "inside": [0.8],
                         "region_share": [0.6]})
    probe = pd.DataFrame([{"treatment": "none", "scope": "all classes", "balanced_accuracy": np.nan, "chance": 1.0,
                           "n_sources": 1, "n_videos": 1, "sources": "x"}])
    text = format_audit({"data_root": "d", "task": "t", "n_files": 1, "n_patients": 1,
                         "source_class": source_class_table(pd.DataFrame({"source": ["x"], "label": ["covid"]})),
                         "source_probe": probe, "model": "m", "heat_by_class": heat_summary(heat, "label"),
                         "heat_by_source": heat_summary(heat, "source"), "heat_inside_mean": 0.8,
                         "region_share_mean": 0.6})
    assert "not measurable" in text and "0.800 of the heat" in text
