"""covnb.explore on known-answer tables, a small subset of real POCUS / X-ray data and the phantom,
and notebook 01 (clean as committed; end to end through papermill, slow)."""

import ast
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from covnb import explore
from covnb.datasets import load_dataset, select_task
from covnb.frames import FrameSettings, extract_frames
from covnb.splits import audit_split, frame_level_folds, patient_folds

from conftest import CXR, POCUS, POCUS_SUBSET

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_data_exploration.ipynb"
SETTINGS = FrameSettings(rate_hz=3.0, max_frames=8, image_size=64)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _table(rows):
    return pd.DataFrame(rows, columns=["sample_id", "label", "group", "kind", "source"])


# ----------------------------------------------------------------------------- known answers


def test_count_table_counts_by_value_and_label_and_folds_the_tail():
    table = _table([("a", "covid", "p1", "video", "s1"), ("b", "covid", "p1", "video", "s1"),
                    ("c", "regular", "p2", "image", "s2"), ("d", "regular", "p3", "video", "s3"),
                    ("e", "regular", "p4", "video", None)])
    counts = explore.count_table(table, "source")
    assert counts.loc["s1", "covid"] == 2 and counts.loc["s1", "regular"] == 0
    assert counts.loc["unknown", "total"] == 1
    assert counts["total"].sum() == 5 and counts.index[0] == "s1"
    folded = explore.count_table(table, "source", top=2)
    assert len(folded) == 3 and folded.index[-1] == "other (2 values)" and folded["total"].sum() == 5
    with pytest.raises(ValueError, match="no column"):
        explore.count_table(table, "licence")


def test_patients_table_separates_files_from_patients():
    table = _table([("a", "covid", "p1", "video", "s"), ("b", "covid", "p1", "video", "s"),
                    ("c", "covid", "p1", "image", "s"), ("d", "regular", "p2", "video", "s"),
                    ("e", "regular", "p3", "video", "s")])
    result = explore.patients_table(table)
    assert result.loc["covid", "files"] == 3 and result.loc["covid", "patients"] == 1
    assert result.loc["regular", "files_per_patient"] == 1.0
    assert result.loc["covid", "videos"] == 2 and result.loc["covid", "images"] == 1
    assert result["share_of_patients"].to_dict() == pytest.approx({"covid": 1 / 3, "regular": 2 / 3}, abs=1e-3)


def test_skipped_table_shows_paths_relative_to_the_root(tmp_path):
    skipped = pd.DataFrame({"path": [str(tmp_path / "pocus_videos" / "Cov_x.mp4"), "/elsewhere/y.png"],
                            "reason": ["zero-byte file", "not a decodable image"]})
    table = explore.skipped_table(skipped, tmp_path)
    assert table["file"].tolist() == ["pocus_videos/Cov_x.mp4", "/elsewhere/y.png"]
    assert table["reason"].tolist() == ["zero-byte file", "not a decodable image"]


def test_intensity_and_mean_frame_of_constant_frames():
    frames = np.concatenate([np.full((3, 16, 16, 3), 100, np.uint8), np.full((2, 16, 16, 3), 5, np.uint8)])
    index = pd.DataFrame({"sample_id": ["a", "a", "b", "c", "c"], "label": ["x", "x", "x", "y", "y"],
                          "group": ["1", "1", "2", "3", "3"]})
    table = explore.intensity_table(frames, index)
    assert table["mean"].tolist() == pytest.approx([100] * 3 + [5] * 2, abs=0.01)
    assert table["std"].max() == pytest.approx(0, abs=1e-3)
    assert table["black_share"].tolist() == [0, 0, 0, 1, 1]
    fig = explore.plot_mean_frames(frames, index)
    means = [ax.images[0].get_array().mean() for ax in fig.axes[:2]]
    assert means == pytest.approx([100, 5], abs=0.01)
    assert "mean of 2 files" in fig.axes[0].get_title()  # files weigh equally, not frames
    with pytest.raises(ValueError, match="5 frames but 4 index rows"):
        explore.intensity_table(frames, index.iloc[:4])


def test_hash_distances_known_pairs():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frames = np.stack([base, base, other])
    index = pd.DataFrame({"sample_id": ["v1", "v1", "v2"], "group": ["p1", "p1", "p2"], "label": ["a", "a", "a"]})
    table = explore.hash_distances(frames, index, max_pairs=50)
    same = table[table["relation"] == "same file"]
    assert len(same) and (same["distance"] == 0).all()
    assert (table.loc[table["relation"] == "other patient", "distance"] > 60).all()
    assert set(table["relation"]) == {"same file", "other patient"}


def test_audit_summary_and_fold_spread_of_a_frame_level_split():
    index = pd.DataFrame({"group": ["p1"] * 6 + ["p2"] * 6, "sample_id": ["a"] * 6 + ["b"] * 6})
    wrong = frame_level_folds(len(index), n_splits=3, seed=0)
    spread = explore.per_fold_groups(index, wrong)
    assert spread.index.tolist() == [3] and spread["patients"].tolist() == [2]
    report = audit_split(index, wrong, raise_on_leak=False, check_files=False)
    assert explore.audit_summary(report) == {"ok": False, "shared_groups": 2, "identical_files": 0,
                                             "near_duplicate_frames": 0}


def test_label_palette_is_stable_and_complete():
    first = explore.label_palette(["regular", "covid", "covid", "pneumonia"])
    assert list(first) == ["covid", "pneumonia", "regular"]
    assert explore.label_palette(["pneumonia", "regular", "covid"]) == first


def test_save_figure_writes_png(tmp_path):
    fig, _ = plt.subplots()
    path = explore.save_figure(fig, tmp_path / "new", "thing")
    assert path == tmp_path / "new" / "thing.png" and path.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- real data subset


@pytest.fixture(scope="module")
def pocus_frames():
    if not POCUS.exists():
        pytest.skip(f"{POCUS} not available")
    dataset = load_dataset(POCUS)
    samples = dataset.samples[dataset.samples["sample_id"].isin(POCUS_SUBSET)].reset_index(drop=True)
    samples = select_task(samples, "pocovid3")
    frame_set = extract_frames(samples, SETTINGS, cache=False, progress=False)  # no cache writes
    return samples, frame_set


def test_real_subset_tables(pocus_frames):
    samples, frame_set = pocus_frames
    assert set(samples["label"]) == {"covid", "pneumonia", "regular"}
    videos = explore.video_table(samples, frame_set.index)
    assert len(videos) == (samples["kind"] == "video").sum()
    assert (videos["frames_kept"] >= 1).all() and (videos["frames_kept"] <= SETTINGS.max_frames).all()
    assert (videos["frames_kept"] <= videos["frame_count"]).all()
    summary = explore.sampling_summary(samples, frame_set.index)
    assert summary.loc["total", "frames_kept"] == len(frame_set.frames)
    assert summary.loc["total", "files"] == len(samples)
    assert summary.loc["total", "frames_kept"] - summary.loc["total", "frames_kept_from_videos"] == \
        (samples["kind"] == "image").sum()


def test_real_subset_near_duplicates_are_within_files(pocus_frames):
    _, frame_set = pocus_frames
    table = explore.hash_distances(frame_set.frames, frame_set.index, max_pairs=500)
    medians = table.groupby("relation")["distance"].median()
    assert medians["same file"] < medians["other patient"] - 20


def test_real_subset_figures(pocus_frames):
    samples, frame_set = pocus_frames
    frames, index = frame_set.frames, frame_set.index
    grid = explore.sample_grid(frames, index, per_class=3, seed=0)
    assert len(grid.axes) == 9 and sum(len(ax.images) for ax in grid.axes) == 9  # 3 files per class in the subset
    assert [grid.axes[i].get_ylabel() for i in (0, 3, 6)] == ["covid", "pneumonia", "regular"]
    video_fig = explore.plot_video_sampling(samples, index, rate_hz=3.0, max_frames=SETTINGS.max_frames)
    assert len(video_fig.axes) == 3
    assert len(explore.plot_intensity_histograms(frames, index).axes) == 2
    clahe = explore.plot_clahe(frames, index, per_class=1)
    assert len(clahe.axes) == 9
    before, after = clahe.axes[0].images[0].get_array(), clahe.axes[1].images[0].get_array()
    assert before.shape == after.shape and not np.array_equal(before, after)
    assert len(explore.plot_census(samples, ["label", "kind", "probe", "source"]).axes) >= 4
    assert len(explore.plot_imbalance(samples).axes) == 2
    dup = explore.plot_near_duplicates(frames, index, seed=0)
    assert sum(len(ax.images) for ax in dup.axes) == 3


def test_real_subset_wrong_split_leaks_and_patient_split_does_not(pocus_frames):
    samples, frame_set = pocus_frames
    index = frame_set.index
    wrong = audit_split(index, frame_level_folds(len(index), 3, 0), frames=frame_set.frames, raise_on_leak=False)
    summary = explore.audit_summary(wrong)
    assert not summary["ok"] and summary["shared_groups"] > 0 and summary["identical_files"] > 0
    folds = patient_folds(samples, n_splits=3, seed=0)
    frame_folds = index["sample_id"].map(dict(zip(samples["sample_id"], folds))).to_numpy()
    right = explore.audit_summary(audit_split(index, frame_folds, raise_on_leak=False))
    assert right["shared_groups"] == 0 and right["identical_files"] == 0
    assert explore.per_fold_groups(index, frame_folds).index.tolist() == [1]


def test_images_only_data_degrades_gracefully():
    if not CXR.exists():
        pytest.skip(f"{CXR} not available")
    samples = select_task(load_dataset(CXR).samples, "covid_vs_other").head(12)
    fig = explore.plot_video_sampling(samples)
    assert "no videos" in fig.axes[0].texts[0].get_text()
    assert explore.video_table(samples).empty
    frame_set = extract_frames(samples, SETTINGS, cache=False, progress=False)
    assert explore.sampling_summary(samples, frame_set.index).loc["total", "videos"] == 0
    table = explore.hash_distances(frame_set.frames, frame_set.index, max_pairs=100)
    assert "same file" not in set(table["relation"])


# ----------------------------------------------------------------------------- phantom


@pytest.fixture(scope="module")
def phantom_frames(tmp_path_factory):
    pytest.importorskip("covnb.phantom")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COVNB_CACHE_DIR", str(tmp_path_factory.mktemp("phantom-cache")))
        dataset = load_dataset(None)
        frame_set = extract_frames(dataset.samples, SETTINGS, cache=False, progress=False)
    return dataset, frame_set


def test_phantom_tables_and_near_duplicates(phantom_frames):
    dataset, frame_set = phantom_frames
    table = explore.patients_table(dataset.samples)
    assert table.index.tolist() == ["covid", "pneumonia", "regular"]
    assert (table["patients"] < table["files"]).all()  # several videos per synthetic patient
    distances = explore.hash_distances(frame_set.frames, frame_set.index, max_pairs=500)
    medians = distances.groupby("relation")["distance"].median()
    assert medians["same file"] < medians["other patient"]


def test_phantom_patterns_figure():
    pytest.importorskip("covnb.phantom")
    fig = explore.plot_phantom_patterns(size=96)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["regular", "covid", "pneumonia"]
    assert "SYNTHETIC" in fig._suptitle.get_text()


# ----------------------------------------------------------------------------- notebook 01


def test_committed_notebook_is_clean_with_one_literal_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())  # plain JSON: importing nbformat alone costs ~3 s
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb["metadata"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert all("widgets" not in c["metadata"] for c in nb["cells"])
    tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code"
    source = "".join(tagged[0]["source"])
    names = {}
    for statement in ast.parse(source).body:
        assert isinstance(statement, ast.Assign), "parameters cell must hold assignments only"
        names[statement.targets[0].id] = ast.literal_eval(statement.value)
    assert names == {"data_path": None, "dataset_kind": "auto", "task": "auto", "image_size": 224, "rate_hz": 3.0,
                     "max_frames": 30, "seed": 0, "n_folds": 5, "output_dir": None,
                     "gallery_files": 24, "audit_cam": True}


def _run_notebook(tmp_path, **parameters):
    papermill = pytest.importorskip("papermill")
    return papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), parameters=parameters,
                                      kernel_name="python3", progress_bar=False, execution_timeout=600,
                                      cwd=str(tmp_path))


@pytest.mark.slow
def test_notebook_runs_on_a_real_subset(pocus_subset, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    out = tmp_path / "results"
    _run_notebook(tmp_path, data_path=str(pocus_subset), image_size=64, max_frames=5, n_folds=3, output_dir=str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthetic"] is False and metrics["layout"] == "pocus" and metrics["task"] == "pocovid3"
    assert metrics["samples"] == len(POCUS_SUBSET) and metrics["skipped"] == 0
    assert set(metrics["by_label"]) == {"covid", "pneumonia", "regular"}
    assert sum(metrics["frames_by_label"].values()) == metrics["frames"]
    assert metrics["images"] + metrics["videos"] == metrics["samples"]
    assert metrics["images"] <= metrics["frames"] <= metrics["images"] + 5 * metrics["videos"]
    assert metrics["audit_frame_level_split"]["ok"] is False
    assert metrics["audit_frame_level_split"]["shared_groups"] > 0
    assert metrics["audit_patient_split"]["shared_groups"] == 0
    assert metrics["audit_patient_split"]["identical_files"] == 0
    assert sum(metrics["fold_sizes"].values()) == metrics["samples"] and len(metrics["fold_sizes"]) == 3
    for name in metrics["figures"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert {"census.png", "sample_frames.png", "near_duplicates.png"} <= set(metrics["figures"])


@pytest.mark.slow
def test_notebook_rejects_bad_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError, match="n_folds must be an integer >= 2"):
        _run_notebook(tmp_path, n_folds=1, output_dir=str(tmp_path / "results"))
    assert not (tmp_path / "results" / "metrics.json").exists()
