import json
import subprocess
import sys

import pandas as pd
import pytest

from badfiles import add_bad_files
from covnb.cli import main


def test_data_summary_json_on_the_pocus_share(pocus_root, capsys):
    assert main(["data", "summary", str(pocus_root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 128 and summary["groups"] == 87
    assert summary["by_label"] == {"covid": 26, "pneumonia": 41, "regular": 56, "viral": 5}


def test_data_summary_text_on_cxr(cxr_root, capsys):
    assert main(["data", "summary", str(cxr_root)]) == 0
    out = capsys.readouterr().out
    assert "278 samples in 127 patient groups" in out and "licence" in out


def test_summary_lists_skipped_files(pocus_subset, capsys):
    add_bad_files(pocus_subset / "pocus_videos" / "convex", pocus_subset / "pocus_videos/convex/pneu-radiopaeda.mp4")
    assert main(["data", "summary", str(pocus_subset)]) == 0
    out = capsys.readouterr().out
    assert "skipped             7 file(s)" in out and "zero-byte file" in out


@pytest.mark.parametrize("which", ["pocus", "cxr"])
def test_split_writes_patient_folds(which, pocus_root, cxr_root, tmp_path, capsys):
    root = pocus_root if which == "pocus" else cxr_root
    out = tmp_path / "folds.csv"
    assert main(["split", str(root), "--folds", "5", "--seed", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert sorted(table["fold"].unique()) == [0, 1, 2, 3, 4]
    per_fold = table.groupby(["fold", "label"]).size().unstack()
    assert (per_fold.min() >= per_fold.max() - 2).all()  # stratified
    assert "audit passed" in capsys.readouterr().out


def test_misuse_gives_clear_errors_and_exit_code_2(tmp_path, capsys):
    assert main(["data", "summary", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["split", str(tmp_path), "--folds", "1", "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["split", str(tmp_path), "--folds", "three", "--out", "x.csv"]) == 2  # argparse's own check
    assert "invalid int value" in capsys.readouterr().err
    assert main(["report", "--profile", "nope"]) == 2
    assert main(["report", "--data", str(tmp_path / "missing")]) == 2


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "covnb.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("covnb ")


def test_a_closed_pipe_ends_quietly():
    # `covnb data summary phantom --json | head -c 10`: the reader goes away before covnb has written
    process = subprocess.Popen([sys.executable, "-m", "covnb.cli", "data", "summary", "phantom", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert process.returncode == 1
