"""The notebooks end to end through the report runner (papermill), as CI and users run them."""

import json

import pytest

from badfiles import add_bad_files
from covnb.cli import main
from covnb.report import verify_run

pytestmark = pytest.mark.slow


def _single_run(out):
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir, json.loads((run_dir / "manifest.json").read_text())


def test_smoke_report_on_real_data_with_corrupt_files(pocus_subset, tmp_path):
    good = pocus_subset / "pocus_videos/convex/pneu-radiopaeda.mp4"
    bad = add_bad_files(pocus_subset / "pocus_videos" / "convex", good)
    out = tmp_path / "runs"
    assert main(["report", "--profile", "smoke", "--data", str(pocus_subset), "--out", str(out), "--no-progress"]) == 0
    run_dir, manifest = _single_run(out)
    assert manifest["status"] == "ok"
    assert {s["path"] for s in manifest["data"]["skipped"]} == {str(p) for p in bad.values()}
    for record in manifest["notebooks"]:
        assert record["status"] == "ok"
        assert (run_dir / record["executed"]).is_file() and (run_dir / record["html"]).is_file()
        assert (run_dir / record["metrics"]).is_file()
    exploration = json.loads((run_dir / "01_data_exploration" / "metrics.json").read_text())
    assert exploration["skipped"] == len(bad)
    assert "Cov_zero_byte.mp4" in (run_dir / "index.html").read_text()
    assert "Cov_zero_byte.mp4" in (run_dir / "01_data_exploration.html").read_text()


def test_smoke_report_on_the_embedded_phantom_with_a_relative_out_from_another_directory(tmp_path, monkeypatch):
    # as users run it: a relative --out (here with a space) while papermill runs each kernel in its own folder
    elsewhere = tmp_path / "some project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", "--profile", "smoke", "--out", "my runs", "--no-progress"]) == 0
    out = elsewhere / "my runs"
    run_dir, manifest = _single_run(out)
    assert manifest["status"] == "ok" and manifest["data"]["synthetic"] is True
    assert verify_run(run_dir) == []
    assert (run_dir / "02_transfer_learning" / "model.keras").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["my runs"]
    assert "SYNTHETIC" in (run_dir / "index.html").read_text()
