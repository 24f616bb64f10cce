"""Real-browser tests: headless Chromium (playwright) against JupyterLab on 127.0.0.1 and the static report.

They skip, saying why, where Chromium or the playwright package is missing (``.ci/browser-setup.sh``
installs Debian's chromium; ``NSLAB_CHROMIUM`` names another binary). **With the environment
variable CI set, such a skip fails the run** (:func:`pytest_runtest_makereport` below): on CI a
browser test that did not run is a failure, not a pass.

Screenshots go to ``$NSLAB_SCREENSHOTS`` (else a temporary folder); each test prints where.
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

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(TESTS)  # not imported from nslab: this file stays cheap to load (test_ci_rule copies it)
sys.path.insert(0, TESTS)  # the helpers of tests/ (fake_runs) for the tests here, wherever pytest was started

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped browser test is reported as failed, with the reason it skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("browser") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"browser test skipped while CI is set (on CI every browser test must run): {reason}"


@pytest.fixture(scope="session")
def chromium() -> str:
    path = os.environ.get("NSLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"no Chromium found ({path or 'none on PATH'}): install Debian's chromium (apt-get install -y "
                    "chromium; see .ci/browser-setup.sh) or set NSLAB_CHROMIUM to a Chromium binary")
    return path


@pytest.fixture(scope="session")
def browser(chromium):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: pip install playwright (no browser download needed)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> str:
    """Where screenshots go."""
    folder = os.environ.get("NSLAB_SCREENSHOTS") or str(tmp_path_factory.mktemp("screenshots"))
    os.makedirs(folder, exist_ok=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server: ``url``, the folder it serves (``root``), and its REST API for kernels."""

    def __init__(self, url: str, root: str):
        self.url, self.root = url, root

    def kernels(self) -> list[dict]:
        return json.load(urllib.request.urlopen(f"{self.url}/api/kernels", timeout=10))

    def shutdown_kernels(self) -> None:
        for k in self.kernels():
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/kernels/{k['id']}", method="DELETE"),
                                   timeout=30)


@pytest.fixture(scope="session")
def lab(tmp_path_factory, browser):
    """JupyterLab on 127.0.0.1 with an empty token, serving an empty folder; its kernels put this checkout first."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    # A private config dir: the announcements pop-up off, nothing read from or written to the user's settings.
    config = base / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "PYTHONPATH": path}
    env.pop("NSLAB_DATA_DIR", None)
    port = _free_port()
    log = open(base / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
                             f"--port={port}", "--ServerApp.token=", "--ServerApp.password=",
                             "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(base / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield Lab(url, str(root))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def sweep(data_dir, tmp_path_factory) -> str:
    """A small recorded sweep: none vs spectral on a 2x16 MLP, 3 epochs, spectra every epoch (real training)."""
    from nslab import train
    from nslab.config import RunConfig

    out = str(tmp_path_factory.mktemp("browser") / "sweep")
    for method in ("none", "spectral"):
        train(RunConfig(model="mlp", depth=2, width=16, epochs=3, batch_size=64, data_dir=data_dir, out_dir=out,
                        device="cpu", spectra_every=1, checkpoint_every=1, method=method), log=lambda _: None)
    return out
