"""`covnb train` and `covnb predict` as a user runs them (tiny sizes, synthetic phantom)."""

import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from badfiles import add_bad_files
from covnb import cli

NOISE = ("cuInit", "oneDNN", "TCP without encryption", "cuda drivers", "absl::InitializeLog")
TINY = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32", "--folds", "2",
        "--epochs", "1", "--max-frames", "2"]


@pytest.mark.slow
def test_train_then_predict_on_the_phantom(tmp_path, capsys):
    out = tmp_path / "model"
    # a process of its own, as a user runs it: its whole output is free of TensorFlow's start-up lines
    run = subprocess.run([sys.executable, "-m", "covnb.cli", "train", "phantom", "--out", str(out), *TINY],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for noise in NOISE:
        assert noise not in run.stdout + run.stderr
    for name in ("metrics.json", "oof_predictions.csv", "folds.csv", "model.keras", "model.json",
                 "confusion_videos.png", "roc_videos.png", "model_selection.png"):
        assert (out / name).is_file(), name
    assert not (out / "training_curves.png").exists()  # the default recipe trains no epochs: nothing to draw
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["covid", "pneumonia", "regular"]
    assert metrics["config"]["head"] == "midlevel" and metrics["config"]["mirror_view"] is True
    # The linear-probe baseline is reported beside the recipe, on the same folds.
    baseline = metrics["baseline"]
    assert baseline["recipe"] == "linear_probe" and baseline["config"]["head"] == "gap"
    assert baseline["video_balanced_accuracy_difference"] == pytest.approx(
        metrics["video_mean"]["pooled_mean"]["balanced_accuracy"]
        - baseline["video_mean"]["pooled_mean"]["balanced_accuracy"])
    baseline_oof = pd.read_csv(out / "baseline_oof_predictions.csv")
    printed = run.stdout
    assert "recipe default: video balanced accuracy" in printed and "baseline linear probe:" in printed
    assert all(str(out) in p for p in metrics["paths"].values())
    assert not list(tmp_path.glob(".model.partial-*"))
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["image_size"] == 32 and sidecar["backbone"] == "mobilenet"
    oof = pd.read_csv(out / "oof_predictions.csv")
    folds = pd.read_csv(out / "folds.csv")
    tests = folds[folds["role"] == "test"]
    assert tests.groupby("group")["fold"].nunique().max() == 1  # a patient is tested in one fold only
    assert set(oof["sample_id"]) <= set(tests["sample_id"])
    same_folds = oof.drop_duplicates("sample_id").set_index("sample_id")["fold"]
    assert (baseline_oof.drop_duplicates("sample_id").set_index("sample_id")["fold"].reindex(same_folds.index)
            == same_folds).all()

    from covnb.phantom import phantom_dataset

    videos = phantom_dataset() / "pocus_videos"
    bad = add_bad_files(tmp_path / "bad", next(videos.rglob("*.mp4")))
    capsys.readouterr()
    assert cli.main(["predict", str(out), str(videos), str(bad["corrupt"]), "--format", "json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert len(payload["videos"]) == len(list(videos.rglob("*.mp4")))
    assert [e["path"] for e in payload["errors"]] == [str(bad["corrupt"])]
    assert "skipped" in captured.err
    # `phantom` stands for the embedded data, as everywhere else
    assert cli.main(["predict", str(out), "phantom"]) == 0
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out))
    from covnb.datasets import load_dataset

    assert len(rows) == len(load_dataset("phantom").samples) and set(rows.columns) >= {"path", "pred"}
    assert cli.main(["cam", str(out), "phantom", "--out", str(tmp_path / "cams"), "--no-mp4", "--top-k", "1"]) == 0
    assert (tmp_path / "cams" / "cam_index.csv").is_file()


def test_failed_training_leaves_earlier_results_intact(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}')

    def broken(*args, **kwargs):
        (kwargs["out_dir"] / "metrics.json").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr("covnb.train.run_training", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(["train", "--out", str(out), *TINY])
    assert json.loads((out / "metrics.json").read_text()) == {"earlier": True}
    assert not list(tmp_path.glob(".model.partial-*"))


def test_train_and_predict_misuse(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "missing")]) == 2
    # argparse: not one of the listed choices
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--backbone", "nonsense", *TINY[2:]]) == 2
    assert "efficientnet_lite0" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--folds", "1"]) == 2
    assert cli.main(["predict", str(tmp_path / "no-model.keras"), str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_train_leaves_the_mirror_out_for_chest_x_rays(cxr_root, tmp_path, capsys):
    out = tmp_path / "cxr"
    assert cli.main(["train", "--data", str(cxr_root), "--out", str(out), *TINY, "--no-final-model",
                     "--no-baseline"]) == 0
    assert "no mirrored view" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["config"]["mirror_view"] is False
    forced = tmp_path / "forced"
    assert cli.main(["train", "--data", str(cxr_root), "--out", str(forced), *TINY, "--no-final-model",
                     "--no-baseline", "--mirror"]) == 0
    assert json.loads((forced / "metrics.json").read_text())["config"]["mirror_view"] is True
