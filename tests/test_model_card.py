"""A training run on real ultrasound writes a calibrated model, its uncertainty arrays and a model
card whose every section is present and whose numbers are those of metrics.json."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from covnb.model_card import CLAIM_ITEMS, NOT_ADDRESSED, SECTIONS  # noqa: E402


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, request):
    """Default recipe on 4 patients per class of the POCUS data (128 px, 4 frames per video), run from
    another working directory with a relative output folder, as a user would."""
    from conftest import POCUS, require

    import os

    from covnb.datasets import load_dataset, select_task
    from covnb.frames import FrameSettings
    from covnb.train import recipe_config, run_training

    root = require(POCUS)
    samples = select_task(load_dataset(root).samples, "pocovid3")
    patients = samples.drop_duplicates("group").groupby("label").head(4)["group"]
    subset = samples[samples["group"].isin(set(patients))].reset_index(drop=True)
    work = tmp_path_factory.mktemp("work")
    previous = os.getcwd()
    os.chdir(work)
    try:
        result = run_training(subset, "run", recipe_config("default", image_size=128), n_folds=3, seeds=(0,),
                              frame_settings=FrameSettings(image_size=128, max_frames=4), n_boot=50, baseline=False,
                              log=None)
    finally:
        os.chdir(previous)
    return work / "run", result, subset


@pytest.mark.slow
def test_model_card_has_every_section_and_the_numbers_of_metrics_json(real_run):
    run, result, subset = real_run
    markdown = (run / "MODEL_CARD.md").read_text()
    html = (run / "MODEL_CARD.html").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    for section in SECTIONS:
        assert f"\n## {section}\n" in markdown, section
        assert re.search(r"<h2[^>]*>" + re.escape(section.replace('"', "&quot;")) + "</h2>", html) or \
            re.search(r"<h2[^>]*>" + re.escape(section) + "</h2>", html), section
    video = metrics["video_mean"]
    headline = (f"{video['pooled_mean']['balanced_accuracy']:.3f} +- {video['pooled_std']['balanced_accuracy']:.3f}")
    assert f"| videos (mean probability) | balanced accuracy | {headline} |" in markdown
    ci = video["bootstrap_95ci"]["covid_sensitivity"]
    assert f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in markdown
    for method in ("raw", "auto", "temperature"):
        ece = metrics["calibration"]["levels"]["video"][method]["ece"]
        assert f"| video | {method} | {ece['estimate']:.3f} [{ece['low']:.3f}, {ece['high']:.3f}] |" in markdown
    first = metrics["uncertainty"]["risk_coverage"]["confidence"][1]
    assert f"| confidence | 10% | {first['n_kept']} | {first['accuracy']:.3f} |" in markdown
    assert f"files / patients / frames | {subset['sample_id'].nunique()} / {subset['group'].nunique()} /" in markdown
    claim_rows = re.findall(r"^\| (\d+) \| ", markdown.split("## CLAIM checklist")[1], flags=re.M)
    assert [int(n) for n in claim_rows] == list(range(1, len(CLAIM_ITEMS) + 1))
    assert f"| 14 | {CLAIM_ITEMS[13]} | {NOT_ADDRESSED} |" in markdown
    assert "| 21 | Level at which partitions are disjoint | patient" in markdown
    assert "not for diagnosis" in markdown.lower()
    assert '<img src="reliability.png"' in html and (run / "reliability.png").is_file()
    assert result["paths"]["model_card_md"].endswith("MODEL_CARD.md")


@pytest.mark.slow
def test_saved_model_reports_calibrated_probabilities_and_uncertainty(real_run):
    from covnb.predict import predict_paths

    run, result, subset = real_run
    sidecar = json.loads((run / "model.json").read_text())
    block = sidecar["calibration"]
    assert block["method"] == "auto" and block["video"]["method"] in ("none", "temperature", "vector", "platt", "isotonic")
    assert block["video"]["method"] == min(block["video_selection_ece"], key=block["video_selection_ece"].get)
    headline_folds = pd.read_csv(run / "folds.csv")["fold"].nunique()  # one head per fold of the headline protocol
    assert sidecar["trust"]["fold_heads"] == headline_folds and (run / sidecar["trust"]["file"]).is_file()
    paths = list(subset["path"].iloc[:3])
    calibrated = predict_paths(run / "model.keras", paths)
    raw = predict_paths(run / "model.keras", paths, raw_probabilities=True)
    columns = [f"prob_{c}" for c in result["classes"]]
    videos = calibrated.videos
    assert {"confidence", "uncertainty", "fold_agreement", "ood_score", "uncertain", "uncertain_reason"} <= set(videos)
    assert (videos["probabilities"] == f"calibrated ({block['video']['method']})").all()
    assert (raw.videos["probabilities"] == "raw").all()
    np.testing.assert_allclose(videos[columns].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(raw.videos[columns].to_numpy(dtype=float),
                               raw.frames.groupby("path", sort=False)[columns].mean().to_numpy(), rtol=1e-5)
    from covnb.calibration import apply_calibration

    np.testing.assert_allclose(videos[columns].to_numpy(dtype=float),
                               apply_calibration(block["video"], raw.videos[columns].to_numpy(dtype=float)), rtol=1e-5)
    assert videos["fold_agreement"].between(0, 1).all() and (videos["ood_score"] > 0).all()
    flagged = videos[videos["uncertain"]]
    assert (flagged["uncertain_reason"].str.len() > 0).all()
    assert (videos.loc[~videos["uncertain"], "uncertain_reason"] == "").all()
    # training files are familiar: none of them lies beyond the held-out 95% threshold by a wide margin
    assert (videos["ood_score"] < 3 * sidecar["trust"]["thresholds"]["max_ood_score"]).all()
    # the run's calibrated out-of-fold predictions were cross-fitted, so they differ from the raw ones
    oof = pd.read_csv(run / "oof_predictions.csv")
    cal = pd.read_csv(run / "calibrated_oof_predictions.csv")
    assert len(oof) == len(cal) and set(cal.columns) >= set(columns)


@pytest.mark.slow
def test_the_report_page_links_the_runs_model_card(real_run):
    from covnb.report_page import write_index

    run, result, subset = real_run
    manifest = {"profile": "test", "status": "ok", "notebooks": [
        {"notebook": "05_trust.ipynb", "status": "ok", "output_dir": run.name, "metrics": f"{run.name}/metrics.json"}]}
    page = write_index(run.parent, manifest).read_text()
    assert f'href="{run.name}/MODEL_CARD.html"' in page
    card = (run / "MODEL_CARD.html").read_text()
    assert "<h2" in card and "Intended use" in card


@pytest.mark.slow
def test_cli_predict_reports_every_uncertainty_signal(real_run, tmp_path):
    from covnb.cli import main

    run, result, subset = real_run
    out = tmp_path / "predict.csv"
    assert main(["predict", str(run), *list(subset["path"].iloc[:2]), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert {"fold_agreement", "ood_score", "uncertain", "uncertain_reason", "confidence"} <= set(table)
    assert table["fold_agreement"].between(0, 1).all() and (table["ood_score"] > 0).all()
