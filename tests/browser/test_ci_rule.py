"""With CI set, a skipped browser test fails the run (the hook in this folder's conftest), in a pytest subprocess."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    folder = tmp_path / ("ci" if ci else "local")
    folder.mkdir()
    shutil.copy(os.path.join(HERE, "conftest.py"), folder / "conftest.py")
    (folder / "test_skips.py").write_text(
        "import pytest\n\n@pytest.mark.browser\ndef test_needs_a_browser():\n    pytest.skip('no Chromium here')\n\n"
        "def test_plain_skip():\n    pytest.skip('not a browser test')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "markers=browser",
                           str(folder)], capture_output=True, text=True, env=env, cwd=str(folder), timeout=120)


def test_a_skipped_browser_test_fails_under_ci(tmp_path):
    local = _run(tmp_path, ci=False)
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout
    ci = _run(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout
    assert "1 failed, 1 skipped" in ci.stdout and "browser test skipped while CI is set" in ci.stdout
    assert "no Chromium here" in ci.stdout
