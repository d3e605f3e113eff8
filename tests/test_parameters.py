"""covnb.parameters: one schema per notebook, used by the notebook and by ``covnb report`` before anything runs."""

import ast
from pathlib import Path

import nbformat
import pytest

from covnb.cli import main
from covnb.parameters import SCHEMAS, ParameterError, validate_parameters
from covnb.report import ReportError, available_profiles, plan_report

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameters_cell(name: str) -> dict:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    return {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(cell.source).body}


def test_every_notebook_has_a_schema_listing_exactly_its_parameters():
    assert sorted(SCHEMAS) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    for name, schema in SCHEMAS.items():
        assert list(schema) == list(parameters_cell(name)), name
        assert all(spec.meaning for spec in schema.values()), name


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_defaults_validate_and_the_next_cell_calls_the_one_validation(name):
    defaults = parameters_cell(name)
    values = validate_parameters(name, defaults, running=False)
    assert set(values) == set(defaults)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    position = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    assert f'validate_parameters("{name}", globals())' in notebook.cells[position + 1].source
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "_check(" not in code and "def " not in code  # no preamble, no helper definitions


@pytest.mark.parametrize("profile", available_profiles())
def test_every_profile_validates(profile):
    plan = plan_report(profile)
    for notebook in plan.notebooks:
        merged = {**parameters_cell(notebook.name), **notebook.parameters}
        validate_parameters(notebook.name, merged, running=False)


@pytest.mark.parametrize("name, change, message", [
    ("01_data_exploration", {"image_size": 16}, "01_data_exploration: image_size must be an integer in 32..1024, got 16"),
    ("02_transfer_learning", {"n_folds": 37}, "n_folds must be an integer in 2..20, got 37"),
    ("02_transfer_learning", {"recipe": "fancy"}, "recipe must be one of 'pocovid', 'default', 'midlevel', 'linear_probe', 'auto'"),
    ("02_transfer_learning", {"alpha": 0.5}, "alpha applies to mobilenet / mobilenet_v2 only"),
    ("02_transfer_learning", {"mirror_view": 1}, "mirror_view must be one of True, False, 'auto'; got 1"),
    ("02_transfer_learning", {"compare_imbalance": "yes"}, "compare_imbalance must be True or False"),
    ("03_few_shot", {"shots": []}, "shots must be a non-empty list of integers >= 1"),
    ("03_few_shot", {"base_fraction": 0.9}, r"base_fraction must be a number in \[0.1, 0.5\], got 0.9"),
    ("04_cam_explorer", {"method": "saliency"}, "method must be one of"),
    ("04_cam_explorer", {"threshold": 1.0}, r"threshold must be None or a number in \[0, 1\), got 1.0"),
    ("05_trust", {"n_boot": 5}, "n_boot must be an integer >= 10, got 5"),
    ("05_trust", {"rate_hz": 0}, r"rate_hz must be a number in \(0, 120\], got 0"),
])
def test_bad_values_are_named(name, change, message):
    with pytest.raises(ParameterError, match=message):
        validate_parameters(name, {**parameters_cell(name), **change}, running=False)


def test_values_are_normalised_and_paths_checked_when_running(tmp_path):
    values = validate_parameters("03_few_shot", {**parameters_cell("03_few_shot"), "shots": [5, 1, 5, 2],
                                                 "output_dir": str(tmp_path)})
    assert values["shots"] == [1, 2, 5]
    cam = validate_parameters("04_cam_explorer", {**parameters_cell("04_cam_explorer"), "method": "Grad-CAM++",
                                                  "output_dir": str(tmp_path)})
    assert cam["method"] == "gradcam++"
    with pytest.raises(ParameterError, match="data_path '.*missing' is not an existing folder"):
        validate_parameters("01_data_exploration", {**parameters_cell("01_data_exploration"),
                                                    "data_path": str(tmp_path / "missing"), "output_dir": str(tmp_path)})
    # before a report runs, a model an earlier notebook will write does not exist yet: not checked
    later = validate_parameters("04_cam_explorer", {**parameters_cell("04_cam_explorer"),
                                                    "model_path": "{run_dir}/02/model.keras"}, running=False)
    assert later["model_path"] == "{run_dir}/02/model.keras"
    with pytest.raises(ParameterError, match="not given"):
        validate_parameters("05_trust", {"seed": 0})


def test_report_refuses_a_bad_parameter_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ReportError, match="02_transfer_learning: n_folds must be an integer in 2..20, got 37"):
        plan_report("smoke", overrides={"n_folds": 37})
    assert main(["report", "--profile", "smoke", "--out", str(tmp_path / "runs"), "-p", "image_size=8"]) == 2
    assert "image_size must be an integer in 32..1024, got 8" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
