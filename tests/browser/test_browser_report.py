"""The static report in headless Chromium, offline: its slider moves with the arrow keys; and exported PNGs
(kaleido drives the same Chromium) have their figures' sizes."""
from __future__ import annotations

import os
import struct

import pytest

from labpage import Shots
from nslab import analysis, figures, report, spectrum_figures
from nslab.plotting import figure_size

pytestmark = pytest.mark.browser

TITLE = "() => document.querySelector('.js-plotly-plot .gtitle').textContent"
ACTIVE = "() => document.querySelector('.js-plotly-plot').layout.sliders[0].active"


def test_static_report_offline_with_keys(browser, sweep, tmp_path, shots):
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
    shot = Shots(page, shots, "report")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"file://{os.path.abspath(path)}")
    first = page.locator(".js-plotly-plot").first
    first.wait_for(timeout=30_000)
    y = lambda: page.evaluate("() => Array.from(document.querySelector('.js-plotly-plot')._fullData[0].y)")  # noqa: E731
    assert page.evaluate(TITLE) == "singular values of 1.weight at epoch 0"
    y0 = y()
    shot("top")
    first.click(position={"x": 300, "y": 200})  # focus the figure, as a reader would
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"({TITLE})() === 'singular values of 1.weight at epoch 1'", timeout=10_000)
    assert page.evaluate(ACTIVE) == 1 and y() != y0
    shot("arrow-right")
    page.keyboard.press("End")
    page.wait_for_function(f"({TITLE})() === 'singular values of 1.weight at epoch 3'", timeout=10_000)
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"({TITLE})() === 'singular values of 1.weight at epoch 2'", timeout=10_000)
    assert page.evaluate(ACTIVE) == 2
    # the target line of the spectral run is drawn
    targets = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData"
                            ".filter(t => t.name.endsWith('target') && t.y.length).map(t => t.name)")
    assert targets == ["mlp2x16-spectral-s1 target"]
    shot("arrow-left")
    page.keyboard.press("Home")
    page.wait_for_function(f"({TITLE})() === 'singular values of 1.weight at epoch 0'", timeout=10_000)
    first.locator(".updatemenu-button", has_text="play").click()  # plays every epoch through to the last
    page.wait_for_function(f"({TITLE})() === 'singular values of 1.weight at epoch 3'", timeout=20_000)
    page.wait_for_function(f"({ACTIVE})() === 3", timeout=10_000)
    shot("played")
    page.locator("table").last.scroll_into_view_if_needed()
    shot("tables")
    heights = page.evaluate("() => [...document.querySelectorAll('table tr')].map(r => r.getBoundingClientRect().height)")
    widths = page.evaluate("() => [...document.querySelectorAll('table')].map(t => [t.getBoundingClientRect().width, "
                           "t.parentElement.getBoundingClientRect().width])")
    print(f"\nreport screenshots: {shot.taken}; requests refused: {fetched}; page errors: {errors}; "
          f"table rows at most {max(heights):.0f} px high")
    assert fetched == [] and errors == []
    assert max(heights) < 40  # one line per row: no 120 px rows of wrapped text
    assert all(w <= pw + 1 for w, pw in widths)  # no table wider than the page
    context.close()


def test_exported_pngs_have_their_figures_sizes(sweep, tmp_path, chromium):
    study = analysis.load_study(sweep)
    figs = {"training": figures.training_figure(study), "sigma": figures.sigma_max_figure(study, "1.weight"),
            "spectrum": spectrum_figures.spectrum_figure(study, "1.weight", 0, heatmap_run=study.names[1]),
            "layers": figures.layers_figure(study, study.names[1])}
    try:
        written = report.export_figures(figs, str(tmp_path), formats=("png", "svg"), scale=2)
    except RuntimeError as err:
        pytest.skip(f"kaleido could not drive Chromium here: {err}")
    sizes = {}
    for name, fig in figs.items():
        with open(tmp_path / f"{name}.png", "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        sizes[name] = struct.unpack(">II", head[16:24])
        w, h = figure_size(fig)
        assert sizes[name] == (2 * w, 2 * h), name
        svg = (tmp_path / f"{name}.svg").read_text()[:400]
        assert f'width="{w}"' in svg and f'height="{h}"' in svg
    assert len(written) == 8 and len(set(sizes.values())) >= 3  # not one default size for all
    print(f"\nexported PNG sizes (scale 2): {sizes}")
