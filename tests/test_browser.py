"""covnb in a real browser (headless Debian Chromium driven by Playwright).

- The CAM explorer: JupyterLab on 127.0.0.1, run the notebook, move the frame slider, and check
  that the image changes.
- The report a user opens: ``covnb report --profile smoke`` with a relative ``--out`` (the session's one
  phantom smoke run, ``phantom_smoke_report`` in tests/conftest.py), then its
  index.html and a notebook page opened from disk with every network request refused: no broken
  image, math typeset by the MathJax inside the run folder. Screenshots are written inside the
  test's own temporary folder, and also kept in ``$COVNB_SCREENSHOT_DIR`` when it is set.

Skips cleanly when /usr/bin/chromium or Playwright is missing (``.ci/run`` installs chromium).
Recipe: /work/shared/docs/conventions.md, "Browser tests".
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _keep_screenshots(shots: dict[str, Path]) -> None:
    """Copy screenshots to ``$COVNB_SCREENSHOT_DIR`` when it is set (nothing is written outside tmp_path otherwise)."""
    folder = os.environ.get("COVNB_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name, shot in shots.items():
            shutil.copyfile(shot, Path(folder) / f"{name}.png")
LAPTOP = {"width": 1366, "height": 900}

SETUP_CELL = '''
%matplotlib inline
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import keras
from covnb.phantom import make_clip
from covnb.widgets import CamExplorer

keras.utils.set_random_seed(0)
classes = ["covid", "pneumonia", "regular"]
inputs = keras.Input((64, 64, 3), name="image")
x = keras.layers.Rescaling(1 / 255.0)(inputs)
x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
x = keras.layers.MaxPooling2D()(x)
x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
logits = keras.layers.Dense(3, name="logits")(x)
model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits))
rng = np.random.default_rng(0)
samples = {label: np.repeat(make_clip(label, rng, n_frames=6, size=96)[..., None], 3, axis=-1) for label in classes}
'''

EXPLORER_CELL = '''
import matplotlib.pyplot as plt
from IPython.display import display

explorer = CamExplorer(model, samples, classes, out_dir="explorer_out", display_width=320)
display(explorer.widget)
figure = explorer.static_figure()  # the static view, so a saved copy is never blank
display(figure)
plt.close(figure)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def _write_settings(folder: Path) -> None:
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
    }
    for relative, values in settings.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on a free port of 127.0.0.1 with a random token; stopped by PID."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("jupyterlab")
    root, config, settings, runtime = (tmp_path / name for name in ("root", "config", "settings", "runtime"))
    for folder in (root, config, settings, runtime):
        folder.mkdir()
    _write_settings(settings)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SETUP_CELL.strip()),
                                               nbformat.v4.new_code_cell(EXPLORER_CELL.strip())],
                                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    nbformat.write(notebook, root / "explorer.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTER_RUNTIME_DIR=str(runtime), IPYTHONDIR=str(tmp_path / "ipython"),
               TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}: {(tmp_path / 'jupyter.log').read_text()[-2000:]}")
            try:
                _get_json(f"{base}/api/status?token={token}")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not answer /api/status within 60 s")
                time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "log": tmp_path / "jupyter.log"}
    finally:
        try:  # shut the kernels down cleanly, then stop the server by its PID
            for kernel in _get_json(f"{base}/api/kernels?token={token}"):
                request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
                urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, OSError, ValueError):
            pass
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def _wait_for_connected_idle_kernel(page, base, token, timeout=120.0):
    """Poll /api/kernels until a kernel is idle with a browser connection (accept a kernel dialog)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept = page.locator(".jp-Dialog-button.jp-mod-accept")
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        try:
            kernels = _get_json(f"{base}/api/kernels?token={token}")
        except (urllib.error.URLError, OSError, ValueError):  # answers 500 while a kernel starts: retry
            kernels = []
        if any(k.get("execution_state") == "idle" and k.get("connections", 0) > 0 for k in kernels):
            return
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel with a connection after {timeout} s")


PIXELS_JS = """
(image) => {
  if (!image.complete || image.naturalWidth === 0) return null;
  const canvas = document.createElement('canvas');
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const step = Math.max(4, Math.floor(data.length / 4 / 4096) * 4);
  const sample = [];
  for (let i = 0; i < data.length; i += step) sample.push(data[i], data[i + 1], data[i + 2]);
  return {width: canvas.width, height: canvas.height, sample: sample};
}
"""


def _pixels(image):
    for _ in range(100):
        pixels = image.evaluate(PIXELS_JS)
        if pixels is not None:
            return pixels
        time.sleep(0.1)
    raise AssertionError("the explorer image never finished loading")


def test_explorer_in_jupyterlab_with_chromium(jupyter_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token = jupyter_lab["base"], jupyter_lab["token"]
    screenshot = tmp_path / "covnb_browser.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(f"{base}/lab/tree/explorer.ipynb?reset&token={token}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            _wait_for_connected_idle_kernel(page, base, token)
            page.wait_for_function("() => window.jupyterapp !== undefined", timeout=30_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            image = page.locator("img.covnb-image")
            image.wait_for(state="visible", timeout=180_000)
            before = _pixels(image)
            assert before["width"] == 96 and before["height"] == 96  # shown at the frame's own size
            assert len(set(before["sample"])) > 10  # a real picture, not a blank
            readout = page.locator(".covnb-frame .widget-readout")
            assert readout.inner_text().strip() == "0"
            # The static figure of the same cell is there too (a saved copy is never blank): an image
            # output of the cell itself, not the probability plot inside the explorer's Output widget.
            page.wait_for_function("() => [...document.querySelectorAll('.jp-RenderedImage img')].some("
                                   "img => !img.closest('.covnb-cam-explorer') && img.naturalWidth > 400)",
                                   timeout=60_000)

            handle = page.locator(".covnb-frame .noUi-handle")
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => document.querySelector('.covnb-frame .widget-readout').textContent.trim() === '1'",
                                   timeout=30_000)
            deadline = time.monotonic() + 60
            after = _pixels(image)
            while after["sample"] == before["sample"] and time.monotonic() < deadline:
                time.sleep(0.25)
                after = _pixels(image)
            assert after["sample"] != before["sample"], "the explorer image did not change after moving the slider"
            changed = sum(a != b for a, b in zip(before["sample"], after["sample"])) / len(before["sample"])
            assert changed > 0.05
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    _keep_screenshots({"explorer": screenshot})


# ----------------------------------------------------------------------------- the report pages

IMAGES_JS = "() => [...document.images].map(i => ({src: i.src.slice(0, 120), ok: i.complete && i.naturalWidth > 0}))"
RAW_MATH_JS = """() => [...document.querySelectorAll('.jp-MarkdownCell .jp-RenderedMarkdown')]
    .flatMap(cell => cell.innerText.match(/\\$[^$\\n]+\\$/g) || [])"""
MATH_READY_JS = ("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue && MathJax.Hub.queue.pending === 0"
                 " && document.querySelectorAll('.MathJax, .MathJax_Display').length > 0")


@pytest.fixture(scope="module")
def smoke_report(request):
    """``covnb report --profile smoke --out "my runs"`` as a user types it, from a folder of their own: the
    session's one phantom smoke run (tests/conftest.py), shared with tests/test_notebooks.py and only read."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    report = request.getfixturevalue("phantom_smoke_report")
    (run_dir,) = [p for p in report["out"].iterdir() if p.is_dir()]
    return report["code"], run_dir


def _offline(page) -> list:
    """Refuse every request that is not a file of the run folder; returns the list of refused URLs."""
    refused = []

    def route(route_):
        if route_.request.url.startswith("file:"):
            route_.continue_()
        else:
            refused.append(route_.request.url)
            route_.abort()

    page.route("**/*", route)
    return refused


def _assert_images_render(page) -> int:
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    images = page.evaluate(IMAGES_JS)
    broken = [image["src"] for image in images if not image["ok"]]
    assert broken == [], f"broken images: {broken}"
    return len(images)


def test_report_index_and_notebook_page_render_offline(smoke_report, tmp_path):
    from playwright.sync_api import sync_playwright

    code, run_dir = smoke_report
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert code == 0 and manifest["status"] == "ok"
    math_page = run_dir / "04_cam_explorer.html"
    assert "mathjax/MathJax.js" in math_page.read_text() and (run_dir / "mathjax" / "MathJax.js").is_file()
    shots = {"index": tmp_path / "index.png", "notebook": tmp_path / "notebook.png"}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=LAPTOP)
            _offline(page)
            page.goto((run_dir / "index.html").as_uri(), wait_until="load")
            assert page.locator("section[data-notebook]").count() == len(manifest["notebooks"])
            assert page.locator("section[data-status='ok']").count() == len(manifest["notebooks"])
            assert page.locator("#synthetic-warning").is_visible()
            assert page.locator(".number").count() >= 4 * 3  # headline numbers of every notebook
            assert page.locator("section[data-notebook] .figures:not(.small) img").count() >= 4 * 2
            assert _assert_images_render(page) >= 8
            # the page fits a laptop screen: nothing wider than the window
            assert page.evaluate("() => document.documentElement.scrollWidth") <= LAPTOP["width"]
            page.screenshot(path=str(shots["index"]), full_page=True)

            page.goto(math_page.as_uri(), wait_until="load")
            page.wait_for_function(MATH_READY_JS, timeout=60_000)
            assert page.evaluate(RAW_MATH_JS) == []
            assert page.locator(".MathJax").count() >= 3
            fonts = page.evaluate("() => [...document.fonts].filter(f => f.status === 'loaded').map(f => f.family)")
            assert any(family.startswith("STIXMathJax") for family in fonts), fonts  # MathJax's own fonts
            _assert_images_render(page)
            page.evaluate("() => { document.querySelector('.MathJax').closest('.jp-Cell').scrollIntoView();"
                          " window.scrollBy(0, -40); }")
            page.screenshot(path=str(shots["notebook"]))
        finally:
            browser.close()
    for name, shot in shots.items():
        assert shot.stat().st_size > 20_000
    _keep_screenshots(shots)
