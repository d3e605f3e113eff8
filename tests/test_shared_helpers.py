"""The shared helpers: atomic writes, JSON-safe values, slugs, error reasons, folder replacement,
frame -> video aggregation, the per-model compiled-call cache, and the backbone registry."""

from __future__ import annotations

import gc
import json
import math
import os
import stat

import numpy as np
import pandas as pd
import pytest

from covnb import registry
from covnb.aggregate import video_level, vote_scores
from covnb.compiled import cached_for_model
from covnb.io_utils import (atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, error_reason,
                            replace_folder, slug, to_jsonable)


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("intact")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_atomic_write_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        plain = atomic_write_text(tmp_path / "a.txt", "x")
        shared = atomic_write_text(tmp_path / "b.txt", "x", mode=0o640)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644  # what open() gives, not mkstemp's 0600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_atomic_write_suffix_reaches_the_writer(tmp_path):
    seen = []
    atomic_write(tmp_path / "arrays.npz", lambda tmp: (seen.append(tmp.name), np.savez(tmp, a=np.arange(3))),
                 suffix=".npz")
    assert seen[0].endswith(".npz")
    with np.load(tmp_path / "arrays.npz") as arrays:
        assert arrays["a"].tolist() == [0, 1, 2]


def test_atomic_write_json_sanitises(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", {"x": np.float32(0.5), "nan": float("nan"), "p": tmp_path,
                                                   "t": (1, 2), 3: np.arange(2)})
    assert json.loads(path.read_text()) == {"x": 0.5, "nan": None, "p": str(tmp_path), "t": [1, 2], "3": [0, 1]}
    assert path.read_text().startswith('{\n  "x"')  # indent 2, as the sidecars always were


def test_to_jsonable_keeps_nan_when_asked():
    value = to_jsonable({"fps": float("nan"), "i": [np.int64(3)]}, nan_to_none=False)
    assert math.isnan(value["fps"]) and value["i"] == [3] and type(value["i"][0]) is int


# ----------------------------------------------------------------------------- names and messages


@pytest.mark.parametrize("text, expected", [("COVID 19 / p=0.9", "COVID_19_p_0.9"), ("..", "file"),
                                            ("_a b_", "a_b"), ("grad-cam++", "grad-cam++")])
def test_slug(text, expected):
    assert slug(text) == expected


def test_slug_options_of_the_widget():
    assert slug("a.", default="x", strip="_") == "a."
    assert slug("///", default="x", strip="_") == "x"


def test_error_reason_strips_the_leading_path_only():
    assert error_reason(ValueError("/d/a.mp4: no frames"), "/d/a.mp4") == "no frames"
    assert error_reason(ValueError("no frames in /d/a.mp4"), "/d/a.mp4") == "no frames in /d/a.mp4"


def test_replace_folder_swaps_and_cleans(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = tmp_path / ".data.partial-abc"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_folder(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ----------------------------------------------------------------------------- aggregation


def _frames():
    return pd.DataFrame({"sample_id": ["a", "a", "a", "b"], "group": ["p1"] * 3 + ["p2"],
                         "prob_x": [0.9, 0.2, 0.3, 0.6], "prob_y": [0.1, 0.8, 0.7, 0.4]})


def test_video_level_mean():
    videos = video_level(_frames(), ["prob_x", "prob_y"], ["sample_id"])
    assert list(videos.columns) == ["sample_id", "prob_x", "prob_y", "group", "n_frames"]
    np.testing.assert_allclose(videos[["prob_x", "prob_y"]].to_numpy(), [[1.4 / 3, 1.6 / 3], [0.6, 0.4]])
    assert videos["n_frames"].tolist() == [3, 1] and videos["group"].tolist() == ["p1", "p2"]


def test_video_level_vote_counts_frames_and_breaks_ties_by_probability():
    videos = video_level(_frames(), ["prob_x", "prob_y"], ["sample_id"], method="vote")
    np.testing.assert_allclose(videos.loc[0, ["prob_x", "prob_y"]].to_numpy(dtype=float),
                               [1 / 3 + 1e-6 * 1.4 / 3, 2 / 3 + 1e-6 * 1.6 / 3])
    tie = pd.DataFrame({"sample_id": ["c", "c"], "prob_x": [0.9, 0.4], "prob_y": [0.1, 0.6]})
    voted = video_level(tie, ["prob_x", "prob_y"], ["sample_id"], method="vote")
    assert voted.loc[0, "prob_x"] > voted.loc[0, "prob_y"]  # one vote each; x has the higher mean
    assert vote_scores([[0.2, 0.8]]).tolist() == [[0.2e-6, 1 + 0.8e-6]]
    with pytest.raises(ValueError, match="'mean' or 'vote'"):
        video_level(tie, ["prob_x", "prob_y"], ["sample_id"], method="median")


# ----------------------------------------------------------------------------- compiled-call cache


def test_compiled_calls_are_built_once_per_model_and_freed_with_it():
    class Model:  # any weak-referenceable object stands for a Keras model
        pass

    built = []
    model = Model()
    first = cached_for_model(model, ("test", 1), lambda: built.append(1) or object())
    assert cached_for_model(model, ("test", 1), lambda: built.append(1) or object()) is first
    cached_for_model(model, ("test", 2), lambda: built.append(2) or object())
    assert built == [1, 2]
    from covnb import compiled

    before = len(compiled._PER_MODEL)
    del model
    gc.collect()
    assert len(compiled._PER_MODEL) == before - 1


# ----------------------------------------------------------------------------- registry


def test_registry_tables_are_derived_from_the_specs():
    assert registry.LAST_BLOCK_INPUT["vgg16"] == "block5_conv2"
    assert registry.LAST_BLOCK_INPUT["efficientnet_lite0"] == "block6d_add"
    assert set(registry.LAST_BLOCK_INPUT) == set(registry.BACKBONES)
    assert registry.MIDLEVEL_TAPS["efficientnet_lite0"] == ("block4a_expand_activation", "block5a_expand_activation",
                                                            "block6a_expand_activation")
    assert set(registry.MULTISCALE_TAPS) == set(registry.MIDLEVEL_TAPS) == {
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet", "mobilenet_v2", "vgg16",
        "resnet50"}
    for name, spec in registry.BACKBONES.items():
        assert spec.name == name and spec.cam_layer == spec.last_conv_layer
        assert spec.preprocessing in registry.PREPROCESS_MODES
        assert spec.taps("multiscale") == registry.MULTISCALE_TAPS.get(name, ())
        assert spec.preprocess_layer == registry.preprocess_layer_name(name) == f"{name}_preprocess"
    assert {n for n, s in registry.BACKBONES.items() if s.fetchable} == {
        "resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


def test_registry_specs_are_frozen_and_unknown_names_are_clear():
    with pytest.raises(AttributeError):
        registry.BACKBONES["vgg16"].last_block_input = "x"
    with pytest.raises(ValueError, match="Unknown backbone 'vgg19'; choose one of"):
        registry.backbone_spec("vgg19")
    with pytest.raises(ValueError, match="pools no taps"):
        registry.BACKBONES["vgg16"].taps("gap")


def test_models_and_backbones_read_the_registry():
    from covnb import backbones, models

    assert models.LAST_BLOCK_INPUT is registry.LAST_BLOCK_INPUT
    assert models.POOLED_TAP_HEADS["midlevel"] is registry.MIDLEVEL_TAPS
    assert backbones.BACKBONES is registry.BACKBONES
    assert models.head_feature_layer() == registry.HEAD_FEATURES == "head_features"
    from covnb import cam

    assert cam.last_conv_layer_name is backbones.last_conv_layer_name  # one function, one layer list
