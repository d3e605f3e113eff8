"""Untrusted model sidecars and command lines (issue 11 cases 4, 5, 9, 10 and "no traceback"):
each sidecar problem is refused with a message naming model.json and the field, a model without
its sidecar is refused unless settings are given, predict never writes into a data folder, and
bad input to the commands gives exit code 2 and a message, never a traceback."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from covnb.cli import main  # noqa: E402
from covnb.models import ModelFileError, build_model, load_model, save_model, validate_sidecar  # noqa: E402

SIZE = 32
CLASSES = ["covid", "pneumonia", "regular"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = build_model("mobilenet", 3, "gap", SIZE, weights=None, alpha=0.25, seed=0)
    folder = tmp_path_factory.mktemp("model")
    save_model(model, folder / "model.keras", {"classes": CLASSES, "image_size": SIZE, "frame_settings": {
        "rate_hz": 3.0, "max_frames": 4, "image_size": SIZE, "crop": None, "clahe": False, "mask_sector": True}})
    return folder


@pytest.fixture
def model_copy(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    return folder / "model.keras"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(2):
        cv2.imwrite(str(folder / f"x{i}.png"), np.random.default_rng(i).integers(0, 255, (40, 40, 3), np.uint8))
    return folder


def _write_sidecar(model_path: Path, change) -> Path:
    side = model_path.with_suffix(".json")
    meta = json.loads(side.read_text())
    change(meta)
    side.write_text(json.dumps(meta) if not isinstance(change, str) else change)
    return side


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(image_size=-5), "field 'image_size' must be a whole number in 8..4096, got -5"),
    (lambda m: m["frame_settings"].update(rate_hz=0), "'frame_settings' 'rate_hz' must be a finite number > 0"),
    (lambda m: m["frame_settings"].update(rate_hz=math.nan), "'rate_hz' must be a finite number > 0"),
    (lambda m: m["frame_settings"].update(max_frames=10**12), "'max_frames' must be a whole number in 1..10000"),
    (lambda m: m["frame_settings"].update(mask_sector="false"), "'mask_sector' must be true or false"),
    (lambda m: m.update(classes=["a", "b", "c", "d", "e"]), "5 class names (a, b, c, d, e) but the model has 3 outputs"),
    (lambda m: m.update(classes=["a", "a", "b"]), "field 'classes' holds a name twice"),
    (lambda m: m.pop("classes"), "the sidecar has no 'classes' field"),
    (lambda m: m["frame_settings"].update(image_size=64), "frame_settings.image_size is 64 but the model takes 32 px"),
])
def test_bad_sidecar_is_refused_naming_model_json(model_copy, change, message):
    _write_sidecar(model_copy, change)
    with pytest.raises(ModelFileError) as caught:
        load_model(model_copy)
    assert str(model_copy.with_suffix(".json")) in str(caught.value) and message in str(caught.value)


def test_sidecar_that_is_a_list_is_refused(model_copy):
    model_copy.with_suffix(".json").write_text("[1, 2, 3]")
    with pytest.raises(ModelFileError, match=r"model.json: the sidecar must be a JSON object, got a list"):
        load_model(model_copy)


def test_model_without_sidecar_is_refused_unless_settings_are_given(model_copy):
    model_copy.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match=r"model.json: not found\. The model .*model.keras needs its sidecar"):
        load_model(model_copy)
    model, metadata = load_model(model_copy, metadata={"classes": ["a", "b", "c"]})
    assert metadata["classes"] == ["a", "b", "c"] and metadata["image_size"] == SIZE
    with pytest.raises(ModelFileError, match="the settings given: 2 class names"):
        load_model(model_copy, metadata={"classes": ["a", "b"]})


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**13, 10**13) | st.floats(allow_nan=True)
                     | st.text(max_size=5), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
_FIELDS = st.sampled_from(["classes", "image_size", "rate_hz", "max_frames", "mask_sector", "frame_settings", "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sidecar=st.dictionaries(_FIELDS, _JSON | st.dictionaries(st.sampled_from(
    ["rate_hz", "max_frames", "image_size", "crop", "clahe", "clahe_clip", "mask_sector"]), _JSON)) | _JSON)
def test_any_sidecar_is_accepted_only_when_usable(sidecar):
    """Any JSON: a ModelFileError naming model.json, or settings from which frames can be taken."""
    try:
        checked = validate_sidecar(sidecar, "somewhere/model.json", n_outputs=3, input_size=SIZE)
    except ModelFileError as error:
        assert str(error).startswith("somewhere/model.json: ")
        return
    from covnb.predict import frame_settings_from_metadata

    frame_settings = frame_settings_from_metadata(checked)
    assert len(checked["classes"]) == 3 and 1 <= frame_settings.max_frames <= 10_000
    assert 0 < frame_settings.rate_hz <= 1000 and math.isfinite(frame_settings.rate_hz)
    assert frame_settings.image_size == SIZE or ("image_size" not in checked and "frame_settings" not in checked)


# ----------------------------------------------------------------------------- command line


def test_predict_refuses_an_output_inside_the_data_folder(model_dir, images, capsys):
    before = sorted(p.name for p in images.iterdir())
    code = main(["predict", str(model_dir / "model.keras"), str(images), "--out", str(images / "sub" / "p.csv")])
    assert code == 2
    assert f"is inside the input folder {images.resolve()}" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == before


def test_predict_without_sidecar_exits_2_then_runs_with_classes(model_copy, images, tmp_path, capsys):
    model_copy.with_suffix(".json").unlink()
    assert main(["predict", str(model_copy), str(images)]) == 2
    err = capsys.readouterr().err
    assert "model.json: not found" in err and "--classes" in err and "Traceback" not in err
    out = tmp_path / "out" / "p.csv"
    assert main(["predict", str(model_copy), str(images), "--classes", "a,b,c", "--out", str(out)]) == 0
    assert (out.parent / "p_skipped.csv").is_file() and len(open(out).readlines()) == 3


def test_predict_lists_skipped_files_in_its_outputs(model_dir, images, tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"nope")
    out = tmp_path / "out" / "p.csv"
    assert main(["predict", str(model_dir / "model.keras"), str(images), str(broken), "--out", str(out)]) == 0
    skipped = (out.parent / "p_skipped.csv").read_text()
    assert "broken.png" in skipped and "not a decodable image" in skipped


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "covnb.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.slow
def test_commands_give_exit_2_and_no_traceback_for_bad_input(tmp_path, model_dir):
    one_class = tmp_path / "one"
    (one_class / "covid").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(one_class / "covid" / f"p{i}__x.png"), np.full((20, 20, 3), 40 * i, np.uint8))
    broken_csv = tmp_path / "csvish"
    (broken_csv / "images").mkdir(parents=True)
    (broken_csv / "index.csv").write_text("filename,patientid\na.png,p1\n")
    bad_model = tmp_path / "bad"
    shutil.copytree(model_dir, bad_model)
    (bad_model / "model.json").write_text(json.dumps({"classes": ["a"] * 5}))
    cases = [
        (["split", "one", "--out", "s.csv"], "only one class (covid: 3 file(s))"),
        (["train", "--data", "one", "--out", "t", "--weights", "none"], "only one class (covid: 3 file(s))"),
        (["data", "summary", "csvish"], "looks like the csv layout"),
        (["report", "--data", "csvish", "--out", "runs"], "looks like the csv layout"),
        (["predict", str(bad_model), "one"], "model.json: field 'classes' holds a name twice"),
        (["cam", str(bad_model), "one", "--out", "c"], "model.json: field 'classes' holds a name twice"),
    ]
    for args, message in cases:
        result = _run(args, tmp_path)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".t.partial-*"))
