"""covnb.cam_export.export_cam and ``covnb cam``: overlays, MP4s, the index, bad files, exit codes."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

import keras

from covnb import cam
from covnb.cam_export import CamOptionError, export_cam
from covnb.cli import main
from covnb.models import save_model

CLASSES = ["covid", "pneumonia", "regular"]
SIZE = 32
MAX_FRAMES = 4


def tiny_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_features")(x)
    logits = keras.layers.Dense(len(CLASSES), name="logits")(x)
    return keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits), name="tiny")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    settings = {"image_size": SIZE, "rate_hz": 3.0, "max_frames": MAX_FRAMES, "crop": None, "clahe": False}
    return save_model(tiny_model(), folder / "model.keras", {"classes": CLASSES, "image_size": SIZE,
                                                             "frame_settings": settings})


def write_video(path, n_frames=12, fps=6.0, size=(48, 40), seed=0):
    """A synthetic video whose bright spot moves: frames differ, so their probabilities differ."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for t in range(n_frames):
        frame = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
        cv2.circle(frame, (5 + 3 * t, 20), 6, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def write_image(path, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def synthetic_inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    video = write_video(folder / "clip.avi")
    image = write_image(folder / "still.png")
    corrupt = folder / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 3)
    return folder, video, image, corrupt


def decoded_frames(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def snapshot(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_export_writes_overlays_mp4_and_index(model_file, synthetic_inputs, tmp_path):
    folder, video, image, corrupt = synthetic_inputs
    before = snapshot(folder)
    out = tmp_path / "out" / "nested"
    index = export_cam(model_file, [folder], out, top_k=2)
    assert snapshot(folder) == before  # nothing written next to the inputs
    assert (out / "cam_index.csv").is_file()
    assert set(index.columns) >= {"source", "status", "output", "output_kind", "frame_index", "class", "class_prob"}
    written = pd.read_csv(out / "cam_index.csv")
    assert written["source"].tolist() == index["source"].tolist()
    assert written["status"].tolist() == index["status"].tolist()

    errors = index[index["status"] == "error"]
    assert errors["source"].tolist() == [str(corrupt)]
    assert "decodable" in errors["error"].iloc[0] or "readable" in errors["error"].iloc[0]

    ok = index[index["status"] == "ok"]
    assert (ok.loc[ok["source"] == str(image), "output_kind"]).tolist() == ["overlay_png"]
    video_rows = ok[ok["source"] == str(video)]
    assert sorted(video_rows["output_kind"]) == ["overlay_png", "overlay_png", "video_mp4"]
    for name in ok["output"]:  # every output decodes: PNGs are frame | overlay, the overlay half carries heat
        if name.endswith(".png"):
            picture = cv2.imread(str(out / name))
            assert picture is not None and picture.shape[1] == 2 * 256 + 4
            assert not np.array_equal(picture[28:, :256], picture[28:, 260:])
        else:
            assert decoded_frames(out / name) > 0

    # The PNGs are the top-k frames by probability of the explained class, best first.
    pngs = video_rows[video_rows["output_kind"] == "overlay_png"]
    assert pngs["class_prob"].is_monotonic_decreasing
    model = keras.saving.load_model(model_file)
    from covnb.frames import FrameSettings, read_frames

    frames, info = read_frames(video, FrameSettings(image_size=SIZE, rate_hz=3.0, max_frames=MAX_FRAMES))
    probs = cam.predict_probs(model, frames)
    target = CLASSES.index(video_rows["class"].iloc[0])
    assert target == int(probs.mean(axis=0).argmax())  # default: the file's predicted class
    expected = [info["frame_index"][i] for i in np.argsort(-probs[:, target], kind="stable")[:2]]
    assert pngs["frame_index"].astype(int).tolist() == expected
    np.testing.assert_allclose(pngs["class_prob"], np.sort(probs[:, target])[::-1][:2], rtol=1e-5)

    # The MP4 holds every sampled frame and decodes; PNGs are frame | overlay side by side.
    mp4 = out / video_rows.loc[video_rows["output_kind"] == "video_mp4", "output"].iloc[0]
    assert decoded_frames(mp4) == len(frames)
    picture = cv2.imread(str(out / pngs["output"].iloc[0]))
    assert picture.shape[1] == 2 * 256 + 4 and picture.shape[0] > 256


def test_class_method_and_layer_options(model_file, synthetic_inputs, tmp_path):
    _, video, image, _ = synthetic_inputs
    index = export_cam(model_file, [image, video], tmp_path / "a", method="gradcam++", layer="conv1",
                       class_name="regular", threshold=0.5, top_k=1, mp4=False)
    assert set(index["class"]) == {"regular"} and set(index["method"]) == {"gradcam++"}
    assert set(index["layer"]) == {"conv1"} and set(index["output_kind"]) == {"overlay_png"}
    assert all("gradcam++_regular" in name for name in index["output"])
    # A threshold of 1 leaves no heat: the overlay half equals the frame half.
    plain = export_cam(model_file, [image], tmp_path / "b", threshold=1.0, top_k=1)
    picture = cv2.imread(str(tmp_path / "b" / plain["output"].iloc[0]))[28:]
    np.testing.assert_array_equal(picture[:, :256], picture[:, 260:])


def test_bad_options_raise_clear_errors(model_file, synthetic_inputs, tmp_path):
    folder, _, image, _ = synthetic_inputs
    with pytest.raises(CamOptionError, match="unknown class 'lung'.*covid, pneumonia, regular"):
        export_cam(model_file, [image], tmp_path / "o", class_name="lung")
    with pytest.raises(CamOptionError, match="not found.*conv1, conv2"):
        export_cam(model_file, [image], tmp_path / "o", layer="conv9")
    with pytest.raises(CamOptionError, match="unknown CAM method"):
        export_cam(model_file, [image], tmp_path / "o", method="saliency")
    with pytest.raises(CamOptionError, match="inside the input folder"):
        export_cam(model_file, [folder], folder / "cams")
    with pytest.raises(CamOptionError, match="folder of the input"):
        export_cam(model_file, [image], folder)
    assert not (tmp_path / "o").exists() and not (folder / "cams").exists()


def test_same_file_names_in_two_folders_do_not_overwrite(model_file, tmp_path):
    first = write_image((tmp_path / "a").mkdir() or tmp_path / "a" / "x.png", seed=1)
    second = write_image((tmp_path / "b").mkdir() or tmp_path / "b" / "x.png", seed=2)
    index = export_cam(model_file, [first, second], tmp_path / "out")
    assert index["output"].nunique() == 2


def test_real_pocus_files(model_file, pocus_subset, tmp_path):
    videos = pocus_subset / "pocus_videos" / "convex"
    picks = [videos / "Cov-Atlas+(44).gif", videos / "Reg_pat1Image_133327.mpeg",
             pocus_subset / "pocus_images" / "convex" / "Pneu_Avi_consolidated-lung.JPG"]
    truncated = videos / "Cov_truncated.mp4"
    truncated.write_bytes((videos / "pneu-radiopaeda.mp4").read_bytes()[:2000])
    index = export_cam(model_file, picks + [truncated], tmp_path / "out", top_k=2)
    assert index.loc[index["status"] == "error", "source"].tolist() == [str(truncated)]
    ok = index[index["status"] == "ok"]
    assert set(ok["source"]) == {str(p) for p in picks}
    for video in picks[:2]:
        rows = ok[ok["source"] == str(video)]
        assert sorted(rows["output_kind"]) == ["overlay_png", "overlay_png", "video_mp4"]
        mp4 = tmp_path / "out" / rows.loc[rows["output_kind"] == "video_mp4", "output"].iloc[0]
        assert decoded_frames(mp4) == int(rows["n_frames"].iloc[0]) == MAX_FRAMES
    # Real ultrasound: the sector mask is found, the heat fraction is a real fraction.
    assert ok["heat_inside"].between(0, 1).all()


def test_cli_cam(model_file, synthetic_inputs, tmp_path, capsys):
    folder, video, image, corrupt = synthetic_inputs
    out = tmp_path / "cli"
    assert main(["cam", str(model_file), str(video), str(image), str(corrupt), "--out", str(out),
                 "--method", "cam", "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    assert "broken.mp4" in captured.err and "wrote" in captured.out
    index = pd.read_csv(out / "cam_index.csv")
    assert set(index.loc[index["status"] == "ok", "method"]) == {"cam"}

    def run(*extra):
        code = main(["cam", *extra])
        return code, capsys.readouterr().err

    code, err = run(str(tmp_path / "missing.keras"), str(image), "--out", str(out))
    assert code == 2 and "missing.keras: no such file" in err
    code, err = run(str(model_file), str(tmp_path / "nothing.mp4"), "--out", str(out))
    assert code == 2 and "nothing.mp4: no such file" in err
    code, err = run(str(model_file), str(image), "--out", str(out), "--class", "lung")
    assert code == 2 and "unknown class 'lung'" in err
    code, err = run(str(model_file), str(image), "--out", str(out), "--layer", "conv9")
    assert code == 2 and "conv9" in err and "conv1, conv2" in err
    code, err = run(str(model_file), str(image), "--out", str(folder))
    assert code == 2 and "input" in err
    code, err = run(str(model_file), str(corrupt), "--out", str(tmp_path / "none"))
    assert code == 1 and "no explanation written" in err
    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(b"not a zip")
    shutil.copy(model_file.with_suffix(".json"), damaged.with_suffix(".json"))
    code, err = run(str(damaged), str(image), "--out", str(tmp_path / "d"))
    assert code == 2 and "damaged.keras: cannot load Keras model" in err  # bad input: exit 2, a message
    assert main(["cam", str(model_file), str(image)]) == 2  # --out missing: argparse usage error


def test_method_agreement_known_answers():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 7, 7)).astype(np.float32)
    same = cam.CamResult(maps, np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3, int), "l", "gradcam")
    scaled = cam.CamResult(maps * 0.5, np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3, int), "l", "cam")
    flipped = cam.CamResult(maps[:, ::-1, ::-1].copy(), np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3, int), "l",
                            "gradcam++")
    table = cam.method_agreement({"gradcam": same, "cam": scaled, "gradcam++": flipped}, (56, 56), box=5)
    assert len(table) == 9 and set(zip(table.method_a, table.method_b)) == {
        ("gradcam", "cam"), ("gradcam", "gradcam++"), ("cam", "gradcam++")}
    identical = table[(table.method_a == "gradcam") & (table.method_b == "cam")]
    np.testing.assert_allclose(identical["correlation"], 1.0, atol=1e-5)
    np.testing.assert_allclose(identical["peak_distance"], 0.0)
    np.testing.assert_allclose(identical["top_iou"], 1.0)
    rotated = table[(table.method_a == "gradcam") & (table.method_b == "gradcam++")]
    assert (rotated["correlation"] < 0.9).all() and (rotated["top_iou"] < 1).all()
    # A peak in one corner vs the opposite corner: distance close to the whole diagonal.
    corner = np.zeros((1, 8, 8), np.float32)
    corner[0, 0, 0] = 1
    other = corner[:, ::-1, ::-1].copy()
    far = cam.method_agreement({"a": cam.CamResult(corner, *[np.zeros((1, 2))] * 2, np.zeros(1, int), "l", "gradcam"),
                                "b": cam.CamResult(other, *[np.zeros((1, 2))] * 2, np.zeros(1, int), "l", "gradcam")},
                               64, box=1)
    assert far["peak_distance"].iloc[0] > 0.8
    with pytest.raises(ValueError, match="at least two"):
        cam.method_agreement({"a": same}, 56)


def test_cam_peaks_accepts_a_precomputed_result(model_file):
    model = keras.saving.load_model(model_file)
    frames = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    result = cam.explain(model, frames, method="gradcam++")
    direct = cam.cam_peaks(model, frames, method="gradcam++", box=3)
    reused = cam.cam_peaks(None, frames, result=result, box=3)
    pd.testing.assert_frame_equal(direct, reused)
    with pytest.raises(ValueError, match="3 heatmaps but there are 4"):
        cam.cam_peaks(None, frames, result=cam.explain(model, frames[:3]))
