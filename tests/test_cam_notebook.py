"""notebooks/04_cam_explorer.ipynb: committed clean, and executed end to end by papermill."""

import ast
import json
import os
from pathlib import Path

import nbformat
import pytest

from imagecheck import assert_real_image

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_cam_explorer.ipynb"
PARAMETERS = {"data_path": None, "dataset_kind": "auto", "task": "auto", "model_path": None,
              "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 224, "rate_hz": 3.0,
              "max_frames": 30, "seed": 0, "method": "gradcam", "layer": None, "threshold": 0.0, "n_gallery": 4,
              "output_dir": None}
TINY = {"image_size": 64, "max_frames": 5, "n_gallery": 2}


def test_committed_notebook_is_clean_with_one_literal_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in notebook.metadata  # no saved widget state
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
    assert metrics["synthetic"] is True and metrics["model"]["quick_demo"] is True
    assert metrics["model"]["classes"] == ["covid", "pneumonia", "regular"]
    for name in metrics["figures"]:
        assert_real_image(output / name)
    assert {"gallery.png", "peak_scatter.png", "heat_inside_sector.png", "method_agreement.png",
            "methods_side_by_side.png", "explorer_view.png"} <= set(metrics["figures"])
    assert (output / "cam_peaks.csv").is_file()
    assert set(metrics["heat_inside_overall_median"]) == {"gradcam", "gradcam++", "cam"}
    for value in metrics["heat_inside_overall_median"].values():
        assert 0.0 <= value <= 1.0
    # Grad-CAM equals CAM on the layer feeding a GAP head: perfect agreement, a known answer.
    assert metrics["agreement_median"]["gradcam vs cam"]["correlation"] == pytest.approx(1.0, abs=1e-4)
    assert len(metrics["gallery"]["covid"]) == TINY["n_gallery"]
    # the explorer shows one file per class, the most confident one, and saves the view it shows
    assert [name.split(":")[0] for name in metrics["explorer"]["samples"]] == ["covid", "pneumonia", "regular"]
    assert set(metrics["explorer"]) == {"samples", "cached_redraw_ms", "new_frame_heatmap_ms", "new_frame_overlay_ms",
                                        "plot_ms"}
    (saved,) = output.glob("covid_*_frame*.png")  # the explorer's Save PNG
    assert_real_image(saved)
    assert metrics["settings"]["method"] == "gradcam"
    # The explorer cell shows the widget AND a static figure (the HTML report is never blank).
    explorer_cells = [cell for cell in executed.cells
                      if cell.cell_type == "code" and "display(explorer.widget)" in cell.source]
    assert len(explorer_cells) == 1
    kinds = [set(output.get("data", {})) for output in explorer_cells[0].outputs]
    assert any("application/vnd.jupyter.widget-view+json" in kind for kind in kinds)
    assert any("image/png" in kind for kind in kinds)


@pytest.mark.slow
def test_bad_parameter_fails_loudly(tmp_path):
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError, match="method must be one of"):
        _run(tmp_path, method="saliency", **TINY)
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_notebook_on_a_few_real_files_with_corrupt_ones(pocus_subset, tmp_path):
    """Nine real POCUS files (three per class) plus two broken ones: the demo model still trains."""
    convex = pocus_subset / "pocus_videos" / "convex"
    (convex / "Cov_zero_byte.mp4").write_bytes(b"")
    (convex / "Pneu_truncated.mp4").write_bytes((convex / "pneu-radiopaeda.mp4").read_bytes()[:3000])
    output, executed = _run(tmp_path, data_path=str(pocus_subset), **TINY)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["synthetic"] is False and metrics["samples"] == 9
    assert 0.0 <= metrics["heat_inside_overall_median"]["gradcam"] <= 1.0
    assert any("2 file(s) skipped" in "".join(output_item.get("text", ""))
               for cell in executed.cells if cell.cell_type == "code" for output_item in cell.outputs)
