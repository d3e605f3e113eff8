"""covnb.datasets.load_pocus and load_csv_indexed on small folders made here (no ../shared needed)."""

import cv2
import numpy as np
import pandas as pd
import pytest

from covnb.datasets import DataError, load_csv_indexed, load_dataset, load_pocus


def write_video(path, n_frames=6, size=(40, 32), fps=5.0, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for _ in range(n_frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def write_image(path, size=(30, 24), seed=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return path


@pytest.fixture
def pocus_folder(tmp_path):
    root = tmp_path / "pocus"
    write_video(root / "pocus_videos" / "convex" / "Cov_one.avi", seed=1)
    write_video(root / "pocus_videos" / "convex" / "cov-two.avi", seed=2)  # same patient as Cov_one
    write_video(root / "pocus_videos" / "linear" / "Pneu_three.avi", seed=3)
    write_image(root / "pocus_images" / "convex" / "Reg_four.png", seed=4)
    write_image(root / "pocus_images" / "convex" / "Reg_unlisted.png", seed=5)  # not in the metadata
    write_image(root / "pocus_images" / "convex" / "Lung_five.png", seed=6)  # no label prefix
    (root / "pocus_videos" / "convex" / "Cov_empty.avi").write_bytes(b"")  # zero bytes
    pd.DataFrame([
        {"Filename": "Cov_one", "Label": "COVID-19", "Source ID": "12", "Patient ID / Name": "A", "License": "CC BY"},
        {"Filename": "cov-two", "Label": "COVID-19", "Source ID": "12", "Patient ID / Name": "A", "License": "CC BY"},
        {"Filename": "Pneu_three", "Label": "Regular", "Source ID": "7", "Patient ID / Name": "B", "License": ""},
        {"Filename": "Reg_four", "Label": "Regular", "Source ID": "7", "Patient ID / Name": "", "License": "MIT"},
    ]).to_csv(root / "dataset_metadata.csv", index=False)
    return root


def test_load_pocus_reads_labels_groups_probes_and_skips(pocus_folder):
    dataset = load_pocus(pocus_folder)
    samples = dataset.samples.set_index("filename")
    assert sorted(samples.index) == ["Cov_one.avi", "Pneu_three.avi", "Reg_four.png", "Reg_unlisted.png",
                                     "cov-two.avi"]
    assert samples["label"].to_dict() == {"Cov_one.avi": "covid", "cov-two.avi": "covid", "Pneu_three.avi": "pneumonia",
                                          "Reg_four.png": "regular", "Reg_unlisted.png": "regular"}
    # one patient (source 12, patient A) for both covid videos; an empty patient name falls back to the file
    assert samples.loc["Cov_one.avi", "group"] == samples.loc["cov-two.avi", "group"] == "12:A"
    assert samples.loc["Reg_four.png", "group"] == "7:Reg_four"
    assert samples.loc["Reg_unlisted.png", "group"] == "unlisted:Reg_unlisted"
    assert samples["probe"].to_dict()["Pneu_three.avi"] == "linear"
    assert samples["kind"].to_dict() == {"Cov_one.avi": "video", "cov-two.avi": "video", "Pneu_three.avi": "video",
                                         "Reg_four.png": "image", "Reg_unlisted.png": "image"}
    assert samples.loc["Cov_one.avi", "source"] == "12" and samples.loc["Cov_one.avi", "licence"] == "CC BY"
    assert samples.loc["Reg_unlisted.png", "source"] == "unknown"
    assert samples.loc["Cov_one.avi", "sample_id"] == "pocus_videos/convex/Cov_one.avi"
    reasons = dict(zip(dataset.skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]), dataset.skipped["reason"]))
    assert set(reasons) == {"Lung_five.png", "Cov_empty.avi"}
    assert "unknown label" in reasons["Lung_five.png"]
    # the file name wins over a contradicting metadata label, and the note says so
    assert any("Pneu_three.avi: file name says pneumonia, metadata says Regular" in note for note in dataset.notes)
    assert any("Reg_unlisted.png: not in dataset_metadata.csv" in note for note in dataset.notes)


def test_load_pocus_without_metadata_and_without_files(tmp_path, pocus_folder):
    (pocus_folder / "dataset_metadata.csv").unlink()
    dataset = load_pocus(pocus_folder)
    assert dataset.samples["group"].nunique() == len(dataset.samples) == 5  # every file its own group
    assert any("no dataset_metadata.csv" in note for note in dataset.notes)
    with pytest.raises(DataError, match="no files under pocus_videos/ or pocus_images/"):
        load_pocus(tmp_path / "empty")


@pytest.fixture
def csv_folder(tmp_path):
    root = tmp_path / "cxr"
    for name, seed in (("a.png", 1), ("b.png", 2), ("c.png", 3), ("d.png", 4), ("e.png", 5), ("stray.png", 6)):
        write_image(root / "images" / name, seed=seed)
    pd.DataFrame([
        {"patientid": "p1", "filename": "a.png", "finding": "COVID-19", "modality": "X-ray", "view": "PA",
         "license": "CC BY", "url": "https://example.org/case/1"},
        {"patientid": "p1", "filename": "b.png", "finding": "COVID-19", "modality": "X-ray", "view": "AP",
         "license": "CC BY", "url": ""},
        {"patientid": "p2", "filename": "c.png", "finding": "Other", "modality": "CT", "view": "", "license": "",
         "url": ""},
        {"patientid": "", "filename": "d.png", "finding": "normal", "modality": "X-ray", "view": "PA", "license": "",
         "url": ""},
        {"patientid": "p3", "filename": "c.png", "finding": "Other", "modality": "CT", "view": "", "license": "",
         "url": ""},  # c.png listed twice with the same label: counted once
        {"patientid": "p4", "filename": "e.png", "finding": "alien", "modality": "X-ray", "view": "", "license": "",
         "url": ""},
        {"patientid": "p5", "filename": "missing.png", "finding": "covid", "modality": "X-ray", "view": "",
         "license": "", "url": ""},
    ]).to_csv(root / "metadata.csv", index=False)
    return root


def test_load_csv_indexed_reads_labels_patients_and_skips(csv_folder, capsys):
    dataset = load_csv_indexed(csv_folder)
    samples = dataset.samples.set_index("filename")
    assert samples["label"].to_dict() == {"a.png": "covid", "b.png": "covid", "c.png": "other", "d.png": "normal"}
    assert samples["group"].to_dict() == {"a.png": "p1", "b.png": "p1", "c.png": "p2", "d.png": "file:d.png"}
    assert samples["modality"].to_dict() == {"a.png": "X-ray", "b.png": "X-ray", "c.png": "CT", "d.png": "X-ray"}
    assert samples.loc["a.png", "source"] == "example.org" and samples.loc["b.png", "source"] == "unknown"
    assert samples.loc["a.png", "probe"] == "PA" and samples.loc["a.png", "licence"] == "CC BY"
    reasons = dict(zip(dataset.skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]), dataset.skipped["reason"]))
    assert reasons["e.png"] == "unknown label 'alien'"
    assert "not listed in the index CSV" in reasons["stray.png"]
    assert "missing.png" in reasons
    assert "c.png: listed 2 times in metadata.csv; counted once" in dataset.notes
    assert dataset.grouping.endswith("1 image(s) with an empty id are their own groups")
    assert "1 row(s) of metadata.csv have an empty patientid" in capsys.readouterr().err


def test_load_csv_indexed_without_a_patient_column_warns_and_groups_per_file(csv_folder, capsys):
    table = pd.read_csv(csv_folder / "metadata.csv", dtype=str, keep_default_na=False).drop(columns="patientid")
    table.to_csv(csv_folder / "metadata.csv", index=False)
    dataset = load_csv_indexed(csv_folder)
    assert (dataset.samples["group"] == "file:" + dataset.samples["filename"]).all()
    assert dataset.grouping.startswith("NO PATIENT COLUMN") and "NO PATIENT COLUMN" in capsys.readouterr().err
    assert load_dataset(csv_folder).layout == "csv"


def test_load_csv_indexed_without_an_index_is_a_clear_error(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "notes.csv").write_text("name,comment\na.png,hello\n")
    with pytest.raises(DataError, match="no index CSV with 'filename' and 'label' columns"):
        load_csv_indexed(tmp_path)
    with pytest.raises(DataError, match="lacks the column"):
        load_csv_indexed(tmp_path, tmp_path / "notes.csv")
