"""Tests for covnb.phantom: the synthetic lung-ultrasound phantom and its POCUS-like data set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from covnb import phantom
from covnb.phantom import (
    SYNTHETIC_NOTICE,
    make_clip,
    phantom_dataset,
    sample_patient_style,
    write_phantom_dataset,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REQUIRED_COLUMNS = [
    "Current location", "Filename", "Label", "License", "Type", "Probe", "Source ID",
    "Patient ID / Name", "Framerate", "Resolution", "Length (frames)", "B-lines", "A-lines",
    "Consolidations", "Pleural line irregularities", "Air bronchogram",
]
SIZE = 128


# ----------------------------------------------------------------- measurements on clips


def _sector_top_and_pleura(clip: np.ndarray) -> tuple[int, int]:
    """Top row of the sector and the pleural-line row, on the central column strip."""
    size = clip.shape[1]
    centre = size // 2
    profile = clip[:, :, centre - 8 : centre + 8].astype(float).mean(axis=(0, 2))
    top = int(np.argmax(profile > 0))
    lo, hi = int(0.1 * size), int(0.4 * size)
    return top, lo + int(np.argmax(profile[lo:hi]))


def _lung_window(clip):
    size = clip.shape[1]
    centre = size // 2
    _, pleura = _sector_top_and_pleura(clip)
    half = int(0.12 * size)
    return clip[:, pleura + 6 : int(0.92 * size), centre - half : centre + half].astype(float)


def horizontal_structure(clip) -> float:
    """Spread of row means below the pleura (A-lines make it large)."""
    rows = _lung_window(clip).mean(axis=(0, 2))
    return float(rows.std() / rows.mean())


def vertical_structure(clip) -> float:
    """Spread of column means below the pleura (B-lines make it large)."""
    cols = _lung_window(clip).mean(axis=(0, 1))
    return float(cols.std() / cols.mean())


def subpleural_darkness(clip) -> float:
    """Median just below the pleura over median of the deep lung (consolidation: small)."""
    size = clip.shape[1]
    centre = size // 2
    _, pleura = _sector_top_and_pleura(clip)
    half = int(0.06 * size)
    x = clip.astype(float)
    below = x[:, pleura + 5 : pleura + 5 + int(0.08 * size), centre - half : centre + half]
    deep = x[:, int(0.75 * size) : int(0.9 * size), centre - half : centre + half]
    return float(np.median(below) / np.median(deep))


#: Scanner settings that leave the drawing as it is: the class patterns are measured under them.
NEUTRAL_SCANNER = {"gain": 1.0, "tgc": [1.0] * 4, "dynamic_range": 1.5, "speckle_grain": 1.0, "noise_floor": 0.0}


def _neutral_clip(label, seed, n_frames=6):
    rng = np.random.default_rng(seed)
    style = {**sample_patient_style(label, rng), **NEUTRAL_SCANNER}
    return make_clip(label, rng, n_frames=n_frames, size=SIZE, patient_style=style)


@pytest.fixture(scope="module")
def clips_by_class():
    return {label: [_neutral_clip(label, seed) for seed in range(8)] for label in ("regular", "covid", "pneumonia")}


# ----------------------------------------------------------------- make_clip


def test_make_clip_shape_dtype_and_black_background():
    clip = make_clip("covid", np.random.default_rng(0), n_frames=12, size=SIZE)
    assert clip.shape == (12, SIZE, SIZE) and clip.dtype == np.uint8
    # convex sector: top corners outside the fan are black, the centre is imaged
    assert clip[:, :10, :10].max() == 0 and clip[:, :10, -10:].max() == 0
    assert clip[:, -5:, :3].max() == 0  # below the bottom arc at the border
    assert clip[:, SIZE // 2, SIZE // 2].mean() > 5
    # the sector is narrower at the top than at the bottom (curvilinear probe)
    imaged = clip.max(axis=0) > 0
    assert imaged[int(0.1 * SIZE)].sum() < 0.7 * imaged[int(0.85 * SIZE)].sum()


def test_make_clip_is_seeded():
    a = make_clip("pneumonia", np.random.default_rng(5), n_frames=4, size=SIZE)
    b = make_clip("pneumonia", np.random.default_rng(5), n_frames=4, size=SIZE)
    c = make_clip("pneumonia", np.random.default_rng(6), n_frames=4, size=SIZE)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 3


def test_frames_move_but_stay_alike():
    clip = make_clip("regular", np.random.default_rng(1), n_frames=10, size=SIZE).astype(float)
    step = np.abs(np.diff(clip, axis=0)).mean()
    assert step > 1.0  # speckle shimmer and lung sliding
    other = make_clip("regular", np.random.default_rng(2), n_frames=1, size=SIZE)[0].astype(float)
    assert np.abs(clip[0] - clip[1]).mean() < np.abs(clip[0] - other).mean()


def test_pleura_slides_laterally():
    """Lung sliding: the pleural-line texture shifts sideways over a breathing cycle."""
    style = sample_patient_style("covid", np.random.default_rng(3))
    style["slide_amplitude"] = 0.05
    clip = make_clip("covid", np.random.default_rng(3), n_frames=16, size=SIZE, patient_style=style)
    # B-lines move with the pleura: the column profile deep in the lung shifts between frames
    deep = clip[:, int(0.7 * SIZE) : int(0.8 * SIZE), :].astype(float).mean(axis=1)
    peaks = [int(np.argmax(row)) for row in deep]
    assert max(peaks) - min(peaks) >= 3


def test_labels_and_bad_input():
    rng = np.random.default_rng(0)
    assert make_clip("COVID-19", rng, n_frames=1, size=64).shape == (1, 64, 64)
    assert make_clip("Bacterial pneumonia", rng, n_frames=1, size=64).shape == (1, 64, 64)
    with pytest.raises(ValueError, match="Unknown phantom label 'viral'"):
        make_clip("viral", rng)
    with pytest.raises(ValueError, match="n_frames"):
        make_clip("regular", rng, n_frames=0)
    with pytest.raises(ValueError, match="patient_style was drawn for 'covid'"):
        make_clip("regular", rng, patient_style=sample_patient_style("covid", rng))


def test_regular_has_a_lines_at_multiples_of_pleura_depth(clips_by_class):
    for clip in clips_by_class["regular"]:
        top, pleura = _sector_top_and_pleura(clip)
        size = clip.shape[1]
        centre = size // 2
        profile = clip[:, :, centre - 8 : centre + 8].astype(float).mean(axis=(0, 2))
        depth = pleura - top
        expected = top + 2 * depth
        start = pleura + depth // 2
        first_a_line = start + int(np.argmax(profile[start : start + depth]))
        assert abs(first_a_line - expected) <= 3, (first_a_line, expected)
        assert profile[first_a_line] > 1.5 * np.median(profile[pleura + 3 :])


def test_class_patterns_are_measurable(clips_by_class):
    horiz = {k: [horizontal_structure(c) for c in v] for k, v in clips_by_class.items()}
    vert = {k: [vertical_structure(c) for c in v] for k, v in clips_by_class.items()}
    dark = {k: [subpleural_darkness(c) for c in v] for k, v in clips_by_class.items()}
    # A-lines: horizontal periodic structure below the pleura
    assert np.mean(horiz["regular"]) > 2 * np.mean(horiz["covid"])
    # B-lines: bright columns below the pleura, in every COVID clip
    assert min(vert["covid"]) > 4 * max(vert["regular"])
    assert np.mean(vert["covid"]) > 2 * np.mean(vert["pneumonia"])
    # consolidation: a darker region just below the pleura
    assert sorted(dark["pneumonia"])[-2] < min(dark["regular"])  # all but at most one clip
    assert np.mean(dark["pneumonia"]) < 0.8 * np.mean(dark["regular"])
    assert np.mean(dark["pneumonia"]) < 0.8 * np.mean(dark["covid"])


def test_videos_of_one_patient_look_alike():
    """Same patient style: the pleura sits at the same depth; other patients differ more."""
    rows_same, rows_other = [], []
    for patient in range(6):
        style = sample_patient_style("regular", np.random.default_rng([9, patient]))
        rows = [
            _sector_top_and_pleura(
                make_clip("regular", np.random.default_rng([9, patient, v]), n_frames=2, size=SIZE,
                          patient_style=style)
            )[1]
            for v in range(2)
        ]
        rows_same.append(abs(rows[0] - rows[1]))
        rows_other.append(rows[0])
    assert max(rows_same) <= 2
    assert max(rows_other) - min(rows_other) >= 4


# ----------------------------------------------------------------- written data set


def _read_metadata(root: Path) -> list[dict]:
    with open(root / "dataset_metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    capture.release()
    return frames


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "pocus_phantom"
    root = write_phantom_dataset(out, n_patients_per_class=2, videos_per_patient=2, images_per_class=2,
                                 n_frames=8, fps=10, size=SIZE, seed=3, label_noise=0.0, borderline_fraction=0.0)
    return root


def test_layout_and_names(written):
    assert written.name == "pocus_phantom"
    videos = sorted(p.name for p in (written / "pocus_videos" / "convex").iterdir())
    images = sorted(p.name for p in (written / "pocus_images" / "convex").iterdir())
    assert len(videos) == 3 * 2 * 2 and len(images) == 3 * 2
    assert "Cov_phantom_p01_v1.mp4" in videos and "Pneu_phantom_p02_v2.mp4" in videos
    assert "Reg_phantom_p01_img1.png" in images and "Reg_phantom_p02_img2.png" in images
    # nothing else next to the data set (no temporary folders)
    assert [p.name for p in written.parent.iterdir()] == ["pocus_phantom"]


def test_metadata(written):
    rows = _read_metadata(written)
    assert set(REQUIRED_COLUMNS) <= set(rows[0])
    assert len(rows) == 12 + 6
    on_disk = {p.stem: p for p in written.glob("pocus_*/convex/*")}
    assert {r["Filename"] for r in rows} == set(on_disk)
    labels = {"Cov": "COVID-19", "Pneu": "Bacterial pneumonia", "Reg": "regular"}
    for row in rows:
        prefix = row["Filename"].split("_")[0]
        assert row["Label"] == labels[prefix]
        assert row["License"] == "CC0 1.0 (synthetic phantom generated by covnb)"
        assert row["Probe"] == "convex" and row["Source ID"] in phantom.PHANTOM_SOURCES
        assert row["Filename"].startswith(row["Patient ID / Name"] + "_")
        assert row["Resolution"] == f"{SIZE}x{SIZE}"
        kind = "video" if row["Type"] == "video" else "image"
        assert row["Current location"] == f"pocus_{kind}s/convex"
        assert on_disk[row["Filename"]].parent == written / f"pocus_{kind}s" / "convex"
        assert row["Length (frames)"] == ("8" if kind == "video" else "1")
        if kind == "video":
            assert float(row["Framerate"]) == 10
        flags = {k: row[k] for k in ("B-lines", "A-lines", "Consolidations", "Pleural line irregularities",
                                      "Air bronchogram")}
        assert set(flags.values()) <= {"0", "1"}
        if prefix == "Cov":
            assert flags["B-lines"] == "1" and flags["Pleural line irregularities"] == "1"
            assert flags["Consolidations"] == "0"
        elif prefix == "Reg":
            assert flags["A-lines"] == "1" and flags["B-lines"] == "0" and flags["Consolidations"] == "0"
        else:
            assert flags["Consolidations"] == "1" and flags["Air bronchogram"] == "1" and flags["B-lines"] == "0"
    # two videos of each patient, patients distinct across classes
    patients = {r["Patient ID / Name"] for r in rows}
    assert len(patients) == 6


@pytest.mark.skipif(not (SHARED / "data" / "pocus" / "dataset_metadata.csv").exists(),
                    reason="shared POCUS data not available")
def test_metadata_columns_and_labels_match_real_file(written):
    with open(SHARED / "data" / "pocus" / "dataset_metadata.csv", newline="", encoding="utf-8") as handle:
        real = list(csv.DictReader(handle))
    assert set(REQUIRED_COLUMNS) <= set(real[0])
    assert set(_read_metadata(written)[0]) <= set(real[0])  # no invented column names
    assert {r["Label"] for r in _read_metadata(written)} <= {r["Label"] for r in real}


def test_readme_says_synthetic(written):
    text = (written / "README.md").read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert "SYNTHETIC" in first and "NOT REAL PATIENTS" in first and "CLINICAL" in first
    assert SYNTHETIC_NOTICE in text
    assert "synthetic" in SYNTHETIC_NOTICE.lower() and "clinical" in SYNTHETIC_NOTICE.lower()


def test_videos_decode_and_show_their_class(written):
    rows = [r for r in _read_metadata(written) if r["Type"] == "video"]
    vertical = {"Cov": [], "Reg": [], "Pneu": []}
    for row in rows:
        path = written / "pocus_videos" / "convex" / f"{row['Filename']}.mp4"
        frames = _decoded_frames(path)
        assert len(frames) == int(row["Length (frames)"]) == 8
        assert frames[0].shape == (SIZE, SIZE)
        vertical[row["Filename"].split("_")[0]].append(vertical_structure(np.stack(frames)))
    assert min(vertical["Cov"]) > 2 * max(vertical["Reg"])  # on the site's screen, sector smaller
    image = cv2.imread(str(written / "pocus_images" / "convex" / "Cov_phantom_p01_img1.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8 and image.max() > 100  # on a colour screen


def test_same_seed_same_dataset(tmp_path):
    kwargs = dict(n_patients_per_class=1, videos_per_patient=1, images_per_class=1, n_frames=3, size=64,
                  classes=("regular",))
    a = write_phantom_dataset(tmp_path / "a", seed=1, **kwargs)
    b = write_phantom_dataset(tmp_path / "b", seed=1, **kwargs)
    c = write_phantom_dataset(tmp_path / "c", seed=2, **kwargs)
    img = "pocus_images/convex/Reg_phantom_p01_img1.png"
    np.testing.assert_array_equal(cv2.imread(str(a / img)), cv2.imread(str(b / img)))
    assert not np.array_equal(cv2.imread(str(a / img)), cv2.imread(str(c / img)))
    assert [r["Filename"] for r in _read_metadata(a)] == ["Reg_phantom_p01_v1", "Reg_phantom_p01_img1"]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    real_write = phantom._write_video
    calls = []

    def failing_write(stem, frames, fps):
        calls.append(stem)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real_write(stem, frames, fps)

    monkeypatch.setattr(phantom, "_write_video", failing_write)
    with pytest.raises(OSError, match="simulated"):
        write_phantom_dataset(tmp_path / "set", n_patients_per_class=2, videos_per_patient=2, n_frames=3, size=64)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_clobbered(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_phantom_dataset(out, n_patients_per_class=1, videos_per_patient=1, n_frames=2, size=64)
    assert (out / "mine.txt").read_text() == "keep"
    write_phantom_dataset(out, n_patients_per_class=1, videos_per_patient=1, n_frames=2, size=64, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "dataset_metadata.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_falls_back_to_mjpg_avi_when_mp4_does_not_decode(tmp_path, monkeypatch):
    real_count = phantom._count_decoded_frames
    monkeypatch.setattr(phantom, "_count_decoded_frames",
                        lambda path: -1 if path.suffix == ".mp4" else real_count(path))
    root = write_phantom_dataset(tmp_path / "set", n_patients_per_class=1, videos_per_patient=1,
                                 images_per_class=0, n_frames=4, size=64, classes=("covid",))
    videos = list((root / "pocus_videos" / "convex").iterdir())
    assert [v.name for v in videos] == ["Cov_phantom_p01_v1.avi"]
    assert len(_decoded_frames(videos[0])) == 4
    assert _read_metadata(root)[0]["Filename"] == "Cov_phantom_p01_v1"


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="n_patients_per_class"):
        write_phantom_dataset(tmp_path / "x", n_patients_per_class=0)
    with pytest.raises(ValueError, match="Unknown phantom label"):
        write_phantom_dataset(tmp_path / "x", classes=("covid", "viral"))
    assert list(tmp_path.iterdir()) == []


def test_phantom_dataset_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path))
    small = dict(n_patients_per_class=1, videos_per_patient=1, images_per_class=1, n_frames=3, size=64)
    first = phantom_dataset(seed=4, **small)
    assert first.parent == tmp_path / "phantom"
    assert (first / "dataset_metadata.csv").exists() and (first / "README.md").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a cached data set")

    monkeypatch.setattr(phantom, "write_phantom_dataset", must_not_run)
    assert phantom_dataset(seed=4, **small) == first
    # the key depends on values, not on how they were spelled
    assert phantom_dataset(seed=4, fps=10.0, classes=("covid", "pneumonia", "regular"), **small) == first
    with pytest.raises(AssertionError, match="regenerated"):
        phantom_dataset(seed=5, **small)
    with pytest.raises(TypeError, match="unexpected keyword"):
        phantom_dataset(seed=4, frames=3)


# ----------------------------------------------------------------- what makes the phantom teach


def test_sources_correlate_with_class_as_designed():
    """One site sends most pneumonia, two most healthy lungs, COVID-19 comes from several small ones."""
    patients = phantom.plan_patients(n_patients_per_class=20, seed=0)
    by_class = {label: [p["source"] for p in patients if p["drawn"] == label] for label in ("covid", "pneumonia", "regular")}
    share = {label: {s: sources.count(s) / len(sources) for s in set(sources)} for label, sources in by_class.items()}
    assert share["pneumonia"]["site-A"] >= 0.75
    assert share["regular"]["site-A"] + share["regular"]["site-B"] >= 0.85
    assert len(share["covid"]) >= 4 and max(share["covid"].values()) <= 0.4
    assert "site-A" not in share["covid"] and "site-B" not in share["covid"]
    # whole patients, as close to the designed shares as rounding allows
    for label, sources in by_class.items():
        weights = {s: c.get(label, 0.0) for s, c in phantom.PHANTOM_SOURCES.items()}
        for source, weight in weights.items():
            assert abs(sources.count(source) - 20 * weight / sum(weights.values())) < 1


def test_borderline_and_label_noise_rates_as_set():
    patients = phantom.plan_patients(n_patients_per_class=10, seed=1, label_noise=0.1, borderline_fraction=0.3)
    assert len(patients) == 30
    noisy = [p for p in patients if p["noisy"]]
    assert len(noisy) == 3 and all(p["label"] != p["drawn"] for p in noisy)
    assert all(p["label"] == p["drawn"] for p in patients if not p["noisy"])
    for label in ("covid", "pneumonia", "regular"):
        assert sum(p["borderline"] for p in patients if p["drawn"] == label) == 3
    names = [p["name"] for p in patients]
    assert len(set(names)) == 30
    assert all(p["name"].startswith(phantom.FILE_PREFIXES[p["label"]] + "_") for p in patients)
    clean = phantom.plan_patients(n_patients_per_class=10, seed=1)
    assert not any(p["noisy"] or p["borderline"] for p in clean)


def test_borderline_findings_are_faint():
    for seed in range(5):
        full = sample_patient_style("covid", np.random.default_rng(seed))
        faint = sample_patient_style("covid", np.random.default_rng(seed), borderline=True)
        assert max(line["strength"] for line in faint["b_lines"]) < min(line["strength"] for line in full["b_lines"])
        assert len(faint["b_lines"]) <= 2 and faint["pleura_irregularity"] < full["pleura_irregularity"]
        small = sample_patient_style("pneumonia", np.random.default_rng(seed), borderline=True)["consolidation"]
        large = sample_patient_style("pneumonia", np.random.default_rng(seed))["consolidation"]
        assert small["half_width"] < 0.5 * large["half_width"] and small["height"] < 0.5 * large["height"]
        assert len(sample_patient_style("regular", np.random.default_rng(seed), borderline=True)["b_lines"]) == 1


def test_per_patient_appearance_differs_more_than_videos_of_a_patient():
    """Scanner settings (gain, time-gain curve, dynamic range, grain) are the patient's."""
    keys = ("gain", "tgc", "dynamic_range", "speckle_grain", "noise_floor")
    styles = [sample_patient_style("regular", np.random.default_rng([4, p])) for p in range(6)]
    for key in keys:
        assert len({json.dumps(style[key]) for style in styles}) == 6, key
    brightness_same, brightness_other = [], []
    for p, style in enumerate(styles):
        means = [make_clip("regular", np.random.default_rng([4, p, v]), n_frames=2, size=64,
                           patient_style=style).astype(float).mean() for v in range(2)]
        brightness_same.append(abs(means[0] - means[1]))
        brightness_other.append(means[0])
    assert max(brightness_same) < 0.5 * (max(brightness_other) - min(brightness_other))


def test_screens_differ_by_source_and_leave_the_fan_alone():
    from covnb.frames import sector_mask

    clip = make_clip("regular", np.random.default_rng(0), n_frames=3, size=SIZE)
    screens = {source: phantom.render_screen(clip, source, np.random.default_rng(1)) for source in phantom.SCREEN_DESIGNS}
    for source, screen in screens.items():
        assert screen.shape == (3, SIZE, SIZE, 3) and screen.dtype == np.uint8
        fan = sector_mask(screen)
        outside = screen.max(axis=(0, 3))[~fan]
        assert (outside > 100).sum() > 20, source  # text, ruler, bar, border or logo outside the fan
        assert fan.sum() > 0.25 * SIZE * SIZE, source
    names = list(screens)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(screens[a].astype(int) - screens[b].astype(int)).mean() > 2, (a, b)


@pytest.fixture(scope="module")
def teaching_set(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("teach") / "set", n_patients_per_class=5,
                                 videos_per_patient=1, images_per_class=1, n_frames=2, size=64, seed=2,
                                 label_noise=0.2, borderline_fraction=0.4)


def test_loaded_phantom_has_meaningful_sources_and_noisy_labels(teaching_set):
    from covnb.datasets import load_dataset

    samples = load_dataset(teaching_set).samples
    assert set(samples["source"]) <= set(phantom.PHANTOM_SOURCES) and samples["source"].nunique() >= 4
    assert samples.groupby("group")["source"].nunique().max() == 1  # one site per patient
    assert all(group.split(":", 1)[0] == source for group, source in zip(samples["group"], samples["source"]))
    rows = _read_metadata(teaching_set)
    comments = {r["Patient ID / Name"]: r["Comments first medical doctor (MD1)"] for r in rows}
    assert sum("label noise" in c for c in comments.values()) == 3  # round(0.2 * 15)
    assert sum("borderline" in c for c in comments.values()) == 6  # round(0.4 * 5) per class
    for row in rows:  # the label always agrees with the file name, whatever was drawn
        assert row["Label"] == {"Cov": "COVID-19", "Pneu": "Bacterial pneumonia", "Reg": "regular"}[row["Filename"].split("_")[0]]


def test_same_seed_same_plan_and_metadata(tmp_path, teaching_set):
    kwargs = dict(n_patients_per_class=5, videos_per_patient=1, images_per_class=1, n_frames=2, size=64,
                  label_noise=0.2, borderline_fraction=0.4)
    again = write_phantom_dataset(tmp_path / "again", seed=2, **kwargs)
    assert _read_metadata(again) == _read_metadata(teaching_set)
    first = sorted(p.name for p in (again / "pocus_videos" / "convex").iterdir())[0]
    np.testing.assert_array_equal(_decoded_frames(again / "pocus_videos" / "convex" / first)[0],
                                  _decoded_frames(teaching_set / "pocus_videos" / "convex" / first)[0])
    other = phantom.plan_patients(n_patients_per_class=5, seed=3, label_noise=0.2, borderline_fraction=0.4)
    assert [p["source"] for p in other] != [p["source"] for p in
                                           phantom.plan_patients(n_patients_per_class=5, seed=2, label_noise=0.2,
                                                                 borderline_fraction=0.4)]


def test_changed_generator_is_a_new_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path))
    small = dict(n_patients_per_class=1, videos_per_patient=1, images_per_class=0, n_frames=2, size=64)
    first = phantom_dataset(**small)
    phantom._generator_fingerprint.cache_clear()
    monkeypatch.setattr(phantom, "_generator_fingerprint", lambda: "edited-drawing-code")
    second = phantom_dataset(**small)
    assert second != first and (second / "dataset_metadata.csv").is_file()
    assert phantom_dataset(label_noise=0.5, **small) != second
