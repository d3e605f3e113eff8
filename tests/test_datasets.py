import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from badfiles import add_bad_files, write_video
from covnb.datasets import (DataError, data_fingerprint, detect_layout, load_dataset, pocus_label_from_filename,
                            probe_media, select_task)


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("name,label", [
    ("Cov-Atlas+(44).gif", "covid"), ("Cov_denault.mov", "covid"), ("pneu-radiopaeda.mp4", "pneumonia"),
    ("Pneu_Avi.JPG", "pneumonia"), ("REG.avi", "regular"), ("Vir_x.mp4", "viral"), ("Regular.mp4", None),
    ("Covid_x.mp4", None), ("other.mp4", None),
])
def test_label_from_filename_prefix_any_case_and_separator(name, label):
    assert pocus_label_from_filename(name) == label


def test_full_pocus_share_census(pocus_root):
    before = snapshot(pocus_root)
    dataset = load_dataset(pocus_root)
    summary = dataset.summary()
    assert summary["samples"] == 128 and summary["groups"] == 87
    assert summary["by_label"] == {"covid": 26, "pneumonia": 41, "regular": 56, "viral": 5}
    assert summary["by_kind"] == {"image": 22, "video": 106}
    assert summary["skipped"] == []
    videos = dataset.samples[dataset.samples["kind"] == "video"]
    assert videos["fps"].gt(0).all() and videos["frame_count"].gt(0).all()
    assert set(dataset.samples["probe"]) == {"convex", "linear"}
    assert dataset.samples["licence"].ne("unknown").all()
    assert snapshot(pocus_root) == before  # nothing written into the data folder


def test_cxr_census_and_task(cxr_root):
    dataset = load_dataset(cxr_root)
    assert dataset.layout == "csv"
    assert len(dataset.samples) == 278 and dataset.samples["group"].nunique() == 127
    task = select_task(dataset.samples, "covid_vs_other")
    assert set(task["label"]) == {"covid", "other"}
    assert (task["label"] == "covid").sum() == 198
    xray = select_task(dataset.samples, "covid_vs_other", modality="X-ray")
    assert len(xray) == 241


def test_pocovid_task_drops_or_merges_viral(pocus_root):
    samples = load_dataset(pocus_root).samples
    dropped = select_task(samples, "pocovid3", viral="drop")
    merged = select_task(samples, "pocovid3", viral="merge")
    assert set(dropped["label"]) == {"covid", "pneumonia", "regular"} and len(dropped) == 123
    assert len(merged) == 128 and (merged["label"] == "pneumonia").sum() == 46
    with pytest.raises(ValueError, match="unknown task"):
        select_task(samples, "nonsense")


def test_bad_files_are_skipped_with_reasons(pocus_subset):
    good = pocus_subset / "pocus_videos/convex/pneu-radiopaeda.mp4"
    bad = add_bad_files(pocus_subset / "pocus_videos" / "convex", good)
    dataset = load_dataset(pocus_subset)
    reasons = dict(zip(dataset.skipped["path"].map(lambda p: Path(p).name), dataset.skipped["reason"]))
    assert set(reasons) == {p.name for p in bad.values()}
    assert "zero-byte" in reasons["Cov_zero_byte.mp4"]
    assert "unknown label" in reasons["Xyz_unknown_label.mp4"]
    assert "image" in reasons["Pneu_text.jpg"] and "image" in reasons["Reg_unreadable.png"]
    for name in ("Cov_truncated.mp4", "Pneu_corrupt.avi", "Reg_zero_frames.mp4"):
        assert "video" in reasons[name]
    assert len(dataset.samples) == 9
    assert {s["path"] for s in dataset.summary()["skipped"]} == set(dataset.skipped["path"])


def test_file_missing_from_metadata_gets_its_own_group(pocus_subset):
    write_video(pocus_subset / "pocus_videos" / "convex" / "Cov_not_in_metadata.mp4")
    dataset = load_dataset(pocus_subset)
    row = dataset.samples.set_index("filename").loc["Cov_not_in_metadata.mp4"]
    assert row["label"] == "covid" and not row["in_metadata"]
    assert row["group"] == "unlisted:Cov_not_in_metadata"
    assert any("Cov_not_in_metadata" in note for note in dataset.notes)


def test_metadata_label_mismatch_is_reported(pocus_subset):
    source = pocus_subset / "pocus_images/convex/Reg_Avi_Image001.jpg"
    # Same metadata row name, but the file name now claims another class.
    shutil.move(source, source.with_name("Cov_Avi_Image001.jpg"))
    meta = pd.read_csv(pocus_subset / "dataset_metadata.csv", dtype=str, keep_default_na=False)
    meta.loc[meta["Filename"] == "Reg_Avi_Image001", "Filename"] = "Cov_Avi_Image001"
    meta.to_csv(pocus_subset / "dataset_metadata.csv", index=False)
    dataset = load_dataset(pocus_subset)
    assert any("Cov_Avi_Image001" in n and "metadata says" in n for n in dataset.notes)


def test_folder_per_class_layout(tmp_path):
    for label in ("covid", "normal"):
        (tmp_path / label).mkdir()
        for i in range(3):
            write_video(tmp_path / label / f"p{i}__clip{i}.avi", n_frames=5, seed=i)
    (tmp_path / "covid" / "broken.png").write_bytes(b"nope")
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "folders" == detect_layout(tmp_path)
    assert sorted(dataset.samples["label"].unique()) == ["covid", "normal"]
    assert dataset.samples["group"].nunique() == 3  # p0, p1, p2 shared across classes by name
    assert len(dataset.skipped) == 1


def test_missing_and_empty_folders_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(tmp_path)


def test_probe_media_reports_video_properties(tmp_path):
    info = probe_media(write_video(tmp_path / "v.avi", n_frames=7, fps=5))
    assert info["kind"] == "video" and info["fps"] == pytest.approx(5) and info["frame_count"] == 7


def test_fingerprint_changes_with_labels(pocus_subset):
    samples = load_dataset(pocus_subset).samples
    changed = samples.assign(label=np.where(samples.index == 0, "other", samples["label"]))
    assert data_fingerprint(samples) == data_fingerprint(samples.copy())
    assert data_fingerprint(samples) != data_fingerprint(changed)
