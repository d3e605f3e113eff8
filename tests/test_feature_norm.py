"""Per-video / per-source normalisation (covnb.feature_norm) and backbone ensembles (covnb.ensemble)."""

import numpy as np
import pandas as pd
import pytest

from covnb.ensemble import average_model, average_oof
from covnb.feature_norm import (normalise_features, scale_within, standardise_video_intensity,
                                standardise_within)


def test_standardise_within_removes_each_groups_offset_and_scale():
    # Two "sources": the same pattern, one shifted by +10 and scaled x3 (a device's gain).
    pattern = np.array([[0.0, 1.0], [2.0, -1.0], [4.0, 3.0]])
    features = np.concatenate([pattern, pattern * 3 + 10])[None]  # (1 view, 6 rows, 2 dims)
    out = standardise_within(features, ["a"] * 3 + ["b"] * 3)
    np.testing.assert_allclose(out[0, :3], out[0, 3:], atol=1e-6)  # the device is gone
    np.testing.assert_allclose(out[0, :3].mean(axis=0), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[0, :3].std(axis=0), [1.0, 1.0], atol=1e-6)
    # The exact values: (x - mean) / std of [0, 2, 4] is [-1.2247, 0, 1.2247]
    np.testing.assert_allclose(out[0, :3, 0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)], atol=1e-5)


def test_statistics_span_every_view_and_scale_only_keeps_the_mean_direction():
    features = np.array([[[1.0], [3.0]], [[5.0], [7.0]]])  # 2 views x 2 rows of one group: mean 4, std sqrt(5)
    out = standardise_within(features, ["g", "g"])
    np.testing.assert_allclose(out[:, :, 0], (features[:, :, 0] - 4.0) / np.sqrt(5.0), atol=1e-6)
    scaled = standardise_within(features, ["g", "g"], center=False)
    np.testing.assert_allclose(scaled[:, :, 0], features[:, :, 0] / np.sqrt(5.0), atol=1e-6)


def test_scale_within_divides_by_the_groups_mean_norm():
    features = np.array([[[3.0, 4.0], [6.0, 8.0], [1.0, 0.0]]])  # group x: norms 5 and 10 -> 7.5; group y: 1
    out = scale_within(features, ["x", "x", "y"])
    np.testing.assert_allclose(out[0], [[0.4, 4 / 7.5], [0.8, 8 / 7.5], [1.0, 0.0]], atol=1e-6)


def test_normalise_features_uses_the_named_column_and_rejects_unknown_modes():
    index = pd.DataFrame({"sample_id": ["v1", "v1", "v2", "v2"], "source": ["s", "s", "s", "s"]})
    features = np.array([[[0.0], [2.0], [10.0], [14.0]]])
    by_video = normalise_features(features, index, "video")
    np.testing.assert_allclose(by_video[0, :, 0], [-1, 1, -1, 1], atol=1e-6)
    by_source = normalise_features(features, index, "source")
    assert by_source[0, :, 0].mean() == pytest.approx(0.0, abs=1e-6)
    assert normalise_features(features, index, "none") is features
    with pytest.raises(ValueError, match="must be one of"):
        normalise_features(features, index, "hospital")
    with pytest.raises(ValueError, match="'source'"):
        normalise_features(features, index[["sample_id"]], "source")


def test_video_intensity_standardisation_undoes_a_gain_and_keeps_the_background_black():
    rng = np.random.default_rng(0)
    tissue = rng.uniform(40, 120, (2, 8, 8, 1)).repeat(3, axis=-1)
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    frames[:2] = tissue.astype(np.uint8)
    frames[2:] = np.clip(tissue * 1.8 + 20, 0, 255).astype(np.uint8)  # the same lung, brighter device
    frames[:, 0, 0] = 0  # background pixel
    out = standardise_video_intensity(frames, ["a", "a", "b", "b"])
    assert (out[:, 0, 0] == 0).all()
    inside = out[:2, 1:].astype(float)
    assert inside.mean() == pytest.approx(100.0, abs=1.5)
    assert inside.std() == pytest.approx(50.0, abs=1.5)
    np.testing.assert_allclose(out[:2, 1:].astype(float), out[2:, 1:].astype(float), atol=3)  # device removed


def _oof(probs, seed=0):
    rows = [{"seed": seed, "fold": 0, "sample_id": f"v{i // 2}", "frame_index": i % 2, "label": "a",
             "prob_a": p, "prob_b": 1 - p} for i, p in enumerate(probs)]
    return pd.DataFrame(rows)


def test_average_oof_averages_probabilities_row_by_row_in_any_order():
    first, second = _oof([0.2, 0.4, 0.9, 0.6]), _oof([0.6, 0.8, 0.1, 0.2])
    averaged = average_oof([first, second.iloc[::-1]], ["a", "b"])
    np.testing.assert_allclose(averaged["prob_a"], [0.4, 0.6, 0.5, 0.4])
    assert list(averaged["pred"]) == ["b", "a", "a", "b"]  # ties (0.5) go to the first class
    weighted = average_oof([first, second], ["a", "b"], weights=[3, 1])
    np.testing.assert_allclose(weighted["prob_a"], [0.3, 0.5, 0.7, 0.5])


def test_average_oof_refuses_members_on_different_rows():
    with pytest.raises(ValueError, match="same folds"):
        average_oof([_oof([0.1, 0.2]), _oof([0.1, 0.2], seed=1)], ["a", "b"])
    with pytest.raises(ValueError, match="no out-of-fold"):
        average_oof([], ["a"])


def test_average_model_returns_the_mean_of_the_members_outputs():
    import keras

    def constant(value):
        inputs = keras.Input((4, 4, 3))
        flat = keras.layers.Flatten()(inputs)
        dense = keras.layers.Dense(2, kernel_initializer="zeros",
                                   bias_initializer=keras.initializers.Constant(value))(flat)
        return keras.Model(inputs, dense)

    model = average_model([constant([1.0, 0.0]), constant([0.0, 3.0])])
    out = model.predict(np.zeros((2, 4, 4, 3), np.float32), verbose=0)
    np.testing.assert_allclose(out, [[0.5, 1.5], [0.5, 1.5]])
    other_input = keras.Input((5,))
    other = keras.Model(other_input, keras.layers.Dense(2)(other_input))
    with pytest.raises(ValueError, match="different inputs"):
        average_model([constant([1.0, 0.0]), other])


def test_intensity_standardisation_is_a_frame_setting_applied_per_video(tmp_path):
    """FrameSettings(intensity=True) gives the frames standardise_video_intensity gives (training
    and predict read files the same way), and leaves the cache keys of other settings alone."""
    import cv2

    from covnb.frames import FrameSettings, read_frames, standardise_intensity

    assert FrameSettings().key() == FrameSettings(intensity=False).key() != FrameSettings(intensity=True).key()
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 3), np.uint8)
    image[8:32, 8:32] = rng.integers(30, 90, (24, 24, 1))  # a dim "device": mean ~60
    path = tmp_path / "dim.png"
    cv2.imwrite(str(path), image)
    plain, _ = read_frames(path, FrameSettings(image_size=40))
    standard, _ = read_frames(path, FrameSettings(image_size=40, intensity=True))
    np.testing.assert_array_equal(standard, standardise_intensity(plain))
    inside = plain.mean(axis=-1) > 8
    assert abs(standard[inside].mean() - 100) < 1.5 and abs(standard[inside].std() - 50) < 1.5
    assert (standard[~inside] == plain[~inside]).all()  # the background stays black
    np.testing.assert_array_equal(standardise_video_intensity(plain, ["v"]), standard)
