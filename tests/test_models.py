"""covnb.models: flat graphs, heads, trainable layers, augmentation in training only, save/load."""


import numpy as np
import pytest

keras = pytest.importorskip("keras")

from covnb.models import (ModelFileError, augmentation_spec, build_model, load_model, save_model,  # noqa: E402
                          set_trainable, sidecar_path)

SIZE = 32


@pytest.fixture(scope="module")
def gap_model():
    return build_model("mobilenet", 3, "gap", SIZE, weights=None, trainable="head", augmentation="default", alpha=0.25,
                       seed=1)


def frames(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def test_graph_is_flat_and_conv_layers_reachable(gap_model):
    assert not any(isinstance(layer, keras.Model) for layer in gap_model.layers)
    names = [layer.name for layer in gap_model.layers]
    assert names[0] == "image"
    assert names.index("augment_rotation") < names.index("mobilenet_preprocess") < names.index("conv_pw_13")
    assert names[-2:] == ["logits", "probs"]
    # A Grad-CAM style sub-model from the input to an inner conv layer builds without "Graph disconnected".
    probe = keras.Model(gap_model.input, [gap_model.get_layer("conv_pw_13_relu").output, gap_model.output])
    maps, probs = probe(frames(2))
    assert maps.shape[-1] == 256 and probs.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, rtol=1e-5)


def test_trainable_choices(gap_model):
    set_trainable(gap_model, "head", "mobilenet")
    trainable = {layer.name for layer in gap_model.layers if layer.trainable and layer.weights}
    assert trainable == {"logits"}
    set_trainable(gap_model, "last_block", "mobilenet")
    trainable = {layer.name for layer in gap_model.layers if layer.trainable and layer.weights}
    assert {"conv_dw_13", "conv_pw_13", "logits"} <= trainable
    assert "conv_pw_12" not in trainable
    assert not any(isinstance(gap_model.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    set_trainable(gap_model, "all", "mobilenet")
    assert gap_model.get_layer("conv1").trainable
    set_trainable(gap_model, "head", "mobilenet")
    with pytest.raises(ValueError, match="trainable"):
        set_trainable(gap_model, "everything", "mobilenet")


def test_augmentation_only_in_training(gap_model):
    x = frames(3)
    augment = keras.Model(gap_model.input, gap_model.get_layer("mobilenet_preprocess").input)
    np.testing.assert_array_equal(np.asarray(augment(x, training=False)), x)
    assert not np.allclose(np.asarray(augment(x, training=True)), x)
    first, second = np.asarray(gap_model(x, training=False)), np.asarray(gap_model(x, training=False))
    np.testing.assert_array_equal(first, second)


def test_pocovid_head_layers_and_small_inputs():
    model = build_model("mobilenet", 2, "pocovid", SIZE, weights=None, augmentation="pocovid", alpha=0.25)
    names = [layer.name for layer in model.layers]
    for name in ("head_pool", "head_features", "head_dense", "head_bn", "head_relu", "head_dropout", "logits"):
        assert name in names
    assert model.get_layer("head_dense").units == 64
    assert model.get_layer("head_dropout").rate == 0.5
    assert model.output.shape[-1] == 2
    assert {"augment_flip", "augment_rotation", "augment_shift"} <= set(names)
    assert model.get_layer("augment_flip").mode == "horizontal_and_vertical"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="head"):
        build_model("mobilenet", 3, "transformer", SIZE, weights=None, alpha=0.25)
    with pytest.raises(ValueError, match="n_classes"):
        build_model("mobilenet", 1, "gap", SIZE, weights=None, alpha=0.25)
    with pytest.raises(ValueError, match="augmentation"):
        augmentation_spec("heavy")
    with pytest.raises(ValueError, match="Unknown augmentation keys"):
        augmentation_spec({"rotate": 5})


def test_save_load_round_trip_gives_identical_predictions(tmp_path, gap_model):
    x = frames(5, seed=3)
    expected = np.asarray(gap_model(x, training=False))
    metadata = {"classes": ["covid", "pneumonia", "regular"], "rate_hz": 3.0, "backbone": "mobilenet",
                "cv_metrics": {"balanced_accuracy": np.float64(0.7)}, "data_fingerprint": "abc"}
    path = save_model(gap_model, tmp_path / "model", metadata)
    assert path.name == "model.keras" and sidecar_path(path).is_file()
    loaded, meta = load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected, rtol=1e-5, atol=1e-6)
    assert meta["classes"] == metadata["classes"] and meta["image_size"] == SIZE
    assert meta["cv_metrics"]["balanced_accuracy"] == 0.7 and "covnb_version" in meta
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in gap_model.layers]
    # A folder holding one model loads too.
    assert load_model(tmp_path)[1]["data_fingerprint"] == "abc"


def test_save_rejects_wrong_class_count(tmp_path, gap_model):
    with pytest.raises(ValueError, match="classes"):
        save_model(gap_model, tmp_path / "m.keras", {"classes": ["a", "b"]})


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="broken.keras"):
        load_model(broken)
    bad_json = tmp_path / "x.keras"
    bad_json.write_bytes(b"zz")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="x.json"):
        load_model(bad_json)


def test_multiscale_head_pools_every_tap_and_stays_flat():
    from covnb.models import MULTISCALE_TAPS

    model = build_model("mobilenet", 3, "multiscale", SIZE, weights=None, alpha=0.25, seed=0)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    taps = MULTISCALE_TAPS["mobilenet"]
    channels = sum(int(model.get_layer(tap).output.shape[-1]) for tap in taps) + 256  # + conv_pw_13_relu
    assert model.get_layer("head_features").output.shape[-1] == channels == 64 + 128 + 256
    # The pooled features are exactly the global averages of the tapped layers, in order.
    x = frames(2)
    probe = keras.Model(model.input, [model.get_layer(t).output for t in (*taps, "conv_pw_13_relu")]
                        + [model.get_layer("head_features").output])
    *maps, pooled = probe(x)
    expected = np.concatenate([np.asarray(m).mean(axis=(1, 2)) for m in maps], axis=1)
    np.testing.assert_allclose(np.asarray(pooled), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiscale"):
        build_model("inception_v3", 3, "multiscale", 75, weights=None)


def test_midlevel_head_pools_average_and_max_of_each_tap_and_drops_the_top():
    from covnb.models import MIDLEVEL_TAPS

    model = build_model("mobilenet", 3, "midlevel", SIZE, weights=None, alpha=0.25, seed=0)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    taps = MIDLEVEL_TAPS["mobilenet"]
    names = [layer.name for layer in model.layers]
    assert "conv_pw_13_relu" not in names  # layers after the deepest tap are not part of the model
    channels = sum(int(model.get_layer(tap).output.shape[-1]) for tap in taps)
    assert model.get_layer("head_features").output.shape[-1] == 2 * channels
    x = frames(2)
    probe = keras.Model(model.input, [model.get_layer(t).output for t in taps] + [model.get_layer("head_features").output])
    *maps, pooled = probe(x)
    expected = np.concatenate([np.concatenate([np.asarray(m).mean(axis=(1, 2)), np.asarray(m).max(axis=(1, 2))], axis=1)
                               for m in maps], axis=1)
    np.testing.assert_allclose(np.asarray(pooled), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="midlevel"):
        build_model("inception_v3", 3, "midlevel", 75, weights=None)
