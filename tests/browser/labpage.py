"""Driving JupyterLab and plotly from playwright: open a notebook, Run All, read figures, take screenshots."""
from __future__ import annotations

import contextlib
import os
import shutil
import time

import nbformat

# Every plotly figure on the page: its title, the box of its SVG, and the box of the output it sits in.
FIGURE_BOXES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
    const svg = gd.querySelector('svg.main-svg').getBoundingClientRect();
    const cell = (gd.closest('.jp-OutputArea-output') || gd.closest('.jp-Cell')).getBoundingClientRect();
    return {title: (gd.querySelector('.gtitle') || {}).textContent || '', left: svg.left, right: svg.right,
            width: svg.width, cell_left: cell.left, cell_right: cell.right, cell_width: cell.width};
})"""


def figure_js(title_start: str, body: str) -> str:
    """A JS function running ``body`` with ``gd``: the plotly graph whose title starts with ``title_start``."""
    return ("() => { const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => "
            f"((g.querySelector('.gtitle') || {{}}).textContent || '').startsWith({title_start!r})); "
            f"if (!gd) return null; {body} }}")


def copy_notebook(src: str, root: str, name: str, parameters: str = "") -> str:
    """Copy a notebook into the lab's folder (Run All changes the file), appending to its parameters cell."""
    nb = nbformat.read(src, as_version=4)
    if parameters:
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source += "\n" + parameters
    nbformat.write(nb, os.path.join(root, name))
    return name


def open_notebook(page, lab, name: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{name}?reset")
    page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    try:  # a fresh JupyterLab may ask which kernel to start: take its default
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=5_000)
        page.click(".jp-Dialog .jp-mod-accept")
        page.wait_for_selector(".jp-Dialog", state="detached", timeout=10_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    except Exception:  # no dialog came
        pass


def run_all(page) -> float:
    """Menu Run > Run All Cells; returns the time it was clicked (time.monotonic)."""
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    t0 = time.monotonic()
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    return t0


def all_cells_ran(page) -> bool:
    """Every code cell shows an execution count (none pending, none queued)."""
    return page.evaluate("""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
        .every(p => /\\[\\d+\\]/.test(p.textContent))""")


def error_outputs(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')]
        .map(e => e.textContent).filter(t => /Error|Traceback/.test(t))""")


class Shots:
    """Numbered screenshots of one test in the screenshots folder."""

    def __init__(self, page, folder: str, prefix: str):
        self.page, self.folder, self.prefix, self.n, self.taken = page, folder, prefix, 0, []

    def __call__(self, what: str, locator=None) -> str:
        self.n += 1
        path = os.path.join(self.folder, f"{self.prefix}-{self.n:02d}-{what}.png")
        if locator is not None:
            locator.scroll_into_view_if_needed()
            time.sleep(0.3)
        self.page.screenshot(path=path)
        self.taken.append(path)
        return path


def fresh_copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


@contextlib.contextmanager
def lab_page(browser, lab, shots: str, prefix: str, width: int = 1280, height: int = 1000):
    """A page and its :class:`Shots`; on a failure a last screenshot; afterwards the lab's kernels shut down.

    The page's console errors are collected in ``page.console_errors``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    shot = Shots(page, shots, prefix)
    try:
        yield page, shot
    except BaseException:  # pytest.fail too: a last screenshot of what the page showed
        shot("failed")
        print(f"\nscreenshots: {shot.taken}; console errors: {page.console_errors}")
        raise
    finally:
        if lab is not None:
            lab.shutdown_kernels()
        page.close()
