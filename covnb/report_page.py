"""The front page of a report run, ``index.html``: the page a person opens first.

One self-contained file (inline CSS, no script; figures are relative links into the run folder),
rendered with Jinja2 from ``covnb/templates/index.html.j2``: per notebook its status and time,
its headline numbers with their confidence intervals, thumbnails of its key figures linking to
the full images, links to the ``MODEL_CARD.html`` of every model a notebook trained (also listed
under the table of contents), and for a failed notebook its error with a link to the executed notebook; then
the data (fingerprint, synthetic or real), the files that were skipped and why, the parameters,
the seed and the package versions.

Headline numbers are read from each notebook's ``metrics.json`` through a small declared table,
:data:`HEADLINES` (which keys are the headline numbers of which notebook, and where their
intervals are), then the notebook's own ``headline`` block if it has one, and for any other
notebook its top-level numbers. The page renders whatever a notebook wrote, or did not write:
a failed notebook, a missing or garbled ``metrics.json`` gives a note, never an exception.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2

TEMPLATE = "index.html.j2"
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif")
MAX_EXTRA_FIGURES = 40
MAX_FALLBACK_NUMBERS = 10
# Top-level keys the generic fallback leaves out: bookkeeping, not results.
FALLBACK_SKIP = re.compile(r"(^|_)(seed|seconds|runtime|time|timings?)(_|$)|_(s|ms)$")


@dataclass(frozen=True)
class Headline:
    """One headline number of a notebook, as dotted keys into its ``metrics.json``.

    A key segment may hold ``*`` (any text; every match is shown, in file order); the matched
    text fills ``{0}`` in ``label`` and the ``*`` of ``ci`` and ``std``. ``label`` may also name
    sibling keys of the value (``{k_shot}``). ``ci`` points at ``{"low": .., "high": ..}`` or at
    the half-width of a 95% interval; ``std`` at a standard deviation.
    """

    label: str
    key: str
    ci: str | None = None
    std: str | None = None
    note: str = ""


BOOTSTRAP = "honest.video_mean.bootstrap_95ci"
HEADLINES: dict[str, tuple[Headline, ...]] = {
    "01_data_exploration": (
        Headline("files", "samples"),
        Headline("patients", "groups"),
        Headline("frames", "frames"),
        Headline("files skipped", "skipped"),
        Headline("patients in several folds of a frame-level split", "audit_frame_level_split.shared_groups"),
        Headline("patient-level split passes the leakage audit", "audit_patient_split.ok"),
    ),
    "02_transfer_learning": (
        Headline("video balanced accuracy", "headline.video_balanced_accuracy", ci=f"{BOOTSTRAP}.balanced_accuracy",
                 std="headline.video_balanced_accuracy_std", note="mean over patient-level test folds"),
        Headline("{0} sensitivity, videos", "headline.video_*_sensitivity", ci=f"{BOOTSTRAP}.*_sensitivity"),
        Headline("{0} specificity, videos", "headline.video_*_specificity", ci=f"{BOOTSTRAP}.*_specificity"),
        Headline("macro ROC-AUC, videos", "headline.video_macro_auc", ci=f"{BOOTSTRAP}.macro_auc"),
        Headline("frame balanced accuracy, patient-level split", "headline.frame_balanced_accuracy"),
        Headline("frame balanced accuracy, leaky frame-level split", "headline.leaky_frame_balanced_accuracy",
                 note="the same patient in training and test: optimistic by design"),
    ),
    "03_few_shot": (
        Headline("few-shot accuracy, {method} at K={k_shot}", "summary.best_few_shot_at_largest_k.mean",
                 ci="summary.best_few_shot_at_largest_k.ci95", note="best method at the largest K, all patients"),
        Headline("5-shot accuracy, {0}, held-out patients", "summary.five_shot_held_out.*.mean",
                 ci="summary.five_shot_held_out.*.ci95"),
        Headline("{recipe}, balanced accuracy with {n_patients} patients per class",
                 "summary.trained_recipe_at_largest_n.balanced_accuracy"),
        Headline("few-shot accuracy, {0}", "leak_demo.*.mean", ci="leak_demo.*.ci95"),
    ),
    "04_cam_explorer": (
        Headline("frame accuracy of the model on this data", "frame_accuracy",
                 note="not a test score when the model was fitted on this data"),
        Headline("share of {0} heat inside the ultrasound sector (median)", "heat_inside_overall_median.*"),
        Headline("frames whose heat lies mostly outside the sector", "frames_mostly_outside_sector"),
        Headline("{0}: correlation of the maps (median)", "agreement_median.*.correlation"),
    ),
}
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "01_data_exploration": ("census.png", "sample_frames.png", "near_duplicates.png"),
    "02_transfer_learning": ("recipes.png", "leaky_vs_honest.png", "roc_videos.png", "confusion_videos.png"),
    "03_few_shot": ("shot_curves.png", "patient_learning_curve.png", "leak_vs_honest.png"),
    "04_cam_explorer": ("gallery.png", "heat_inside_sector.png", "methods_side_by_side.png"),
}
KEY_FIGURES_FALLBACK = 3
PER_NOTEBOOK_PARAMETERS = ("output_dir",)


# ----------------------------------------------------------------------------- headline numbers


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _segment_pattern(segment: str) -> re.Pattern:
    return re.compile("^" + "(.*)".join(re.escape(part) for part in segment.split("*")) + "$", re.DOTALL)


def _matches(tree, key: str) -> list[tuple[object, tuple[str, ...], dict]]:
    """Every (value, texts matched by ``*``, the dict holding the value) that ``key`` reaches in ``tree``."""
    found = []

    def walk(node, segments, captured):
        if not segments:
            return
        if not isinstance(node, dict):
            return
        segment, rest = segments[0], segments[1:]
        if "*" in segment:
            pattern = _segment_pattern(segment)
            candidates = [(name, match.groups()) for name in node if (match := pattern.match(str(name)))]
        else:
            candidates = [(segment, ())] if segment in node else []
        for name, groups in candidates:
            if rest:
                walk(node[name], rest, captured + groups)
            else:
                found.append((node[name], captured + groups, node))

    walk(tree, key.split("."), ())
    return found


def _fill(key: str, captured: tuple[str, ...]) -> list[str]:
    """The segments of a dotted ``key`` with each ``*`` replaced, in order, by the texts in ``captured``."""
    texts, segments = iter(captured), []
    for segment in key.split("."):
        parts = segment.split("*")
        segments.append(parts[0] + "".join(next(texts, "*") + part for part in parts[1:]))
    return segments


def _lookup(tree, key: str | None, captured: tuple[str, ...]):
    """The value at ``key`` with its ``*`` filled in by ``captured``; None when absent."""
    if not key:
        return None
    node = tree
    for segment in _fill(key, captured):
        if not isinstance(node, dict) or segment not in node:
            return None
        node = node[segment]
    return node


def _interval(tree, spec: Headline, captured, value) -> tuple[float, float] | None:
    found = _lookup(tree, spec.ci, captured)
    if isinstance(found, dict) and _is_number(found.get("low")) and _is_number(found.get("high")):
        return float(found["low"]), float(found["high"])
    if _is_number(found) and _is_number(value) and math.isfinite(found) and math.isfinite(value) and found >= 0:
        return float(value) - float(found), float(value) + float(found)
    return None


def _label(template: str, captured: tuple[str, ...], siblings: dict) -> str:
    scalars = {str(k): v for k, v in siblings.items() if isinstance(v, (str, int, float, bool))}
    try:
        return template.format(*captured, **scalars)
    except (IndexError, KeyError, ValueError):
        return template


def format_number(value) -> str:
    """A number as the page shows it: counts whole, rates to three decimals, yes/no for flags."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not _is_number(value):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if isinstance(value, int) or (value.is_integer() and abs(value) >= 10):
        return f"{int(value):,}"
    if abs(value) < 10:
        return f"{value:.3f}"
    return f"{value:,.1f}"


def _entry(label: str, key: str, value, *, interval=None, std=None, note="") -> dict:
    return {"label": label, "key": key, "value": value, "text": format_number(value),
            "interval": None if interval is None else (format_number(interval[0]), format_number(interval[1])),
            "interval_values": interval, "std": None if std is None else format_number(std),
            "note": note}


def _declared_numbers(metrics: dict, notebook: str, entries: list, seen: set) -> None:
    """Append the numbers of the keys :data:`HEADLINES` declares for ``notebook`` (with interval and std)."""
    for spec in HEADLINES.get(notebook, ()):
        for value, captured, siblings in _matches(metrics, spec.key):
            if not (_is_number(value) or isinstance(value, bool)):
                continue
            key = ".".join(_fill(spec.key, captured))
            std = _lookup(metrics, spec.std, captured)
            entries.append(_entry(_label(spec.label, captured, siblings), key, value,
                                  interval=_interval(metrics, spec, captured, value),
                                  std=std if _is_number(std) else None, note=spec.note))
            seen.add(key)


def _headline_block_numbers(metrics: dict, entries: list, seen: set) -> None:
    """Append the numbers of the notebook's own ``headline`` block not already shown (``*_std`` left out)."""
    headline = metrics.get("headline")
    if not isinstance(headline, dict):
        return
    for name, value in headline.items():
        key = f"headline.{name}"
        if key in seen or not _is_number(value) or str(name).endswith("_std"):
            continue
        entries.append(_entry(str(name).replace("_", " "), key, value))
        seen.add(key)


def _fallback_numbers(metrics: dict) -> list[dict]:
    """The first :data:`MAX_FALLBACK_NUMBERS` top-level numbers of a metrics file (not matching FALLBACK_SKIP)."""
    entries = []
    for name, value in metrics.items():
        if _is_number(value) and not FALLBACK_SKIP.search(str(name)) and len(entries) < MAX_FALLBACK_NUMBERS:
            entries.append(_entry(str(name).replace("_", " "), str(name), value))
    return entries


def headline_numbers(metrics, notebook: str) -> list[dict]:
    """The headline numbers of one notebook's metrics (any shape): label, dotted key, value, interval.

    Declared keys of :data:`HEADLINES` first, then the notebook's own ``headline`` block, then, when
    neither gave anything, the top-level numbers of the file.
    """
    if not isinstance(metrics, dict):
        return []
    entries, seen = [], set()
    _declared_numbers(metrics, notebook, entries, seen)
    _headline_block_numbers(metrics, entries, seen)
    return entries or _fallback_numbers(metrics)


# ----------------------------------------------------------------------------- one notebook


def _inside(run_dir: Path, relative) -> Path | None:
    """``run_dir / relative`` when that stays inside the run folder (the manifest is data, not trusted)."""
    if not isinstance(relative, str) or not relative:
        return None
    path = (run_dir / relative).resolve()
    root = run_dir.resolve()
    return path if path == root or root in path.parents else None


def _link(run_dir: Path, relative) -> str | None:
    path = _inside(run_dir, relative)
    return quote(relative) if path is not None and path.is_file() else None


def _read_metrics(path: Path | None) -> tuple[object, str | None]:
    if path is None or not path.is_file():
        return None, "no metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"metrics.json could not be read ({type(error).__name__}: {error})"


def _ordered_figures(folder: Path, metrics) -> tuple[list[str], list[str]]:
    """The figure files of ``folder`` (sorted) and their display order: those ``metrics["figures"]`` lists first."""
    on_disk = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FIGURE_SUFFIXES)
    listed = metrics.get("figures") if isinstance(metrics, dict) else None
    listed = [name for name in listed if name in on_disk] if isinstance(listed, list) else []
    return on_disk, list(dict.fromkeys(listed + on_disk))


def _figures(folder: Path | None, folder_name: str, notebook: str, metrics) -> tuple[list[dict], list[dict], int]:
    """Key figures and the other figures of a notebook's output folder, as relative links."""
    if folder is None or not folder.is_dir():
        return [], [], 0
    on_disk, ordered = _ordered_figures(folder, metrics)
    declared = [name for name in KEY_FIGURES.get(notebook, ()) if name in on_disk]
    key = declared or ordered[:KEY_FIGURES_FALLBACK]
    rest = [name for name in ordered if name not in key]

    def figure(name):
        return {"name": name, "src": quote(f"{folder_name}/{name}"), "caption": Path(name).stem.replace("_", " ")}

    return [figure(n) for n in key], [figure(n) for n in rest[:MAX_EXTRA_FIGURES]], max(0, len(rest) - MAX_EXTRA_FIGURES)


def _duration(seconds) -> str:
    if not _is_number(seconds):
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


MODEL_CARD_HTML = "MODEL_CARD.html"


def model_card_links(run_dir: Path, folder: Path | None, folder_name: str) -> list[str]:
    """Links (relative to the run folder) to the ``MODEL_CARD.html`` of every training run in a
    notebook's folder (the folder itself and its sub-folders one level down)."""
    if folder is None or not folder.is_dir():
        return []
    found = sorted(folder.glob(MODEL_CARD_HTML)) + sorted(folder.glob(f"*/{MODEL_CARD_HTML}"))
    links = [_link(run_dir, f"{folder_name}/{path.relative_to(folder).as_posix()}") for path in found]
    return [link for link in links if link]


def notebook_card(run_dir: Path, record: dict) -> dict:
    """Everything the page shows about one notebook of the manifest."""
    record = record if isinstance(record, dict) else {}
    file_name = str(record.get("notebook") or "notebook")
    name = Path(file_name).stem
    folder_name = record.get("output_dir") if isinstance(record.get("output_dir"), str) else name
    folder = _inside(run_dir, folder_name)
    metrics_rel = record.get("metrics") or f"{folder_name}/metrics.json"
    metrics_path = _inside(run_dir, metrics_rel)
    metrics, metrics_problem = _read_metrics(metrics_path)
    numbers = headline_numbers(metrics, name)
    if metrics is not None and not numbers:
        metrics_problem = "metrics.json holds no numbers to show"
    key_figures, other_figures, more = _figures(folder, folder_name, name, metrics)
    status = str(record.get("status") or "unknown")
    parameters = record.get("parameters") if isinstance(record.get("parameters"), dict) else {}
    return {
        "name": name, "file": file_name, "status": status,
        "status_class": {"ok": "ok", "failed": "failed", "running": "running"}.get(status, "notrun"),
        "seconds": record.get("seconds"), "duration": _duration(record.get("seconds")),
        "error": record.get("error"), "html_error": record.get("html_error"),
        "html": _link(run_dir, record.get("html")), "executed": _link(run_dir, record.get("executed")),
        "metrics_link": _link(run_dir, metrics_rel), "metrics_problem": metrics_problem,
        "numbers": numbers, "synthetic": isinstance(metrics, dict) and metrics.get("synthetic") is True,
        "key_figures": key_figures, "other_figures": other_figures, "more_figures": more,
        "parameters": [(str(k), json.dumps(v, default=str)) for k, v in parameters.items()],
        "model_cards": model_card_links(run_dir, folder, folder_name),
    }


# ----------------------------------------------------------------------------- the page


def _skipped(entries) -> list[tuple[str, str]]:
    rows = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            rows.append((str(entry.get("path", "")), str(entry.get("reason", ""))))
        else:
            rows.append((str(entry), ""))
    return rows


def _shared_parameters(records) -> list[tuple[str, str]]:
    """Parameters that several notebooks take, with one value in all of them (the profile's shared ones), as text."""
    values: dict[str, list] = {}
    for record in records:
        parameters = record.get("parameters") if isinstance(record, dict) else None
        for name, value in (parameters if isinstance(parameters, dict) else {}).items():
            values.setdefault(str(name), []).append(json.dumps(value, default=str, sort_keys=True))
    return [(name, texts[0]) for name, texts in values.items()
            if len(texts) > 1 and len(set(texts)) == 1 and name not in PER_NOTEBOOK_PARAMETERS]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("covnb", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def _dict_field(manifest: dict, name: str) -> dict:
    """``manifest[name]`` when it is a dict, else an empty dict (the manifest is data, not trusted)."""
    value = manifest.get(name)
    return value if isinstance(value, dict) else {}


def _run_fields(manifest: dict) -> dict:
    """The page's run-level texts taken straight from the manifest (profile, status, timing, command ...)."""
    return {
        "profile": str(manifest.get("profile") or "report"),
        "description": manifest.get("description") or "",
        "status": str(manifest.get("status") or "unknown"),
        "duration": _duration(manifest.get("seconds")),
        "started": manifest.get("started_utc") or "",
        "command": manifest.get("command") or "",
        "platform": manifest.get("platform") or "",
        "profile_file": manifest.get("profile_file") or "",
        "seed": manifest.get("seed"),
    }


def _data_fields(data: dict) -> dict:
    """The data block of the page: where the data came from and what was skipped."""
    return {
        "data": {"path": data.get("path"), "synthetic": data.get("synthetic"), "layout": data.get("layout"),
                 "fingerprint": data.get("fingerprint"), "samples": data.get("samples"),
                 "groups": data.get("groups"), "error": data.get("error")},
        "skipped": _skipped(data.get("skipped")),
    }


def render_index(run_dir: str | Path, manifest: dict) -> str:
    """``index.html`` of a run folder as text (see the module docstring for what it shows)."""
    run_dir = Path(run_dir)
    manifest = manifest if isinstance(manifest, dict) else {}
    data = _dict_field(manifest, "data")
    cards = [notebook_card(run_dir, record) for record in manifest.get("notebooks") or []]
    versions = _dict_field(manifest, "versions")
    counts = {status: sum(card["status"] == status for card in cards) for status in ("ok", "failed", "not run")}
    context = {
        **_run_fields(manifest),
        "synthetic": data.get("synthetic") is True or any(card["synthetic"] for card in cards),
        **_data_fields(data),
        "shared_parameters": _shared_parameters(manifest.get("notebooks") or []),
        "versions": [(str(k), "" if v is None else str(v)) for k, v in versions.items()],
        "cards": cards, "counts": counts,
        "model_cards": [(card["name"], link) for card in cards for link in card["model_cards"]],
        "manifest_link": _link(run_dir, "manifest.json"),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return _environment().get_template(TEMPLATE).render(**context)


def write_index(run_dir: str | Path, manifest: dict) -> Path:
    """Render and write ``<run_dir>/index.html`` atomically; returns its path."""
    run_dir = Path(run_dir)
    page = render_index(run_dir, manifest)
    target = run_dir / "index.html"
    tmp = run_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target
