"""Run the notebooks as one parameterised, reproducible report (papermill + nbconvert).

A *profile* (``reports/<name>.yaml``) names the notebooks to run, in order, and their
parameters. Every run gets its own folder ``<out>/<profile>-<UTC time>``: the executed
notebooks, their HTML, each notebook's ``metrics.json`` and figures (in a sub-folder passed as
its ``output_dir`` parameter), and ``manifest.json`` (profile, parameters, seed, package
versions, data fingerprint, per-notebook time and status). Earlier runs are never touched.

Parameters are checked against each notebook's ``parameters`` cell and against its schema
(:func:`covnb.parameters.validate_parameters`, the same check the notebook runs) before anything
runs: papermill itself only warns about unknown names. A text parameter may contain ``{run_dir}``,
replaced by the run folder, so a later notebook can use what an earlier one wrote (for example
``model_path: "{run_dir}/02_transfer_learning/model.keras"``).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import yaml

import covnb
from covnb.run_folders import NOTEBOOKS_DIR, PACKAGE_DIR, PROFILES_DIR, default_output_dir, new_run_dir  # noqa: F401 (API)

# The notebooks and profiles ship inside the package (in a checkout, covnb/notebooks and covnb/profiles are
# symbolic links to the top-level notebooks/ and reports/, the one copy people open and edit).
DEFAULT_TIMEOUT_S = 1800
PACKAGES = ["covnb", "tensorflow", "keras", "numpy", "pandas", "scikit-learn", "opencv-python-headless",
            "matplotlib", "seaborn", "papermill", "nbconvert", "ipywidgets"]
# Parameters the runner sets itself on every notebook that declares them.
RUNNER_PARAMETERS = ("data_path", "output_dir")


class ReportError(ValueError):
    """A report that cannot start: unknown profile, unknown parameter, bad value, missing data."""


@dataclass
class NotebookPlan:
    """One notebook of a run and the parameters it will get."""

    name: str
    path: Path
    parameters: dict
    declared: dict = field(repr=False, default_factory=dict)


@dataclass
class ReportPlan:
    """Everything a run will do, checked before it starts."""

    profile: str
    profile_path: Path
    description: str
    notebooks: list[NotebookPlan]
    data_path: str | None
    timeout_s: int


# ----------------------------------------------------------------------------- profiles


def available_profiles(folder: Path = PROFILES_DIR) -> list[str]:
    """Names of the profiles in ``reports/``."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_profile(name_or_path: str) -> tuple[dict, Path]:
    """A profile by name (``reports/<name>.yaml``) or by path to a YAML file."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix in (".yaml", ".yml") and candidate.is_file() else PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ReportError(f"unknown profile {name_or_path!r}; available: {', '.join(available_profiles()) or 'none'}")
    try:
        profile = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ReportError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(profile, dict) or not isinstance(profile.get("notebooks"), list) or not profile["notebooks"]:
        raise ReportError(f"{path}: a profile needs a 'notebooks' list")
    return profile, path


def notebook_parameters(path: Path) -> dict:
    """The parameters a notebook declares (name -> papermill's description with default and type)."""
    import papermill

    return papermill.inspect_notebook(str(path))


def parse_override(text: str) -> tuple[str, object]:
    """``name=value`` from the command line; the value is read as YAML (numbers, true, null, lists)."""
    if "=" not in text:
        raise ReportError(f"parameter {text!r} must look like name=value")
    name, raw = text.split("=", 1)
    name = name.strip()
    if not name.isidentifier():
        raise ReportError(f"parameter name {name!r} is not a valid name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return name, value


def _check_type(notebook: str, name: str, value, declared: dict) -> None:
    default_text = declared.get("default", "None")
    try:
        default = yaml.safe_load(default_text)
    except yaml.YAMLError:
        return
    if default is None or value is None:
        return
    numeric = (int, float)
    if isinstance(default, bool) != isinstance(value, bool):
        raise ReportError(f"bad value for {name} in {notebook}: {value!r} (expected true/false like {default_text})")
    if isinstance(default, numeric) and not isinstance(value, numeric):
        raise ReportError(f"bad value for {name} in {notebook}: {value!r} (expected a number like {default_text})")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and not value.is_integer():
        raise ReportError(f"bad value for {name} in {notebook}: {value!r} (expected a whole number like {default_text})")
    if isinstance(default, str) and not isinstance(value, str):
        raise ReportError(f"bad value for {name} in {notebook}: {value!r} (expected text like {default_text})")


def _validate(nb_path: Path, params: dict, declared: dict) -> None:
    """The notebook's own parameter schema (:mod:`covnb.parameters`) on its defaults + the profile's values."""
    import ast

    from covnb.parameters import SCHEMAS, ParameterError, validate_parameters

    if nb_path.stem not in SCHEMAS:
        return  # a user's own notebook: the type checks above are all there is
    merged = {}
    for name, description in declared.items():
        try:
            merged[name] = ast.literal_eval(description.get("default", "None"))
        except (ValueError, SyntaxError):
            merged[name] = description.get("default")
    merged.update(params)
    try:
        validate_parameters(nb_path.stem, merged, running=False)
    except ParameterError as error:
        raise ReportError(str(error)) from None


def _resolved_data_path(data_path: str | None) -> str | None:
    """The data folder as an absolute path (``None`` stays ``None``); raises when it does not exist."""
    if data_path is None:
        return None
    data_path = str(Path(data_path).expanduser().resolve())
    if not Path(data_path).is_dir():
        raise ReportError(f"data folder {data_path} does not exist")
    return data_path


def _plan_notebook(entry, notebooks_dir: Path, spec: dict, path: Path, shared: dict, overrides: dict) -> NotebookPlan:
    """One profile entry as a checked :class:`NotebookPlan`: shared, then its own, then override parameters."""
    entry = {"path": entry} if isinstance(entry, str) else dict(entry)
    nb_path = notebooks_dir / entry["path"]
    if not nb_path.is_file():
        raise ReportError(f"profile {spec.get('name', path.stem)} names a missing notebook {nb_path}")
    declared = notebook_parameters(nb_path)
    if not declared:
        raise ReportError(f"{nb_path.name} has no cell tagged 'parameters'")
    own = dict(entry.get("parameters") or {})
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ReportError(f"profile {path.stem}: {nb_path.name} has no parameter {', '.join(unknown)}")
    params = {k: v for k, v in shared.items() if k in declared}
    params.update(own)
    params.update({k: v for k, v in overrides.items() if k in declared})
    for name, value in params.items():
        _check_type(nb_path.name, name, value, declared[name])
    _validate(nb_path, params, declared)
    return NotebookPlan(nb_path.stem, nb_path, params, declared)


def _check_accepted(path: Path, shared: dict, overrides: dict, accepted: set) -> None:
    """Raise when a shared profile parameter or an override is taken by no notebook of the profile."""
    unknown = sorted(set(shared) - accepted)
    if unknown:
        raise ReportError(f"profile {path.stem}: no notebook has a parameter {', '.join(unknown)}")
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ReportError(f"unknown parameter {', '.join(unknown)}; the notebooks of profile {path.stem} accept: "
                          f"{', '.join(sorted(accepted))}")


def plan_report(profile: str = "sample", data: str | None = None, overrides: dict | None = None,
                notebooks_dir: Path = NOTEBOOKS_DIR) -> ReportPlan:
    """Resolve a profile and overrides into a checked plan; raises :class:`ReportError`."""
    spec, path = load_profile(profile)
    overrides = dict(overrides or {})
    shared = dict(spec.get("parameters") or {})
    data_path = _resolved_data_path(data if data is not None else spec.get("data"))
    plans, accepted = [], set(RUNNER_PARAMETERS)
    for entry in spec["notebooks"]:
        plan = _plan_notebook(entry, notebooks_dir, spec, path, shared, overrides)
        accepted.update(plan.declared)
        plans.append(plan)
    _check_accepted(path, shared, overrides, accepted)
    return ReportPlan(spec.get("name", path.stem), path, spec.get("description", ""), plans, data_path,
                      int(spec.get("timeout", DEFAULT_TIMEOUT_S)))


# ----------------------------------------------------------------------------- running


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _manifest_problems(run_dir: Path, manifest: dict) -> list[str]:
    """What the manifest says went wrong: its status, and every notebook not ok or without metrics/HTML."""
    problems = [] if manifest.get("status") == "ok" else [f"manifest status {manifest.get('status')!r}"]
    if not manifest.get("notebooks"):
        problems.append("manifest lists no notebook")
    for record in manifest.get("notebooks", []):
        name = record.get("notebook")
        if record.get("status") != "ok":
            problems.append(f"{name}: status {record.get('status')!r} {record.get('error') or ''}".strip())
        if not record.get("metrics") or not (run_dir / record["metrics"]).is_file():
            problems.append(f"{name}: no metrics.json")
        if not (run_dir / record.get("html", "")).is_file():
            problems.append(f"{name}: no HTML")
    return problems


def _broken_links(run_dir: Path, index: Path) -> list[str]:
    """Every ``href``/``src`` of ``index`` that is not a URL, data: URI or anchor and names no existing file."""
    from urllib.parse import unquote, urlsplit

    problems = []
    for link in re.findall(r"""(?:href|src)\s*=\s*["']?([^"'\s>]+)""", index.read_text(encoding="utf-8")):
        parts = urlsplit(html.unescape(link))
        if parts.scheme or parts.netloc or not parts.path:  # a URL, data: URI or a bare #anchor
            continue
        if not (run_dir / unquote(parts.path)).exists():
            problems.append(f"index.html links to {link}, which does not exist")
    return problems


def verify_run(run_dir: str | Path) -> list[str]:
    """What is wrong with a finished run folder (empty list: nothing): the manifest says ok, every notebook
    ran and wrote its ``metrics.json`` and HTML, and every ``href``/``src`` of ``index.html`` that is not a
    URL or an anchor names a file that exists."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing"]
    problems = _manifest_problems(run_dir, json.loads(manifest_path.read_text()))
    index = run_dir / "index.html"
    if not index.is_file():
        return problems + [f"{index}: missing"]
    return problems + _broken_links(run_dir, index)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def _data_record(data_path: str | None) -> dict:
    from covnb.datasets import data_fingerprint, load_dataset

    dataset = load_dataset(data_path)
    return {"path": str(dataset.root), "layout": dataset.layout, "synthetic": data_path is None,
            "fingerprint": data_fingerprint(dataset.samples), "samples": len(dataset.samples),
            "groups": int(dataset.samples["group"].nunique()),
            "skipped": dataset.summary()["skipped"]}


def _to_html(notebook_path: Path, html_path: Path) -> None:
    """The executed notebook as HTML beside it, with MathJax copied into the run folder (math renders offline)."""
    from covnb.notebook_html import copy_mathjax, notebook_to_html

    notebook_to_html(notebook_path, html_path, mathjax_url=copy_mathjax(html_path.parent))


def _new_manifest(plan: ReportPlan) -> dict:
    """The manifest of a run about to start: profile, time, command, platform, versions, data and seed."""
    manifest = {
        "profile": plan.profile, "profile_file": str(plan.profile_path), "description": plan.description,
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "platform": platform.platform(), "versions": package_versions(),
        "seed": None, "data": None, "notebooks": [], "status": "running",
    }
    return manifest


def _record_data_and_seed(manifest: dict, plan: ReportPlan) -> None:
    """Fill the manifest's ``data`` (or the error loading it) and ``seed`` (one value, a sorted list, or None)."""
    try:
        manifest["data"] = _data_record(plan.data_path)
    except Exception as error:  # the notebooks report data problems themselves; record and go on
        manifest["data"] = {"path": plan.data_path, "error": f"{type(error).__name__}: {error}"}
    seeds = {p.parameters.get("seed") for p in plan.notebooks if "seed" in p.parameters}
    manifest["seed"] = seeds.pop() if len(seeds) == 1 else sorted(seeds, key=str) or None


def _notebook_parameters(nb: NotebookPlan, plan: ReportPlan, run_dir: Path, output_dir: Path) -> dict:
    """The parameters handed to papermill: expanded paths, plus the runner's ``output_dir`` and ``data_path``."""
    params = {k: _expand(v, run_dir, k) for k, v in nb.parameters.items()}
    if "output_dir" in nb.declared:
        params["output_dir"] = str(output_dir)
    if "data_path" in nb.declared:
        params["data_path"] = plan.data_path
    return params


def _execute_notebook(nb: NotebookPlan, plan: ReportPlan, run_dir: Path, record: dict, progress: bool,
                      execute_notebook) -> bool:
    """Run one notebook with ``execute_notebook`` (papermill's) into ``run_dir``, filling ``record``; returns
    whether it failed."""
    from covnb.quiet import kernel_arguments

    output_dir = run_dir / nb.name
    output_dir.mkdir()
    params = _notebook_parameters(nb, plan, run_dir, output_dir)
    record["parameters"] = params
    executed = run_dir / f"{nb.name}.ipynb"
    failed = False
    t0 = time.time()
    try:
        execute_notebook(str(nb.path), str(executed), parameters=params, kernel_name="python3",
                         execution_timeout=plan.timeout_s, progress_bar=progress, cwd=str(output_dir),
                         extra_arguments=kernel_arguments())
        record["status"] = "ok"
    except Exception as error:  # papermill writes the failed notebook with its traceback
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        failed = True
    record["seconds"] = round(time.time() - t0, 1)
    metrics_file = output_dir / "metrics.json"
    record["metrics"] = f"{nb.name}/metrics.json" if metrics_file.is_file() else None
    if executed.is_file():
        try:
            _to_html(executed, run_dir / f"{nb.name}.html")
        except Exception as error:
            record["html_error"] = str(error)
    return failed


def run_report(plan: ReportPlan, out: str | Path = "runs", log=print, progress: bool = True) -> tuple[Path, dict]:
    """Execute a planned report; returns the run folder and the manifest (``status`` ok/failed)."""
    import papermill

    from covnb.quiet import quiet_environment

    quiet_environment()  # inherited by the kernels
    # papermill runs each kernel inside its notebook's output folder: every path handed on must be absolute
    run_dir = new_run_dir(Path(out).expanduser().resolve(), plan.profile)
    started = time.time()
    manifest = _new_manifest(plan)
    log(f"covnb report: profile {plan.profile} -> {run_dir}")
    _record_data_and_seed(manifest, plan)
    _write_json(run_dir / "manifest.json", manifest)
    failed = False
    for number, nb in enumerate(plan.notebooks, 1):
        record = {"notebook": nb.path.name, "parameters": {}, "status": "not run", "seconds": None,
                  "executed": f"{nb.name}.ipynb", "html": f"{nb.name}.html", "output_dir": nb.name}
        manifest["notebooks"].append(record)
        if failed:
            continue
        log(f"[{number}/{len(plan.notebooks)}] {nb.path.name} ...")
        failed = _execute_notebook(nb, plan, run_dir, record, progress, papermill.execute_notebook)
        log(f"[{number}/{len(plan.notebooks)}] {nb.path.name}: {record['status']} in {record['seconds']} s"
            + (f" ({record['error']})" if failed else ""))
        _write_json(run_dir / "manifest.json", manifest)
    manifest["status"] = "failed" if failed else "ok"
    manifest["seconds"] = round(time.time() - started, 1)
    _write_json(run_dir / "manifest.json", manifest)
    _write_index(run_dir, manifest)
    return run_dir, manifest


def _expand(value, run_dir: Path, name: str = ""):
    """``{run_dir}`` in a text parameter becomes this run's folder (e.g. a model an earlier notebook saved);
    a ``*_path`` / ``*_dir`` parameter (other than ``phantom``) is made absolute against the caller's working
    directory, ``~`` expanded."""
    if not isinstance(value, str):
        return value
    value = value.replace("{run_dir}", str(run_dir))
    if value and value != "phantom" and name.endswith(("_path", "_dir")):
        value = str(Path(value).expanduser().resolve())
    return value


def _write_index(run_dir: Path, manifest: dict) -> None:
    """The run's front page, ``index.html`` (see :mod:`covnb.report_page`)."""
    from covnb.report_page import write_index

    write_index(run_dir, manifest)
