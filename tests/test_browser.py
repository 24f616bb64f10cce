"""Real-browser checks in headless Chromium (playwright): the dashboard in JupyterLab, and the static report.

Both skip, saying why, when Chromium or the playwright package is missing (``.ci/browser-setup.sh``
installs Debian's chromium and playwright). Set ``NSLAB_CHROMIUM`` to use another Chromium binary.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from nslab import report, train
from nslab.config import RunConfig

pytestmark = pytest.mark.browser

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "02_dashboard.ipynb")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SPECTRUM_TITLE = "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].map(e => e.textContent)" \
                 ".find(t => t.startsWith('singular values')) || ''"


@pytest.fixture(scope="module")
def browser():
    chromium = os.environ.get("NSLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium or not os.access(chromium, os.X_OK):
        pytest.skip(f"no Chromium found ({chromium or 'none on PATH'}): install Debian's chromium (apt-get install -y "
                    "chromium; see .ci/browser-setup.sh) or set NSLAB_CHROMIUM to a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: pip install playwright (no browser download needed)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory) -> str:
    """A small recorded sweep: none vs spectral, 3 epochs, spectra every epoch."""
    out = str(tmp_path_factory.mktemp("browser") / "sweep")
    for method in ("none", "spectral"):
        train(RunConfig(model="mlp", depth=2, width=16, epochs=3, batch_size=64, data_dir=data_dir, out_dir=out,
                        device="cpu", spectra_every=1, checkpoint_every=1, method=method), log=lambda _: None)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, sweep):
    """JupyterLab on 127.0.0.1 with an empty token, serving a copy of the dashboard pointed at ``sweep``."""
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += f"\nsweep_dir = {sweep!r}\nroot = {os.path.dirname(sweep)!r}"
    nbformat.write(nb, root / "dashboard_copy.ipynb")
    # A private config dir: the announcements pop-up off, nothing read from or written to the user's settings.
    config = tmp_path / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    port = _free_port()
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
                             f"--port={port}", "--ServerApp.token=", "--ServerApp.password=",
                             f"--ServerApp.root_dir={root}"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _spectrum_y(page) -> list:
    return page.evaluate("""() => {
        const gd = [...document.querySelectorAll('.js-plotly-plot')].find(
            g => (g.querySelector('.gtitle') || {}).textContent?.startsWith('singular values'));
        // _fullData: the arrays plotly.js decoded (data may still hold base64 for arrays sent from Python)
        return gd._fullData.filter(t => t.meta && t.meta.role === 'spectrum').map(t => Array.from(t.y));
    }""")


def _accept_kernel_dialog(page, seconds: float = 8) -> None:
    """A fresh JupyterLab may ask, a moment after opening a notebook, which kernel to start: take its default."""
    try:
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=seconds * 1000)
    except Exception:  # no dialog came: nothing to do
        return
    page.click(".jp-Dialog .jp-mod-accept")
    page.wait_for_selector(".jp-Dialog", state="detached", timeout=10_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def test_dashboard_in_jupyterlab(browser, lab, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{lab}/lab/tree/dashboard_copy.ipynb?reset")
    try:
        page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        _accept_kernel_dialog(page)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_function(f"({SPECTRUM_TITLE})() === 'singular values of 1.weight at epoch 0'", timeout=120_000)
        before = _spectrum_y(page)
        handle = page.locator(".widget-slider .noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"({SPECTRUM_TITLE})() === 'singular values of 1.weight at epoch 1'", timeout=30_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "dashboard-failed.png"))
        print(f"\nscreenshot of the failure: {tmp_path / 'dashboard-failed.png'}; console errors: {errors}")
        raise
    after = _spectrum_y(page)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    print(f"\ndashboard screenshot: {shot}; spectrum traces {len(after)}; console errors: {errors}")
    assert len(before) == len(after) == 2 and all(len(y) == 16 for y in after)
    assert all(a != b for a, b in zip(after, before))
    assert shot.stat().st_size > 10_000
    page.close()


def test_static_report_offline(browser, sweep, tmp_path):
    path = report.write_report(sweep, str(tmp_path / "report.html"))
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    fetched = []

    def only_files(route):  # no network: anything but the file itself is refused and recorded
        if route.request.url.startswith("file://"):
            return route.continue_()
        fetched.append(route.request.url)
        return route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"file://{os.path.abspath(path)}")
    first = page.locator(".js-plotly-plot").first
    first.wait_for(timeout=30_000)
    title = lambda: page.evaluate("() => document.querySelector('.js-plotly-plot .gtitle').textContent")  # noqa: E731
    y = lambda: page.evaluate("() => Array.from(document.querySelector('.js-plotly-plot')._fullData[0].y)")  # noqa: E731
    assert title() == "singular values of 1.weight at epoch 0"
    y0 = y()
    rail = first.locator(".slider-rail-touch-rect").first
    box = rail.bounding_box()
    page.mouse.click(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)  # the last step
    page.wait_for_function("() => document.querySelector('.js-plotly-plot .gtitle').textContent"
                           " === 'singular values of 1.weight at epoch 3'", timeout=10_000)
    assert y() != y0
    page.screenshot(path=str(tmp_path / "report.png"))
    print(f"\nreport screenshot: {tmp_path / 'report.png'}; requests refused: {fetched}; page errors: {errors}")
    assert fetched == [] and errors == []
    context.close()
