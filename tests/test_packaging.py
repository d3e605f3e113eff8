"""The install files agree with each other, and CI runs the README's test command."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements):
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in requirements}


def test_environment_yml_installs_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section, "conda env create must install covnb itself"
    assert _names([r for r in pip_section if r != "-e ."]) == _names(project["dependencies"])
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.startswith("python=3.11") and "pip" in env["dependencies"]


def test_pyproject_has_the_required_dependencies():
    names = set(_names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]))
    required = {"tensorflow", "keras", "jupyterlab", "ipykernel", "ipywidgets", "papermill", "nbconvert", "matplotlib",
                "seaborn", "scikit-learn", "opencv-python-headless", "pandas", "pyyaml"}
    assert required <= names and "opencv-python" not in names


def _readme_command(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, f"README.md must show a command block after <!-- {marker} -->"
    return match.group(1).strip()


def _ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_ci_runs_the_readme_test_command():
    assert _readme_command("test-command") in _ci_lines()


def test_ci_runs_the_readme_main_command_and_checks_its_run_folder():
    command = _readme_command("main-command")
    assert "covnb report" in command
    lines = _ci_lines()
    assert command in lines, "CI must run the README's main command verbatim, as one line"
    after = lines[lines.index(command) + 1:]
    assert any(line.startswith(".venv/bin/python .ci/check_run.py") for line in after)
    assert "pip wheel" in " ".join(after) and "--profile smoke" in " ".join(after)


def test_committed_notebooks_are_clean_with_one_parameters_cell():
    import nbformat

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
        assert "widgets" not in nb.metadata and nb.metadata["kernelspec"]["name"] == "python3"


def test_editable_checkout_serves_the_top_level_notebooks_and_profiles_as_package_resources():
    # one copy: covnb/notebooks and covnb/profiles lead to the notebooks/ and reports/ people open
    from covnb.report import NOTEBOOKS_DIR, PROFILES_DIR

    assert (ROOT / "covnb" / "notebooks").resolve() == (ROOT / "notebooks").resolve()
    assert (ROOT / "covnb" / "profiles").resolve() == (ROOT / "reports").resolve()
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in PROFILES_DIR.glob("*.yaml")) == sorted(p.name for p in (ROOT / "reports").glob("*.yaml"))


@pytest.mark.slow
def test_wheel_ships_the_notebooks_and_profiles(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                   check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("covnb-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        expected = {f"covnb/notebooks/{p.name}": p for p in (ROOT / "notebooks").glob("*.ipynb")}
        expected |= {f"covnb/profiles/{p.name}": p for p in (ROOT / "reports").glob("*.yaml")}
        expected["covnb/resources/imagenet_classes.tsv"] = ROOT / "covnb" / "resources" / "imagenet_classes.tsv"
        assert len(expected) >= 8 and set(expected) <= names
        for name, source in expected.items():
            assert archive.read(name) == source.read_bytes(), name
        assert "covnb/report.py" in names and not any(".ipynb_checkpoints" in n for n in names)
