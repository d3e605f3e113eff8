"""covnb.predict: files and folders -> per-frame and per-video probabilities; bad files reported."""

import json

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from covnb.frames import FrameSettings, read_frames  # noqa: E402
from covnb.models import build_model, save_model  # noqa: E402
from covnb.predict import expand_paths, frame_settings_from_metadata, predict_paths  # noqa: E402

SIZE = 32
CLASSES = ["covid", "pneumonia", "regular"]
SETTINGS = FrameSettings(rate_hz=3.0, max_frames=4, image_size=SIZE)


def write_video(path, n_frames=30, fps=15.0, seed=0):
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (48, 40))
    assert writer.isOpened()
    for _ in range(n_frames):
        writer.write(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    clips = folder / "clips"
    clips.mkdir()
    write_video(clips / "a.avi", seed=1)
    write_video(clips / "b.avi", n_frames=9, fps=9.0, seed=2)
    cv2.imwrite(str(clips / "still.png"), np.full((30, 50, 3), 120, np.uint8))
    (clips / "notes.txt").write_text("not media")
    (folder / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (folder / "empty.avi").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = build_model("mobilenet", 3, "gap", SIZE, weights=None, augmentation="default", alpha=0.25, seed=0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    metadata = {"classes": CLASSES, "image_size": SIZE,
                "frame_settings": {"rate_hz": 3.0, "max_frames": 4, "image_size": SIZE, "crop": None, "clahe": False}}
    return save_model(model, path, metadata), model


def test_frame_settings_come_from_the_sidecar():
    settings = frame_settings_from_metadata({"frame_settings": {"rate_hz": 2.0, "max_frames": 7, "image_size": 64,
                                                                "crop": [0.1, 0.9, 0.0, 1.0], "unknown": 1}})
    assert (settings.rate_hz, settings.max_frames, settings.image_size, settings.crop) == (2.0, 7, 64, (0.1, 0.9, 0.0, 1.0))
    assert frame_settings_from_metadata({"image_size": 96}).image_size == 96


def test_expand_paths_walks_folders_and_reports_missing(media, tmp_path):
    files, errors = expand_paths([media / "clips", tmp_path / "nope.mp4", tmp_path])
    assert [p.name for p in files] == ["a.avi", "b.avi", "still.png"]
    reasons = {e["path"]: e["reason"] for e in errors}
    assert reasons[str(tmp_path / "nope.mp4")] == "no such file or folder"
    assert "no video or image" in reasons[str(tmp_path)]


def test_predict_matches_a_bare_model_call_and_reports_bad_files(media, saved_model):
    path, model = saved_model
    result = predict_paths(path, [media / "clips", media / "corrupt.mp4", media / "empty.avi"], batch_size=5)
    # Bad files are reported, not fatal.
    assert sorted(result.errors["path"].map(lambda p: p.rsplit("/", 1)[-1])) == ["corrupt.mp4", "empty.avi"]
    assert result.errors["reason"].str.len().gt(0).all()
    # a.avi: 30 frames at 15 fps sampled at 3 Hz, capped at 4; b.avi: 9 frames at 9 fps -> 3; image -> 1.
    counts = dict(zip(result.videos["path"].map(lambda p: p.rsplit("/", 1)[-1]), result.videos["n_frames"]))
    assert counts == {"a.avi": 4, "b.avi": 3, "still.png": 1}
    assert len(result.frames) == 8
    assert set(result.videos["kind"]) == {"video", "image"}
    columns = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_allclose(result.frames[columns].sum(axis=1), 1.0, rtol=1e-5)
    # Same probabilities as the model called directly on the same frames (batches cross files).
    expected = np.concatenate([np.asarray(model(read_frames(media / "clips" / name, SETTINGS)[0].astype("float32"),
                                                training=False))
                               for name in ("a.avi", "b.avi", "still.png")])
    np.testing.assert_allclose(result.frames[columns].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    # Video level: the mean of its frames, and the arg-max label.
    first = result.frames[result.frames["path"].str.endswith("a.avi")]
    row = result.videos[result.videos["path"].str.endswith("a.avi")].iloc[0]
    np.testing.assert_allclose(row[columns].to_numpy(dtype=float), first[columns].mean().to_numpy(), rtol=1e-6)
    assert row["pred"] == CLASSES[int(np.argmax(row[columns].to_numpy(dtype=float)))]
    assert row["pred_vote"] in CLASSES and 0 < row["vote_fraction"] <= 1


def test_outputs_as_csv_and_json(media, saved_model, tmp_path):
    path, model = saved_model
    result = predict_paths(path, [media / "clips" / "b.avi", media / "corrupt.mp4"])
    videos_csv, frames_csv = result.to_csv(tmp_path / "out" / "predictions.csv")
    assert videos_csv.read_text().startswith("path,kind,n_frames,prob_covid")
    assert frames_csv.name == "predictions_frames.csv" and len(frames_csv.read_text().splitlines()) == 4
    payload = json.loads(result.to_json(tmp_path / "out" / "predictions.json"))
    assert payload["classes"] == CLASSES and len(payload["videos"]) == 1 and len(payload["errors"]) == 1


def test_only_bad_files_gives_empty_tables(media, saved_model):
    path, model = saved_model
    result = predict_paths((model, {"classes": CLASSES, "image_size": SIZE}), [media / "corrupt.mp4"])
    assert result.frames.empty and result.videos.empty and len(result.errors) == 1


def test_read_ahead_keeps_file_order_and_reports_expected_errors():
    from covnb.predict import _read_ahead

    def read(path):
        if path == "bad":
            raise ValueError("bad: not a video")
        if path == "bug":
            raise KeyError(path)
        return path.upper()

    out = list(_read_ahead(["a", "bad", "c", "d", "e"], read, (ValueError,), depth=2))
    assert [(path, result) for path, result, _ in out] == [("a", "A"), ("bad", None), ("c", "C"), ("d", "D"),
                                                          ("e", "E")]
    assert isinstance(out[1][2], ValueError) and all(error is None for path, _, error in out if path != "bad")
    with pytest.raises(KeyError):  # an unexpected error is a bug: it propagates
        list(_read_ahead(["a", "bug"], read, (ValueError,)))
