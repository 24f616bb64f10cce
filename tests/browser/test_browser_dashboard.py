"""The dashboard in JupyterLab in headless Chromium: figures fit their cell at 1280 px with the side bar open
(and at 1920, and with the side bar closed), the slider scrubs, legends link the figures, a bad folder
leaves no stale dashboard, and a running sweep's new epoch appears without a click."""
from __future__ import annotations

import os
import time

import pytest

from fake_runs import append_epoch
from labpage import FIGURE_BOXES, copy_notebook, figure_js, fresh_copy, lab_page, open_notebook, run_all
from nslab.paths import REPO_ROOT
from nslab.records import read_json, write_json

pytestmark = pytest.mark.browser

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "02_dashboard.ipynb")
SPECTRUM = "singular values of 1.weight"


def _title(page) -> str:
    return page.evaluate(figure_js("singular values", "return gd.querySelector('.gtitle').textContent;")) or ""


def _fits(boxes) -> list[str]:
    """What is wrong with the figures' boxes: overflowing their cell, or not following its width."""
    bad = []
    for b in boxes:
        if b["left"] < b["cell_left"] - 1 or b["right"] > b["cell_right"] + 1:
            bad.append(f"{b['title']!r} overflows: svg {b['left']:.0f}..{b['right']:.0f}, cell {b['cell_left']:.0f}.."
                       f"{b['cell_right']:.0f}")
        elif b["width"] < 0.9 * b["cell_width"]:
            bad.append(f"{b['title']!r} is {b['width']:.0f} px in a {b['cell_width']:.0f} px cell")
    return bad


def _wait_fitted(page, seconds: float = 20, cell_wider_than: float = 0) -> list[dict]:
    """The figures' boxes once they all fit (plotly re-measures after a resize event: give it a moment)
    in cells wider than ``cell_wider_than`` (after a window resize, JupyterLab lays the cells out
    again first: until then the old boxes still fit the old cells)."""
    deadline = time.monotonic() + seconds
    while True:
        boxes = page.evaluate(FIGURE_BOXES)
        if boxes and not _fits(boxes) and boxes[0]["cell_width"] > cell_wider_than or time.monotonic() > deadline:
            return boxes
        time.sleep(0.25)


def test_dashboard_fits_its_cell_scrubs_and_links(browser, lab, sweep, shots):
    name = copy_notebook(NOTEBOOK, lab.root, "dash_fit.ipynb",
                         f"sweep_dir = {sweep!r}\nroot = {os.path.dirname(sweep)!r}\nrefresh_seconds = 0.0")
    with lab_page(browser, lab, shots, "dashboard") as (page, shot):
        open_notebook(page, lab, name)
        assert page.locator(".jp-FileBrowser").is_visible(), "the file browser side bar should be open"
        t0 = run_all(page)
        page.wait_for_function(f"({figure_js('singular values', 'return true;')})() === true", timeout=180_000)
        load_s = time.monotonic() - t0
        page.wait_for_function(f"""() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]
            .some(t => t.textContent === '{SPECTRUM} at epoch 0')""", timeout=30_000)
        boxes = _wait_fitted(page)
        shot("top", page.locator(".widget-select-multiple").first)
        for i, title in enumerate(b["title"] for b in boxes):
            shot(f"figure{i}", page.locator(".js-plotly-plot").nth(i))
        assert len(boxes) >= 5 and not _fits(boxes), _fits(boxes)
        cell_1280 = boxes[0]["cell_width"]

        # the slider: one step with the keyboard; the spectrum and every epoch cursor follow
        handle = page.locator(".widget-slider .noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.focus()
        t1 = time.monotonic()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               f".some(t => t.textContent === '{SPECTRUM} at epoch 1')", timeout=30_000, polling=20)
        step_s = time.monotonic() - t1
        page.wait_for_function(figure_js("spectral norms", "return gd.layout.shapes.every(s => s.x0 === 1);"),
                               timeout=10_000)  # the time series' cursors follow when the slider pauses
        shot("slider-epoch1", page.locator(".js-plotly-plot").first)

        # a legend click in one figure hides that run in every figure
        page.locator(".js-plotly-plot").nth(1).scroll_into_view_if_needed()
        page.locator(".js-plotly-plot").nth(1).locator(".legendtext", has_text="mlp2x16-none-s1").click(force=True)
        page.wait_for_function(figure_js("training curves", """return gd.data.filter(t => t.meta.run === 'mlp2x16-none-s1')
            .every(t => t.visible === 'legendonly');"""), timeout=30_000)
        shot("legend-click-hides-none", page.locator(".js-plotly-plot").nth(2))
        page.locator(".js-plotly-plot").nth(1).locator(".legendtext", has_text="mlp2x16-none-s1").click(force=True)
        page.wait_for_function(figure_js("training curves", """return gd.data.filter(t => t.meta.run === 'mlp2x16-none-s1')
            .every(t => t.visible === true);"""), timeout=30_000)

        # wider window, then the side bar closed: the figures follow the cell
        page.set_viewport_size({"width": 1920, "height": 1080})
        boxes = _wait_fitted(page, cell_wider_than=cell_1280 + 500)
        assert not _fits(boxes) and boxes[0]["cell_width"] > cell_1280 + 500, (_fits(boxes), boxes[0]["cell_width"])
        shot("1920", page.locator(".js-plotly-plot").nth(2))
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.click(".jp-SideBar .lm-TabBar-tab[data-id='filebrowser']")
        boxes = _wait_fitted(page, cell_wider_than=cell_1280 + 150)
        assert not page.locator(".jp-FileBrowser").is_visible()
        assert not _fits(boxes) and boxes[0]["cell_width"] > cell_1280 + 150, (_fits(boxes), boxes[0]["cell_width"])
        shot("1280-side-bar-closed", page.locator(".js-plotly-plot").nth(2))

        # a bad folder: the message, and no stale dashboard under it
        box = page.get_by_placeholder("a sweep folder, or run folders a, b")
        box.scroll_into_view_if_needed()
        box.fill("/no/such/folder")
        page.locator("button", has_text="load").first.click()
        page.wait_for_selector("text=does not exist", timeout=30_000)
        assert page.locator(".js-plotly-plot").count() == 0
        shot("bad-folder")
        errors = page.console_errors
    print(f"\ndashboard: Run All to first figure {load_s:.1f} s (kernel start, imports, load, build); slider step "
          f"{step_s * 1e3:.0f} ms (key press to new title); screenshots: {shot.taken}; console errors: {errors}")
    assert errors == []


def test_dashboard_follows_a_running_sweep(browser, lab, sweep, shots, tmp_path):
    live = fresh_copy(sweep, str(tmp_path / "live"))
    run_dir = os.path.join(live, "mlp2x16-none-s1")
    write_json(os.path.join(run_dir, "status.json"), {**read_json(os.path.join(run_dir, "status.json")), "status": "running"})
    name = copy_notebook(NOTEBOOK, lab.root, "dash_live.ipynb", f"sweep_dir = {live!r}\nroot = {str(tmp_path)!r}")
    last_x = figure_js("training curves", """return Math.max(...gd.data.filter(t => t.meta.run === 'mlp2x16-none-s1')
        .map(t => t.x.length ? t.x[t.x.length - 1] : -1));""")
    with lab_page(browser, lab, shots, "live") as (page, shot):
        open_notebook(page, lab, name)  # shipped refresh_seconds: 3
        run_all(page)
        page.wait_for_function(f"({last_x})() === 3", timeout=180_000)
        page.wait_for_selector("text=[running 3/3]", timeout=30_000)
        shot("running-marked", page.locator(".widget-select-multiple").first)
        epoch = append_epoch(run_dir)
        t0 = time.monotonic()
        page.wait_for_function(f"({last_x})() === {epoch}", timeout=30_000, polling=50)
        latency = time.monotonic() - t0
        page.wait_for_selector(f"text=[running {epoch}/3]", timeout=10_000)
        shot("new-epoch-without-a-click", page.locator(".js-plotly-plot").nth(2))
    print(f"\nlive refresh: epoch {epoch} written, on screen {latency:.2f} s later (polling every 3 s); "
          f"screenshots: {shot.taken}")
