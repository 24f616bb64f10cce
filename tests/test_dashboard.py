"""The dashboard's callbacks: in-process on a Dashboard object, live refresh of runs being written, the
folder picker, the notebook in a kernel (from the repository root and from notebooks/), and 12 runs x 200 epochs."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import plotly.graph_objects as go
import pytest

from fake_runs import append_epoch, fake_sweep
from nslab import analysis, spectrum_figures, train
from nslab.config import RunConfig
from nslab.dashboard import Dashboard, DashboardApp, list_sources
from nslab.live import FolderWatch, Poller, refresh_study
from nslab.paths import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "02_dashboard.ipynb")


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory) -> str:
    """A recorded sweep: none and spectral, seeds 1 and 2 of the spectral one, 3 epochs each."""
    out = str(tmp_path_factory.mktemp("sweep") / "tiny")
    for method, seed in (("none", 1), ("spectral", 1), ("spectral", 2)):
        train(RunConfig(model="mlp", depth=2, width=16, epochs=3, batch_size=64, data_dir=data_dir, out_dir=out,
                        device="cpu", spectra_every=1, checkpoint_every=1, method=method, seed=seed), log=lambda _: None)
    return out


@pytest.fixture
def live(sweep, tmp_path) -> str:
    """A copy of the sweep whose files a test may change, as a running sweep changes them."""
    return shutil.copytree(sweep, tmp_path / "live", ignore=shutil.ignore_patterns("checkpoints")).as_posix()


def _ys(fig, role="spectrum"):
    return {t.meta["run"]: np.asarray(t.y).tolist() for t in fig.data if t.meta.get("role") == role}


def test_epoch_slider_changes_spectrum_title_and_cursors(sweep):
    dash = Dashboard(analysis.load_study(sweep))
    assert list(dash.epoch.options) == [0, 1, 2, 3] and dash.epoch.value == 0
    before = _ys(dash.figs["spectrum"])
    assert dash.figs["spectrum"].layout.title.text == "singular values of 1.weight at epoch 0"
    y_range = list(dash.figs["spectrum"].layout.yaxis.range)
    dash.epoch.value = 3
    after = _ys(dash.figs["spectrum"])
    assert dash.figs["spectrum"].layout.title.text == "singular values of 1.weight at epoch 3"
    for run in before:
        assert before[run] != after[run]
        assert after[run] == dash.study.spectra.get(run, "1.weight", 3).tolist()
    assert list(dash.figs["spectrum"].layout.yaxis.range) == y_range  # fixed while scrubbing
    # the spectral runs' target line sits at their layer's target; the unscaled run has none
    targets = _ys(dash.figs["spectrum"], "target")
    assert targets["mlp2x16-none-s1"] == []
    assert targets["mlp2x16-spectral-s1"][0] == pytest.approx(dash.study.target("mlp2x16-spectral-s1", "1.weight"))
    for name in ("spectrum", "sigma_max", "training", "ranks"):  # the heat map's and the time series' cursors
        assert {s.x0 for s in dash.figs[name].layout.shapes if s.name == "epoch cursor"} == {3}, name


def test_layer_selection_groups_and_controls(sweep):
    dash = Dashboard(analysis.load_study(sweep))
    dash.layer.value = "3.weight"
    assert dash.figs["spectrum"].layout.title.text.startswith("singular values of 3.weight")
    assert dash.figs["ranks"].layout.title.text == "ranks of 3.weight"
    rows = dash.study.layer_rows("mlp2x16-none-s1", "3.weight")
    assert _ys(dash.figs["sigma_max"], "layer_sigma")["mlp2x16-none-s1"] == rows.sigma_max.tolist()
    assert _ys(dash.figs["ranks"], "stable_rank")["mlp2x16-none-s1"] == rows.stable_rank.tolist()

    dash.runs.value = ("mlp2x16-none-s1",)
    for name in ("spectrum", "sigma_max", "training", "ranks"):
        assert all(t.visible == (True if t.meta["run"] == "mlp2x16-none-s1" else "legendonly")
                   for t in dash.figs[name].data if "run" in t.meta and t.type == "scatter"), name
    assert {t.meta["group"] for t in dash.figs["groups"].data if t.visible is True} == {"mlp2x16-none"}

    dash.runs.value = tuple(dash.study.names)
    dash.column.value = "test_loss"
    e = dash.study.epochs
    spec = e[e.group == "mlp2x16-spectral"].groupby("epoch").test_loss.mean().tolist()
    mean = [t for t in dash.figs["groups"].data if t.meta == {"group": "mlp2x16-spectral", "role": "mean"}][0]
    assert list(mean.y) == pytest.approx(spec) and "test_loss" in dash.figs["groups"].layout.title.text
    dash.column.value = "sigma_max"  # seed bands of a per-layer column, for the layer picked
    assert dash.figs["groups"].layout.title.text.startswith("sigma_max of 3.weight")

    loss = lambda: _ys(dash.figs["training"], "test_loss")["mlp2x16-none-s1"]  # noqa: E731
    raw = loss()
    dash.smoothing.value = 0.5
    assert loss() == pytest.approx(analysis.smooth(raw, 0.5).tolist())
    dash.yscale.value = "log"
    assert dash.figs["training"].layout.yaxis.type == "log" and dash.figs["sigma_max"].layout.yaxis.type == "log"
    dash.heat_run.value = "mlp2x16-spectral-s2"
    heat = [t for t in dash.figs["spectrum"].data if t.type == "heatmap"][0]
    assert heat.meta["run"] == "mlp2x16-spectral-s2"


def test_legend_click_filters_every_figure_and_no_selection_says_so(sweep):
    dash = Dashboard(analysis.load_study(sweep))
    legend = [t for t in dash.figs["ranks"].data if t.meta["run"] == "mlp2x16-none-s1" and t.showlegend][0]
    legend.visible = "legendonly"  # what plotly.js sends back when the legend entry is clicked
    assert dash.runs.value == ("mlp2x16-spectral-s1", "mlp2x16-spectral-s2")
    assert {t.visible for t in dash.figs["training"].data if t.meta["run"] == "mlp2x16-none-s1"} == {"legendonly"}
    legend.visible = True
    assert len(dash.runs.value) == 3
    dash.runs.value = ()
    assert "No runs selected" in dash.notice.value and dash.figure_box.layout.display == "none"
    dash.runs.value = ("mlp2x16-none-s1",)
    assert dash.notice.value == "" and dash.figure_box.layout.display is None


def test_runs_table_shows_the_fields_that_differ(sweep):
    dash = Dashboard(analysis.load_study(sweep))
    table = dash.table.value
    assert "method</th>" in table and "seed</th>" in table and "lr</th>" not in table
    assert "test_acc</th>" in table and ">3</td>" in table and ">3.00<" not in table  # epochs as integers
    dash.runs.value = ("mlp2x16-spectral-s1", "mlp2x16-spectral-s2")
    assert "method</th>" not in dash.table.value and "seed</th>" in dash.table.value


def test_live_refresh_picks_up_new_epochs_and_new_runs(live):
    watch = FolderWatch(live)
    study = analysis.load_study(live)
    assert refresh_study(study, watch) == (study, [])  # nothing changed: the same object
    run_dir = os.path.join(live, "mlp2x16-none-s1")
    append_epoch(run_dir)
    new, changed = refresh_study(study, watch)
    assert changed == [run_dir] and new.epoch_rows("mlp2x16-none-s1").epoch.max() == 4
    assert new.runs["mlp2x16-spectral-s1"] is study.runs["mlp2x16-spectral-s1"]  # unchanged runs are not read again

    dash = Dashboard(analysis.load_study(live), source=live, refresh_seconds=0)
    assert dash.refresh() == []
    append_epoch(run_dir)
    assert dash.refresh() == [run_dir]
    acc = [t for t in dash.figs["training"].data if t.meta == {"run": "mlp2x16-none-s1", "role": "test_acc"}][0]
    assert list(acc.x)[-1] == 5 and acc.y[-1] == pytest.approx(50.0)
    assert "[running 5/3]" in dict((v, k) for k, v in dash.runs.options)["mlp2x16-none-s1"]
    assert "1 running" in dash.header.value
    shutil.copytree(os.path.join(live, "mlp2x16-spectral-s2"), os.path.join(live, "mlp2x16-spectral-s3"))
    dash.refresh()
    assert "mlp2x16-spectral-s3" in dash.study.names and "mlp2x16-spectral-s3" in dash.runs.value
    assert len({t.meta["run"] for t in dash.figs["training"].data}) == 4


def test_poller_needs_an_event_loop_and_runs_in_one():
    import asyncio

    with pytest.raises(RuntimeError, match="needs a running event loop|needs an event loop"):
        Poller(lambda: None, 1).start()
    ticks = []

    async def main():
        p = Poller(lambda: ticks.append(1), 0.01)
        p.start()
        await asyncio.sleep(0.1)
        p.stop()

    asyncio.run(main())
    assert len(ticks) >= 3
    with pytest.raises(ValueError, match="seconds=0"):
        Poller(lambda: None, 0)


def test_export_writes_tables_and_figures_at_their_sizes(sweep, tmp_path, monkeypatch):
    from nslab import report

    seen = {}

    def fake_images(figs, paths, format, width, height, scale):  # what kaleido would be asked for
        seen.update({os.path.basename(p): (w, h) for p, w, h in zip(paths, width, height)})

    import plotly.io as pio

    monkeypatch.setattr(pio, "write_images", fake_images)
    dash = Dashboard(analysis.load_study(sweep), export_dir=str(tmp_path / "exp"))
    dash.export_button.click()
    assert {"runs.csv", "runs.tex", "blog_final.csv", "blog_spectral.tex"} <= set(os.listdir(tmp_path / "exp"))
    assert seen["training.png"] == (3 * 420 + 60, 460) and seen["sigma_max.svg"] == (2 * 420 + 60, 460)
    monkeypatch.setattr(report, "export_figures", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kaleido here")))
    dash.export_button.click()
    assert "figures not exported: no kaleido here" in dash.message.value


def test_app_picks_folders_and_reports_bad_ones(sweep, tmp_path):
    assert list_sources(os.path.dirname(sweep)) == [sweep]
    app = DashboardApp(sweep, refresh_seconds=0)
    assert app.dashboard is not None and len(app.dashboard.study.names) == 3
    assert app.message.value.startswith("loaded 3 runs") and not app.load_button.disabled
    runs = analysis.find_run_dirs(sweep)[:2]
    app.path.value = ", ".join(runs)
    app.load()
    assert app.dashboard.study.names == [os.path.basename(r) for r in runs]
    app.path.value = str(tmp_path / "nothing")
    app.load()
    assert "does not exist" in app.message.value and "loaded" not in app.message.value
    assert app.dashboard is None and app.area.children == ()  # no stale dashboard under the error
    assert not app.load_button.disabled and app.load_button.icon == "folder-open"


@pytest.mark.parametrize("cwd", ["root", "notebooks"])
def test_notebook_from_the_root_and_from_notebooks(sweep, tmp_path, cwd):
    """One path rule: sweep_dir relative to the repository root reaches the same folder from both places."""
    import nbformat
    import papermill

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print(app.message.value)"))  # the widget's message, as text
    copy = tmp_path / "02.ipynb"
    nbformat.write(nb, copy)
    rel = os.path.relpath(sweep, REPO_ROOT)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(copy), str(out), kernel_name="python3", progress_bar=False,
                               cwd=REPO_ROOT if cwd == "root" else os.path.join(REPO_ROOT, "notebooks"),
                               parameters=dict(sweep_dir=rel, root=os.path.dirname(rel), refresh_seconds=0.0),
                               store_widget_state=False)
    printed = "".join(o.get("text", "") for o in nbformat.read(out, as_version=4).cells[-1].outputs)
    assert printed.strip() == f"loaded 3 runs from {sweep}"


def test_notebook_callbacks_and_auto_refresh_in_a_kernel(live):
    testbook = pytest.importorskip("testbook").testbook
    with testbook(NOTEBOOK, execute=False, timeout=120) as tb:
        tb.execute_cell("parameters")
        tb.inject(f"sweep_dir = {live!r}; run_dirs = []; root = {os.path.dirname(live)!r}; refresh_seconds = 0.5")
        tb.execute_cell(list(range(3, len(tb.nb.cells))))
        assert tb.value("dash.figs['spectrum'].layout.title.text") == "singular values of 1.weight at epoch 0"
        before = tb.value("[list(t.y) for t in dash.figs['spectrum'].data if t.meta['role'] == 'spectrum']")
        tb.inject("dash.epoch.value = 2")
        assert tb.value("dash.figs['spectrum'].layout.title.text") == "singular values of 1.weight at epoch 2"
        after = tb.value("[list(t.y) for t in dash.figs['spectrum'].data if t.meta['role'] == 'spectrum']")
        assert len(after) == 3 and all(a != b for a, b in zip(after, before))
        assert tb.value("dash.auto.value and dash.poller.running")
        epoch = append_epoch(os.path.join(live, "mlp2x16-none-s1"))
        for _ in range(40):  # the kernel is idle between these calls: its event loop runs the poller
            time.sleep(0.25)
            xs = tb.value("[[int(v) for v in t.x] for t in dash.figs['training'].data if t.meta['role'] == 'test_acc']")
            if max(x[-1] for x in xs) == epoch:
                break
        assert max(x[-1] for x in xs) == epoch, "auto-refresh did not pick up the new epoch"


@pytest.mark.slow
def test_twelve_runs_by_two_hundred_epochs_do_not_stall(tmp_path):
    """The slider swaps arrays in place: a step costs a fraction of building the spectrum figure anew,
    measured in this process (a ratio, so a busy machine slows both sides alike)."""
    root = fake_sweep(str(tmp_path / "big"))
    t0 = time.perf_counter()
    dash = Dashboard(analysis.load_study(root))
    build = time.perf_counter() - t0
    assert len(dash.study.names) == 12 and len(dash.epoch.options) == 21
    steps, rebuilds = [], []
    for epoch in dash.epoch.options[1:]:
        t0 = time.perf_counter()
        dash.epoch.value = epoch
        steps.append(time.perf_counter() - t0)
    for epoch in dash.epoch.options[1:6]:
        t0 = time.perf_counter()
        go.FigureWidget(spectrum_figures.spectrum_figure(dash.study, dash.layer.value, epoch, dash.view,
                                                         dash.heat_run.value))
        rebuilds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    dash.layer.value = "8.weight"
    dash.runs.value = dash.runs.value[:4]
    other = time.perf_counter() - t0
    ratio = min(steps) / min(rebuilds)
    print(f"12x200: load+build {build:.2f}s, slider step min {min(steps) * 1e3:.1f} ms max {max(steps) * 1e3:.1f} ms, "
          f"rebuilding the spectrum {min(rebuilds) * 1e3:.0f} ms (ratio {ratio:.2f}), layer+selection {other:.2f}s")
    assert dash.figs["spectrum"].layout.title.text == "singular values of 8.weight at epoch 200"
    assert ratio < 0.5
