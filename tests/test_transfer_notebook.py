"""notebooks/02_transfer_learning.ipynb: committed clean, and executed end to end by papermill."""

import ast
import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest

from imagecheck import assert_real_image

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_transfer_learning.ipynb"
PARAMETERS = {"data_path": None, "dataset_kind": "auto", "task": "auto", "backbone": "efficientnet_lite0",
              "weights": "imagenet", "alpha": None, "image_size": 224, "rate_hz": 3.0, "max_frames": 30, "seed": 0,
              "n_folds": 5, "n_seeds": 1, "recipe": "default", "epochs": 40, "aug_views": 0, "mirror_view": "auto", "fine_tune_epochs": 0,
              "compare_imbalance": True, "compare_leaky_split": True, "compare_source_split": True, "projection": "tsne",
              "n_boot": 1000, "backbones": [], "cluster": None,
              "output_dir": None}
# Random-weight MobileNet 0.25 at 32 px: every code path in seconds (the numbers mean nothing).
TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": None, "image_size": 32, "max_frames": 3, "n_folds": 3,
        "epochs": 2, "aug_views": 1, "n_boot": 20, "projection": "pca"}


def test_committed_notebook_is_clean_with_one_literal_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in notebook.metadata
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    values = {}
    for statement in ast.parse(tagged[0].source).body:
        assert isinstance(statement, ast.Assign), "parameters cell: assignments only"
        values[statement.targets[0].id] = ast.literal_eval(statement.value)  # literals only
    assert values == PARAMETERS
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert notebook.cells[0].cell_type == "markdown"  # prose first
    position = notebook.cells.index(tagged[0])
    # the next cell validates the parameters with the package's one function (covnb.parameters)
    assert 'validate_parameters("02_transfer_learning", globals())' in notebook.cells[position + 1].source


def _run(tmp_path, **parameters):
    papermill = pytest.importorskip("papermill")
    output = tmp_path / "out"
    executed = tmp_path / "executed.ipynb"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    papermill.execute_notebook(str(NOTEBOOK), str(executed), parameters={"output_dir": str(output), **parameters},
                               kernel_name="python3", execution_timeout=600, progress_bar=False,
                               cwd=str(tmp_path))
    return output, nbformat.read(executed, as_version=4)


@pytest.mark.slow
def test_notebook_on_the_phantom_at_tiny_settings(tmp_path):
    output, executed = _run(tmp_path, **TINY)
    metrics = json.loads((output / "metrics.json").read_text())
    classes = ["covid", "pneumonia", "regular"]
    assert metrics["synthetic"] is True and metrics["data"]["classes"] == classes
    assert {"headline", "honest", "leaky_split", "split_audit", "recipes", "imbalance", "frozen_features", "model",
            "timings", "figures"} <= set(metrics)
    assert {row["recipe"] for row in metrics["recipes"]} == {"linear probe", "linear probe, middle layers",
                                                             "covnb default"}
    assert metrics["recipe"] == "covnb default"
    assert set(metrics["imbalance"]) == {"none", "class_weight", "oversample"}
    assert set(metrics["honest"]) == {"frame", "video_mean", "video_vote"}
    assert metrics["honest"]["video_mean"]["n_folds"] == TINY["n_folds"]
    assert 0.0 <= metrics["headline"]["video_balanced_accuracy"] <= 1.0
    ci = metrics["honest"]["video_mean"]["bootstrap_95ci"]["balanced_accuracy"]
    assert ci["low"] <= ci["high"] and ci["n_boot"] == TINY["n_boot"]
    # Known answers: the patient-level split passes the audit, the frame-level split leaks every patient.
    assert metrics["split_audit"]["patient_level_ok"] is True
    assert metrics["leaky_split"]["audit_ok"] is False
    assert metrics["leaky_split"]["audit_shared_patients"] == metrics["data"]["patients"]
    assert metrics["frozen_features"]["dimensions"] == 256  # MobileNet alpha 0.25: 1024 * 0.25 channels
    for name in metrics["figures"]:
        assert_real_image(output / name)
    assert {"frozen_features.png", "recipes.png", "leaky_vs_honest.png", "imbalance.png", "confusion_videos.png",
            "confusion_frames.png", "roc_videos.png"} <= set(metrics["figures"])
    oof = (output / "oof_predictions.csv").read_text().splitlines()
    assert len(oof) - 1 == metrics["data"]["frames"]  # one out-of-fold prediction per frame (one seed)

    from covnb.models import load_model

    model, metadata = load_model(output / "model.keras")
    assert metadata["classes"] == classes and metadata["image_size"] == TINY["image_size"]
    assert metadata["backbone"] == "mobilenet" and metadata["training"]["recipe"] == "default"
    probabilities = np.asarray(model(np.zeros((2, 32, 32, 3), np.float32)))
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert metrics["model"]["reload_max_difference"] < 1e-4
    # Short outputs: no per-epoch lines in the executed notebook.
    text = "".join(output_item.get("text", "") for cell in executed.cells if cell.cell_type == "code"
                   for output_item in cell.outputs)
    assert " epoch " not in text and "retracing" not in text


@pytest.mark.slow
@pytest.mark.parametrize("bad, message", [({"recipe": "fancy"}, "recipe must be one of"),
                                          ({"n_folds": 37}, r"n_folds must be an integer in 2..20, got 37")])
def test_bad_parameter_fails_loudly(tmp_path, bad, message):
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError, match=message):
        _run(tmp_path, **{**TINY, **bad})
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_notebook_compares_patient_and_source_held_out_folds(tmp_path, pocus_subset):
    # Three COVID-19 files of three sources: three source-held-out folds; prose written from the numbers.
    output, executed = _run(tmp_path, **{**TINY, "data_path": str(pocus_subset), "n_folds": 3, "n_boot": 0,
                                         "compare_imbalance": False})
    metrics = json.loads((output / "metrics.json").read_text())
    source = metrics["source_held_out"]
    assert source is not None and len(source["held_out"]) == 3
    splits = {row["split"] for row in source["table"]}
    assert {"covnb default, patient-grouped", "covnb default, source-held-out", "linear probe, source-held-out",
            "covnb default, frame-level split (leaky)"} <= splits
    patient = next(r for r in source["table"] if r["split"] == "covnb default, patient-grouped")
    held = next(r for r in source["table"] if r["split"] == "covnb default, source-held-out")
    assert f"patient-grouped folds {patient['video balanced accuracy']:.3f}" in source["prose"]
    assert f"source-held-out folds {held['video balanced accuracy']:.3f}" in source["prose"]
    assert "patient_vs_source.png" in metrics["figures"]

