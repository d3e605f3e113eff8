"""The notebooks end to end through the report runner (papermill), as CI and users run them."""

import json

import pytest

from badfiles import add_bad_files
from covnb.cli import main
from imagecheck import assert_real_image
from covnb.report import verify_run

pytestmark = pytest.mark.slow


def _single_run(out):
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir, json.loads((run_dir / "manifest.json").read_text())


def _metrics(run_dir, name):
    return json.loads((run_dir / name / "metrics.json").read_text())


def _check_smoke_outputs(run_dir, manifest, classes):
    """What every smoke run must show, whatever the data: the numbers the notebooks promise and real figures."""
    assert [record["status"] for record in manifest["notebooks"]] == ["ok"] * 5
    for record in manifest["notebooks"]:
        metrics = json.loads((run_dir / record["metrics"]).read_text())
        for figure in metrics.get("figures", []):
            assert_real_image(run_dir / record["output_dir"] / figure)
    # 01: counts add up; the frame-level split leaks every patient, the patient-level split leaks none
    exploration = _metrics(run_dir, "01_data_exploration")
    assert exploration["settings"] == {"image_size": 64, "rate_hz": 3.0, "max_frames": 5, "seed": 0, "n_folds": 3}
    assert sum(exploration["by_label"].values()) == exploration["samples"] == sum(exploration["fold_sizes"].values())
    assert sum(exploration["frames_by_label"].values()) == exploration["frames"]
    assert len(exploration["fold_sizes"]) == 3 and sorted(exploration["by_label"]) == classes
    assert exploration["audit_patient_split"] == {"ok": True, "shared_groups": 0, "identical_files": 0,
                                                  "near_duplicate_frames": 0}
    assert exploration["audit_frame_level_split"]["ok"] is False
    assert exploration["audit_frame_level_split"]["shared_groups"] > 0
    # 02: three recipes on the same folds; the leaky split flatters, the honest one passes the audit
    transfer = _metrics(run_dir, "02_transfer_learning")
    assert transfer["data"]["classes"] == classes and transfer["recipe"] == "covnb default"
    assert [row["recipe"] for row in transfer["recipes"]] == ["linear probe", "linear probe, middle layers",
                                                              "covnb default"]
    assert transfer["honest"]["video_mean"]["n_folds"] == 3
    headline = transfer["headline"]
    assert headline["video_balanced_accuracy"] == next(
        row["video balanced accuracy"] for row in transfer["recipes"] if row["recipe"] == "covnb default")
    assert 0 <= headline["video_balanced_accuracy"] <= 1 and 0 <= headline["video_macro_auc"] <= 1
    assert transfer["split_audit"]["patient_level_ok"] is True and transfer["leaky_split"]["audit_ok"] is False
    # patients with frames in several folds (a patient with one still image cannot be split)
    assert 0 < transfer["leaky_split"]["audit_shared_patients"] <= transfer["data"]["patients"]
    oof = (run_dir / "02_transfer_learning" / "oof_predictions.csv").read_text().splitlines()
    assert len(oof) - 1 == transfer["data"]["frames"]  # one out-of-fold prediction per frame
    sidecar = json.loads((run_dir / "02_transfer_learning" / "model.json").read_text())
    assert sidecar["classes"] == classes and sidecar["training"]["recipe"] == "default"  # written by run_training
    # 03: the profile's shots and episodes; every accuracy a probability
    few_shot = _metrics(run_dir, "03_few_shot")
    assert few_shot["parameters"]["shots"] == [1, 2, 3] and few_shot["n_episodes"] == 100
    curve = few_shot["shot_curve_all_patients"]
    assert curve and {row["k_shot"] for row in curve} <= {1, 2, 3}
    assert all(0 <= row["mean"] <= 1 and row["n_episodes"] == 100 for row in curve)
    assert len(few_shot["findings"]) >= 3
    assert {"shot_curves.png", "patient_learning_curve.png", "leak_vs_honest.png"} <= set(few_shot["figures"])
    # 04: explains the model notebook 02 saved, two gallery frames per class
    cams = _metrics(run_dir, "04_cam_explorer")
    assert cams["model"]["quick_demo"] is False and cams["model"]["classes"] == classes
    assert cams["model"]["source"] == str(run_dir / "02_transfer_learning" / "model.keras")
    assert all(len(files) <= 2 for files in cams["gallery"].values()) and sorted(cams["gallery"]) == classes
    assert all(value is None or 0 <= value <= 1 for value in cams["heat_inside_overall_median"].values())
    # 05: calibration and the shift check of its own run
    trust = _metrics(run_dir, "05_trust")
    assert trust["notebook_05"]["unfamiliar_files"] == 3
    assert {"calibration", "uncertainty"} <= set(trust)


def test_smoke_report_on_real_data_with_corrupt_files(pocus_subset, tmp_path):
    good = pocus_subset / "pocus_videos/convex/pneu-radiopaeda.mp4"
    bad = add_bad_files(pocus_subset / "pocus_videos" / "convex", good)
    out = tmp_path / "runs"
    assert main(["report", "--profile", "smoke", "--data", str(pocus_subset), "--out", str(out), "--no-progress"]) == 0
    run_dir, manifest = _single_run(out)
    assert manifest["status"] == "ok"
    assert {s["path"] for s in manifest["data"]["skipped"]} == {str(p) for p in bad.values()}
    for record in manifest["notebooks"]:
        assert (run_dir / record["executed"]).is_file() and (run_dir / record["html"]).is_file()
    _check_smoke_outputs(run_dir, manifest, ["covid", "pneumonia", "regular"])
    exploration = _metrics(run_dir, "01_data_exploration")
    assert exploration["skipped"] == len(bad) and exploration["synthetic"] is False
    assert "Cov_zero_byte.mp4" in (run_dir / "index.html").read_text()
    assert "Cov_zero_byte.mp4" in (run_dir / "01_data_exploration.html").read_text()


def test_smoke_report_on_the_embedded_phantom_with_a_relative_out_from_another_directory(phantom_smoke_report):
    # as users run it: a relative --out (here with a space) while papermill runs each kernel in its own folder;
    # the run is the session's one phantom smoke run (tests/conftest.py), also checked by tests/test_browser.py
    assert phantom_smoke_report["code"] == 0
    elsewhere, out = phantom_smoke_report["folder"], phantom_smoke_report["out"]
    run_dir, manifest = _single_run(out)
    assert manifest["status"] == "ok" and manifest["data"]["synthetic"] is True
    assert verify_run(run_dir) == []
    assert (run_dir / "02_transfer_learning" / "model.keras").is_file()
    _check_smoke_outputs(run_dir, manifest, ["covid", "pneumonia", "regular"])
    # the embedded phantom: 78 files of 36 patients, every one of them split apart by the leaky split
    exploration = _metrics(run_dir, "01_data_exploration")
    assert (exploration["samples"], exploration["groups"], exploration["frames"]) == (78, 36, 222)
    assert exploration["audit_frame_level_split"]["shared_groups"] == 36
    assert _metrics(run_dir, "02_transfer_learning")["leaky_split"]["audit_shared_patients"] == 36
    assert sorted(p.name for p in elsewhere.iterdir()) == ["my runs"]
    # no TensorFlow / CUDA / kernel start-up noise, neither in the terminal (the kernels' too) nor in the HTML
    terminal = phantom_smoke_report["stdout"] + phantom_smoke_report["stderr"]  # captured as capfd does
    pages = [(run_dir / record["html"]).read_text() for record in manifest["notebooks"]]
    for noise in ("cuInit", "oneDNN", "TCP without encryption", "Could not find cuda drivers"):
        assert noise not in terminal, noise
        assert not any(noise in page for page in pages), noise
    assert "SYNTHETIC" in (run_dir / "index.html").read_text()
