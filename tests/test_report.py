import json
from pathlib import Path

import nbformat
import pytest

from covnb.cli import main
from covnb.report import (NOTEBOOKS_DIR, PROFILES_DIR, ReportError, _expand, available_profiles, default_output_dir,
                          load_profile, parse_override, plan_report, run_report, verify_run)


def make_notebook(path: Path, body: str, parameters: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


GOOD_PARAMS = "data_path = None\noutput_dir = '.'\nseed = 0\nsteps = 3\nlabel = 'x'\n"
GOOD_BODY = ("import json, pathlib\n"
             "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps({'steps': steps, 'seed': seed, 'data': data_path}))\n"
             "print('ran', steps)\n")


@pytest.fixture
def profile(tmp_path):
    good = make_notebook(tmp_path / "good.ipynb", GOOD_BODY, GOOD_PARAMS)
    second = make_notebook(tmp_path / "second.ipynb", GOOD_BODY, GOOD_PARAMS)
    failing = make_notebook(tmp_path / "failing.ipynb", "raise RuntimeError('boom in notebook')", GOOD_PARAMS)
    data = tmp_path / "data"
    data.mkdir()

    def write(name, notebooks, parameters=None):
        path = tmp_path / f"{name}.yaml"
        lines = [f"name: {name}", f"data: {data}", "timeout: 120", "parameters:"]
        lines += [f"  {k}: {v}" for k, v in (parameters or {"seed": 7}).items()]
        lines += ["notebooks:"] + [f"  - path: {nb}" for nb in notebooks]
        path.write_text("\n".join(lines) + "\n")
        return path

    return {"ok": write("ok", [good, second]), "fails": write("fails", [good, failing, second]),
            "bad_param": write("bad_param", [good], {"nosuch": 1}), "data": data}


def test_parse_override_reads_yaml_values():
    assert parse_override("steps=5") == ("steps", 5)
    assert parse_override("rate=0.5") == ("rate", 0.5)
    assert parse_override("path=null") == ("path", None)
    assert parse_override("name=abc") == ("name", "abc")
    with pytest.raises(ReportError):
        parse_override("novalue")


def test_unknown_profile_and_parameters_fail_before_running(profile, capsys):
    with pytest.raises(ReportError, match="unknown profile"):
        load_profile("no-such-profile")
    with pytest.raises(ReportError, match="unknown parameter nosuch"):
        plan_report(str(profile["ok"]), overrides={"nosuch": 1})
    with pytest.raises(ReportError, match="no notebook has a parameter nosuch"):
        plan_report(str(profile["bad_param"]))
    with pytest.raises(ReportError, match="bad value for steps"):
        plan_report(str(profile["ok"]), overrides={"steps": "many"})
    with pytest.raises(ReportError, match="does not exist"):
        plan_report(str(profile["ok"]), data="/no/such/folder")
    assert main(["report", "--profile", "no-such-profile", "--out", "x"]) == 2
    assert main(["report", "--profile", str(profile["ok"]), "-p", "nosuch=1", "--out", "x"]) == 2
    assert "unknown parameter" in capsys.readouterr().err


def test_run_writes_notebooks_html_metrics_manifest_and_never_overwrites(profile, tmp_path):
    out = tmp_path / "runs"
    plan = plan_report(str(profile["ok"]), overrides={"steps": 5, "label": "{run_dir}/good"})
    run_dir, manifest = run_report(plan, out=out, progress=False, log=lambda *_: None)
    assert manifest["status"] == "ok" and manifest["seed"] == 7
    assert manifest["notebooks"][0]["parameters"]["label"] == f"{run_dir}/good"
    for name in ("good", "second"):
        assert (run_dir / f"{name}.ipynb").is_file() and (run_dir / f"{name}.html").is_file()
        metrics = json.loads((run_dir / name / "metrics.json").read_text())
        assert metrics == {"steps": 5, "seed": 7, "data": str(profile["data"])}
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert [n["status"] for n in saved["notebooks"]] == ["ok", "ok"]
    assert saved["versions"]["covnb"] and saved["data"]["path"] == str(profile["data"])
    assert all(n["seconds"] is not None for n in saved["notebooks"])
    assert (run_dir / "index.html").is_file()
    second_dir, _ = run_report(plan, out=out, progress=False, log=lambda *_: None)
    assert second_dir != run_dir and (run_dir / "manifest.json").read_text() == json.dumps(saved, indent=2)


def test_failing_notebook_keeps_traceback_and_exits_non_zero(profile, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["report", "--profile", str(profile["fails"]), "--out", str(out), "--no-progress"])
    assert code == 1
    (run_dir,) = list(out.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok", "failed", "not run"]
    assert manifest["status"] == "failed" and "boom in notebook" in manifest["notebooks"][1]["error"]
    executed = nbformat.read(str(run_dir / "failing.ipynb"), as_version=4)
    tracebacks = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert tracebacks and tracebacks[0]["evalue"] == "boom in notebook"
    assert (run_dir / "failing.html").is_file()


PATH_BODY = ("import json, os, pathlib\n"
             "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps({'output_dir': output_dir, "
             "'label': label, 'cwd': os.getcwd()}))\n")


def test_relative_out_with_a_space_from_another_directory_hands_notebooks_absolute_paths(tmp_path, monkeypatch):
    notebook = make_notebook(tmp_path / "paths.ipynb", PATH_BODY, "output_dir = '.'\nlabel = 'x'\n")
    profile = tmp_path / "paths.yaml"
    profile.write_text(f"name: paths\ntimeout: 120\nnotebooks:\n  - path: {notebook}\n")
    elsewhere = tmp_path / "my project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["report", "--profile", str(profile), "--out", "my runs", "-p", "label={run_dir}/x", "--no-progress"])
    assert code == 0
    (run_dir,) = list((elsewhere / "my runs").iterdir())
    assert run_dir.is_absolute() and run_dir.parent == elsewhere / "my runs"
    metrics = json.loads((run_dir / "paths" / "metrics.json").read_text())
    assert metrics["output_dir"] == str(run_dir / "paths") and metrics["label"] == f"{run_dir}/x"
    assert metrics["cwd"] == str(run_dir / "paths")
    assert verify_run(run_dir) == []


def test_relative_path_parameters_become_absolute_against_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "r"
    assert _expand("my data", run_dir, "data_path") == str(tmp_path / "my data")
    assert _expand("~/x", run_dir, "cross_domain_dir") == str(Path("~/x").expanduser())
    assert _expand("{run_dir}/02/model.keras", run_dir, "model_path") == f"{run_dir}/02/model.keras"
    assert _expand("relative words", run_dir, "label") == "relative words"  # only *_path / *_dir are paths
    assert _expand("phantom", run_dir, "cross_domain_path") == "phantom"  # the embedded data, not a file
    assert _expand(3, run_dir, "steps_path") == 3 and _expand("", run_dir, "data_path") == ""


def test_default_output_dir_never_lies_beside_the_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    by_hand = default_output_dir("02_transfer_learning", cwd=NOTEBOOKS_DIR)
    assert by_hand.is_dir() and by_hand.parent == tmp_path / "cache" / "runs"
    assert by_hand.name.startswith("02_transfer_learning-")
    work = tmp_path / "work"
    work.mkdir()
    first = default_output_dir("04_cam_explorer", cwd=work)
    second = default_output_dir("04_cam_explorer", cwd=work)
    assert first.parent == work / "runs" and first != second


def test_notebooks_and_profiles_are_package_resources():
    assert NOTEBOOKS_DIR.parent.name == "covnb" and PROFILES_DIR.parent.name == "covnb"
    assert {"sample", "smoke", "full"} <= set(available_profiles())
    assert len(list(NOTEBOOKS_DIR.glob("*.ipynb"))) >= 4
    plan = plan_report("smoke")
    assert all(nb.path.is_file() for nb in plan.notebooks)


def test_verify_run_finds_a_failed_notebook_a_missing_metrics_file_and_a_broken_link(profile, tmp_path):
    plan = plan_report(str(profile["ok"]))
    run_dir, _ = run_report(plan, out=tmp_path / "runs", progress=False, log=lambda *_: None)
    assert verify_run(run_dir) == []
    (run_dir / "second" / "metrics.json").unlink()
    index = run_dir / "index.html"
    index.write_text(index.read_text() + "<img src='figs/none.png'><a href='https://example.org'>x</a><a href='#top'>t</a>")
    problems = verify_run(run_dir)
    assert any("second.ipynb: no metrics.json" in p for p in problems)
    assert any("figs/none.png" in p for p in problems) and not any("example.org" in p for p in problems)
    failed_dir, _ = run_report(plan_report(str(profile["fails"])), out=tmp_path / "runs", progress=False,
                               log=lambda *_: None)
    assert any("failing.ipynb: status 'failed'" in p for p in verify_run(failed_dir))
