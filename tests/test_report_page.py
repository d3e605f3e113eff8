"""index.html of a report run (covnb.report_page) and the offline MathJax of the notebook pages."""

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import nbformat
import numpy as np
import pytest

from covnb.notebook_html import MATHJAX_FOLDER, copy_mathjax, folder_size, mathjax_source
from covnb.report_page import format_number, headline_numbers, render_index, write_index

TRANSFER_METRICS = {
    "notebook": "02_transfer_learning", "synthetic": True,
    "headline": {"video_balanced_accuracy": 0.8125, "video_balanced_accuracy_std": 0.041,
                 "video_covid_sensitivity": 0.7, "video_covid_specificity": 0.95, "video_macro_auc": 0.91,
                 "frame_balanced_accuracy": 0.78, "leaky_frame_balanced_accuracy": 0.99,
                 "source_held_out_balanced_accuracy": 0.64},
    "honest": {"video_mean": {"bootstrap_95ci": {
        "balanced_accuracy": {"estimate": 0.8, "low": 0.7, "high": 0.9, "n_boot": 200},
        "covid_sensitivity": {"estimate": 0.7, "low": 0.45, "high": 0.93},
        "macro_auc": {"estimate": 0.9, "low": 0.84, "high": 0.96}}}},
    "figures": ["recipes.png", "roc_videos.png"],
}
EXPLORATION_METRICS = {"synthetic": True, "samples": 27, "groups": 12, "frames": 123, "skipped": 1,
                       "audit_frame_level_split": {"ok": False, "shared_groups": 12},
                       "audit_patient_split": {"ok": True, "shared_groups": 0}, "runtime_s": 8.5}
FEW_SHOT_METRICS = {"leak_demo": {"k_shot": 2, "leaky: frames, patients may repeat": {"mean": 0.99, "ci95": 0.01},
                                  "honest: patient-disjoint": {"mean": 0.81, "ci95": 0.05}},
                    "summary": {"five_shot_held_out": {}, "best_few_shot_at_largest_k":
                                {"k_shot": 3, "method": "knn", "mean": 0.75, "ci95": 0.04}}}
HOSTILE = '<script>alert("x")</script> & "quoted" \'.mp4'


class _Page(HTMLParser):
    """Links, images, headline numbers and notebook sections of a rendered page."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.numbers, self.sections, self.text = [], [], [], {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])
        if "data-key" in attrs:
            self.numbers.append((attrs["data-key"], attrs["data-value"]))
        if tag == "section" and "data-notebook" in attrs:
            self.sections[attrs["data-notebook"]] = attrs["data-status"]

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.text = " ".join(" ".join(parser.text).split())
    return parser


def dig(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def write_png(path: Path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def record(name, status="ok", seconds=12.5, **extra):
    return {"notebook": f"{name}.ipynb", "parameters": {"seed": 0, "image_size": 64}, "status": status,
            "seconds": seconds, "executed": f"{name}.ipynb", "html": f"{name}.html", "output_dir": name,
            "metrics": f"{name}/metrics.json" if status == "ok" else None, **extra}


@pytest.fixture
def run(tmp_path):
    """A run folder as run_report leaves it: two notebooks ok, one failed, one not run."""
    run_dir = tmp_path / "sample-20260101T000000Z"
    run_dir.mkdir()
    for name, metrics in (("01_data_exploration", EXPLORATION_METRICS), ("02_transfer_learning", TRANSFER_METRICS)):
        (run_dir / name).mkdir()
        (run_dir / name / "metrics.json").write_text(json.dumps(metrics))
        (run_dir / f"{name}.ipynb").write_text("{}")
        (run_dir / f"{name}.html").write_text("<html></html>")
    for index, figure in enumerate(["census.png", "sample_frames.png", "extra one.png"]):
        write_png(run_dir / "01_data_exploration" / figure, index)
    for index, figure in enumerate(["recipes.png", "roc_videos.png", "leaky_vs_honest.png", "frozen_features.png"]):
        write_png(run_dir / "02_transfer_learning" / figure, index)
    (run_dir / "03_few_shot").mkdir()
    (run_dir / "03_few_shot.ipynb").write_text("{}")
    (run_dir / "03_few_shot.html").write_text("<html></html>")
    (run_dir / "04_cam_explorer").mkdir()
    manifest = {
        "profile": "sample", "description": "the phantom", "status": "failed", "seconds": 98.2, "seed": 0,
        "started_utc": "2026-01-01T00:00:00+00:00", "command": "covnb report", "platform": "Linux",
        "versions": {"python": "3.11.7", "covnb": "0.1.0", "tensorflow": "2.21.0", "ipywidgets": None},
        "data": {"path": "/cache/phantom", "layout": "pocus", "synthetic": True, "fingerprint": "f9014e4e8efca330",
                 "samples": 27, "groups": 12, "skipped": [{"path": f"/data/{HOSTILE}", "reason": "zero bytes <b>"}]},
        "notebooks": [record("01_data_exploration"), record("02_transfer_learning", seconds=75.0),
                      record("03_few_shot", "failed", 3.1, error="ValueError: shots must be <= 5 & positive"),
                      record("04_cam_explorer", "not run", None)],
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir, manifest


def test_every_notebook_is_listed_with_its_status_time_and_error(run):
    run_dir, manifest = run
    page = parse(render_index(run_dir, manifest))
    assert page.sections == {"01_data_exploration": "ok", "02_transfer_learning": "ok", "03_few_shot": "failed",
                             "04_cam_explorer": "not run"}
    assert "1 min 15 s" in page.text and "12.5 s" in page.text and "1 min 38 s" in page.text
    assert "ValueError: shots must be <= 5 & positive" in page.text
    assert "03_few_shot.html" in page.links  # the failed notebook's traceback is one click away
    assert "04_cam_explorer.html" not in page.links  # never run: no dead link
    assert "f9014e4e8efca330" in page.text and "3.11.7" in page.text and "2.21.0" in page.text
    assert "SYNTHETIC" in page.text


def test_headline_numbers_equal_the_metrics_json_values(run):
    run_dir, manifest = run
    page = parse(render_index(run_dir, manifest))
    shown = dict(page.numbers)
    metrics = {"01_data_exploration": EXPLORATION_METRICS, "02_transfer_learning": TRANSFER_METRICS}
    assert "headline.video_balanced_accuracy" in shown and "samples" in shown
    assert "headline.source_held_out_balanced_accuracy" in shown  # the notebook's own headline block
    for key, value in page.numbers:
        source = TRANSFER_METRICS if key.startswith("headline.") else EXPLORATION_METRICS
        assert json.loads(value) == dig(source, key), key
    assert len(page.numbers) == len(headline_numbers(metrics["01_data_exploration"], "01_data_exploration")) + len(
        headline_numbers(metrics["02_transfer_learning"], "02_transfer_learning"))
    assert "95% CI 0.700 – 0.900" in page.text and "± 0.041 sd over folds" in page.text
    assert "runtime_s" not in shown


def test_headline_intervals_and_labels_follow_the_declared_keys():
    numbers = {n["key"]: n for n in headline_numbers(TRANSFER_METRICS, "02_transfer_learning")}
    assert numbers["headline.video_covid_sensitivity"]["label"] == "covid sensitivity, videos"
    assert numbers["headline.video_covid_sensitivity"]["interval_values"] == (0.45, 0.93)
    assert numbers["headline.video_covid_specificity"]["interval_values"] is None  # no bootstrap given
    few_shot = {n["key"]: n for n in headline_numbers(FEW_SHOT_METRICS, "03_few_shot")}
    best = few_shot["summary.best_few_shot_at_largest_k.mean"]
    assert best["label"] == "few-shot accuracy, knn at K=3" and best["interval_values"] == pytest.approx((0.71, 0.79))
    assert few_shot["leak_demo.honest: patient-disjoint.mean"]["value"] == 0.81


@pytest.mark.parametrize("metrics, expected", [
    ({"accuracy": 0.5, "n": 3, "flag": True, "nested": {"x": 1}, "seconds": 4.0, "runtime_s": 2.0},
     {"accuracy": 0.5, "n": 3}),
    ([1, 2, 3], {}),
    ("text", {}),
    ({}, {}),
])
def test_unknown_notebooks_fall_back_to_their_top_level_numbers(metrics, expected):
    assert {n["key"]: n["value"] for n in headline_numbers(metrics, "99_new_notebook")} == expected


def test_page_renders_when_metrics_are_missing_garbled_or_odd(run):
    run_dir, manifest = run
    (run_dir / "01_data_exploration" / "metrics.json").write_text("{not json")
    (run_dir / "02_transfer_learning" / "metrics.json").write_text(json.dumps(
        {"headline": {"video_balanced_accuracy": float("nan"), "odd": "text"}, "figures": "not a list"}))
    manifest["notebooks"].append({"notebook": "05_broken.ipynb"})  # a record with almost nothing in it
    manifest["notebooks"].append("not even a record")
    manifest["data"] = {"path": None, "error": "FileNotFoundError: no such folder"}
    page = parse(render_index(run_dir, manifest))
    assert "metrics.json could not be read" in page.text
    assert "FileNotFoundError: no such folder" in page.text
    assert dict(page.numbers) == {"headline.video_balanced_accuracy": "NaN"}
    assert "n/a" in page.text
    assert set(page.sections) >= {"01_data_exploration", "02_transfer_learning", "05_broken"}
    assert "SYNTHETIC" not in page.text  # data not known to be synthetic, metrics unreadable
    assert parse(render_index(run_dir, {})).sections == {}  # even an empty manifest renders


def test_links_and_thumbnails_resolve_to_files_in_the_run_folder(run):
    run_dir, manifest = run
    write_index(run_dir, manifest)
    page = parse((run_dir / "index.html").read_text())
    targets = [urlsplit(link).path for link in page.links + page.images if not link.startswith("#")]
    assert targets and all(not urlsplit(t).scheme and not t.startswith("/") for t in targets)
    missing = [t for t in targets if not (run_dir / unquote(t)).is_file()]
    assert missing == []
    assert "02_transfer_learning/recipes.png" in page.images
    assert "01_data_exploration/extra%20one.png" in page.images  # the other figures, behind "more figures"
    assert "manifest.json" in page.links and "02_transfer_learning/metrics.json" in page.links


def test_hostile_file_names_are_escaped(run):
    run_dir, manifest = run
    evil_figure = 'x"><img src=y onerror=alert(1)>.png'
    write_png(run_dir / "02_transfer_learning" / evil_figure)
    html_text = render_index(run_dir, manifest)
    assert "<script" not in html_text.lower() and "<img src=y" not in html_text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;quoted&#34; &#39;.mp4" in html_text
    assert "zero bytes &lt;b&gt;" in html_text
    page = parse(html_text)
    assert f"/data/{HOSTILE}" in page.text
    assert any(unquote(src) == f"02_transfer_learning/{evil_figure}" for src in page.images)


def test_manifest_paths_outside_the_run_folder_are_not_linked(run):
    run_dir, manifest = run
    (run_dir.parent / "secret.html").write_text("x")
    manifest["notebooks"][0]["html"] = "../secret.html"
    manifest["notebooks"][0]["output_dir"] = ".."
    page = parse(render_index(run_dir, manifest))
    assert not any(".." in link for link in page.links + page.images)


def test_write_index_replaces_the_page_atomically(run):
    run_dir, manifest = run
    (run_dir / "index.html").write_text("old")
    path = write_index(run_dir, manifest)
    assert path == run_dir / "index.html" and path.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_numbers_are_formatted_for_reading():
    assert [format_number(v) for v in (0.80412, 27, 1234.0, True, False, float("nan"), 12.345)] == [
        "0.804", "27", "1,234", "yes", "no", "n/a", "12.3"]
    assert math.isnan(json.loads("NaN"))


def test_mathjax_is_copied_once_small_and_without_unused_parts(tmp_path):
    if mathjax_source() is None:
        pytest.skip("jupyter-server-mathjax is not installed")
    url = copy_mathjax(tmp_path)
    assert url.startswith(f"{MATHJAX_FOLDER}/MathJax.js?config=")
    folder = tmp_path / MATHJAX_FOLDER
    assert (folder / "MathJax.js").is_file() and (folder / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    assert any((folder / "fonts" / "HTML-CSS" / "STIX-Web" / "woff").glob("*.woff"))
    assert not (folder / "localization").exists() and not (folder / "extensions" / "a11y").exists()
    assert folder_size(folder) < 3_500_000
    before = (folder / "MathJax.js").stat().st_mtime_ns
    assert copy_mathjax(tmp_path) == url and (folder / "MathJax.js").stat().st_mtime_ns == before
    assert [p.name for p in tmp_path.iterdir()] == [MATHJAX_FOLDER]


def test_shared_parameters_are_listed_once(run):
    run_dir, manifest = run
    manifest["notebooks"][1]["parameters"]["image_size"] = 224
    manifest["notebooks"][1]["parameters"]["epochs"] = 5
    shared = parse(render_index(run_dir, manifest)).text.split("Parameters")[-1]
    assert "seed 0" in shared
    assert "image_size" not in shared  # differs between notebooks
    assert "epochs" not in shared  # one notebook's own


FIGURE_BODY = ("import json, pathlib\n"
               "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
               "figure, axis = plt.subplots(figsize=(2, 2))\naxis.plot([0, 1], [0, steps])\n"
               "figure.savefig(pathlib.Path(output_dir, 'curve.png'))\n"
               "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps({'accuracy': 0.75, 'steps': steps}))\n")


def test_a_report_run_writes_the_page_and_offline_math(tmp_path, monkeypatch):
    from test_report import GOOD_PARAMS, make_notebook

    from covnb.report import plan_report, run_report

    notebook = make_notebook(tmp_path / "maths.ipynb", FIGURE_BODY, GOOD_PARAMS)
    nb = nbformat.read(str(notebook), as_version=4)
    nb.cells[0].source = "# Maths\nThe weight $\\alpha_k^c$ of map $A_k$:\n$$L = \\sum_k \\alpha_k^c A_k$$"
    nbformat.write(nb, str(notebook))
    profile = tmp_path / "maths.yaml"
    profile.write_text(f"name: maths\ndata: {tmp_path}\ntimeout: 120\nnotebooks:\n  - path: {notebook}\n")
    monkeypatch.chdir(tmp_path)
    run_dir, manifest = run_report(plan_report(str(profile)), out="runs", progress=False, log=lambda *_: None)
    assert manifest["status"] == "ok"
    page = parse((run_dir / "index.html").read_text())
    assert page.sections == {"maths": "ok"} and dict(page.numbers) == {"accuracy": "0.75", "steps": "3"}
    assert page.images == ["maths/curve.png"]
    assert all((run_dir / unquote(urlsplit(link).path)).is_file() for link in page.links if not link.startswith("#"))
    notebook_page = (run_dir / "maths.html").read_text()
    if mathjax_source() is not None:
        assert 'src="mathjax/MathJax.js?config=' in notebook_page and "mathjax/2.7" not in notebook_page
        assert (run_dir / MATHJAX_FOLDER / "MathJax.js").is_file()
    assert "$A_k$" in notebook_page  # left for MathJax to typeset in the browser (tests/test_browser.py)


def test_model_cards_of_a_notebooks_runs_are_linked_from_the_page(run):
    run_dir, manifest = run
    (run_dir / "05_trust" / "fold run").mkdir(parents=True)
    (run_dir / "05_trust" / "MODEL_CARD.html").write_text("<html>card</html>")
    (run_dir / "05_trust" / "fold run" / "MODEL_CARD.html").write_text("<html>card 2</html>")
    (run_dir / "05_trust" / "MODEL_CARD.md").write_text("# card")
    manifest = {**manifest, "notebooks": manifest["notebooks"] + [record("05_trust")]}
    write_index(run_dir, manifest)
    page = parse((run_dir / "index.html").read_text())
    cards = [link for link in page.links if link.endswith("MODEL_CARD.html")]
    # each linked twice: in the notebook's card and in the list under the table of contents
    assert sorted(set(cards)) == ["05_trust/MODEL_CARD.html", "05_trust/fold%20run/MODEL_CARD.html"]
    assert len(cards) == 4 and all((run_dir / unquote(link)).is_file() for link in cards)
    assert not any("MODEL_CARD" in link for link in parse(render_index(run_dir, {**manifest, "notebooks":
                                                                           manifest["notebooks"][:2]})).links)
