"""The dashboard's callbacks: in-process on a Dashboard object, in a kernel through testbook, and at 12 runs x 200 epochs."""
from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from nslab import analysis, train
from nslab.config import RunConfig
from nslab.dashboard import Dashboard, DashboardApp, list_sources
from nslab.records import write_json, write_table

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "02_dashboard.ipynb")


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory) -> str:
    """A recorded sweep: none and spectral, seeds 1 and 2 of the spectral one, 3 epochs each."""
    out = str(tmp_path_factory.mktemp("sweep") / "tiny")
    for method, seed in (("none", 1), ("spectral", 1), ("spectral", 2)):
        train(RunConfig(model="mlp", depth=2, width=16, epochs=3, batch_size=64, data_dir=data_dir, out_dir=out,
                        device="cpu", spectra_every=1, checkpoint_every=1, method=method, seed=seed), log=lambda _: None)
    return out


def _ys(fig, role="spectrum"):
    return {t.meta["run"]: np.asarray(t.y).tolist() for t in fig.data if t.meta["role"] == role}


def test_epoch_slider_changes_spectrum_and_title(sweep):
    dash = Dashboard(analysis.load_study(sweep))
    assert list(dash.epoch.options) == [0, 1, 2, 3] and dash.epoch.value == 0
    before, title = _ys(dash.spectrum), dash.spectrum.layout.title.text
    assert title == "singular values of 1.weight at epoch 0"
    dash.epoch.value = 3
    after = _ys(dash.spectrum)
    assert dash.spectrum.layout.title.text == "singular values of 1.weight at epoch 3"
    for run in before:
        assert before[run] != after[run]
        assert after[run] == dash.study.spectra.get(run, "1.weight", 3).tolist()
    # the spectral runs' target line sits at their layer's target; the unscaled run has none
    targets = {t.meta["run"]: list(t.y) for t in dash.spectrum.data if t.meta["role"] == "target"}
    assert targets["mlp2x16-none-s1"] == []
    assert targets["mlp2x16-spectral-s1"][0] == pytest.approx(dash.study.target("mlp2x16-spectral-s1", "1.weight"))


def test_layer_selection_and_groups(sweep):
    dash = Dashboard(analysis.load_study(sweep))
    dash.layer.value = "3.weight"
    assert dash.spectrum.layout.title.text.startswith("singular values of 3.weight")
    assert dash.ranks.layout.title.text == "ranks of 3.weight"
    rows = dash.study.layer_rows("mlp2x16-none-s1", "3.weight")
    assert _ys(dash.sigma, "layer_sigma")["mlp2x16-none-s1"] == rows.sigma_max.tolist()
    assert _ys(dash.ranks, "stable_rank")["mlp2x16-none-s1"] == rows.stable_rank.tolist()

    dash.runs.value = ("mlp2x16-none-s1",)
    for fig in (dash.spectrum, dash.sigma, dash.training, dash.ranks):
        assert all(t.visible == (t.meta["run"] == "mlp2x16-none-s1") for t in fig.data)
    assert {t.meta["group"] for t in dash.groups.data if t.visible} == {"mlp2x16-none"}

    mean = {t.meta["group"]: list(t.y) for t in dash.groups.data if t.meta["role"] == "mean"}
    dash.column.value = "test_loss"
    e = dash.study.epochs
    spec = e[e.group == "mlp2x16-spectral"].groupby("epoch").test_loss.mean().tolist()
    assert [t for t in dash.groups.data if t.meta == {"group": "mlp2x16-spectral", "role": "mean"}][0].y == pytest.approx(spec)
    assert mean["mlp2x16-spectral"] != spec
    assert "test_loss" in dash.groups.layout.title.text


def test_export_button_writes_tables(sweep, tmp_path, monkeypatch):
    from nslab import report

    dash = Dashboard(analysis.load_study(sweep), export_dir=str(tmp_path / "exp"))
    monkeypatch.setattr(report, "export_figures", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kaleido here")))
    dash.export_button.click()
    assert {"runs.csv", "runs.tex", "blog_final.csv", "blog_spectral.tex"} <= set(os.listdir(tmp_path / "exp"))
    assert "figures not exported: no kaleido here" in dash.message.value


def test_app_picks_folders_and_reports_bad_ones(sweep, tmp_path):
    assert list_sources(os.path.dirname(sweep)) == [sweep]
    app = DashboardApp(sweep)
    assert app.dashboard is not None and len(app.dashboard.study.names) == 3
    runs = analysis.find_run_dirs(sweep)[:2]
    app.path.value = ", ".join(runs)
    app.load()
    assert app.dashboard.study.names == [os.path.basename(r) for r in runs]
    app.path.value = str(tmp_path / "nothing")
    app.load()
    assert "does not exist" in app.message.value


def test_notebook_callbacks_in_a_kernel(sweep):
    testbook = pytest.importorskip("testbook").testbook
    with testbook(NOTEBOOK, execute=False, timeout=120) as tb:
        tb.execute_cell("parameters")
        tb.inject(f"sweep_dir = {sweep!r}; run_dirs = []; root = {os.path.dirname(sweep)!r}")
        tb.execute_cell(list(range(2, len(tb.nb.cells))))
        assert tb.value("dash.spectrum.layout.title.text") == "singular values of 1.weight at epoch 0"
        before = tb.value("[list(t.y) for t in dash.spectrum.data if t.meta['role'] == 'spectrum']")
        tb.inject("dash.epoch.value = 2")
        assert tb.value("dash.spectrum.layout.title.text") == "singular values of 1.weight at epoch 2"
        after = tb.value("[list(t.y) for t in dash.spectrum.data if t.meta['role'] == 'spectrum']")
        assert len(after) == 3 and all(a != b for a, b in zip(after, before))


def fake_sweep(root: str, n_runs: int = 12, epochs: int = 200, spectra_every: int = 10,
               sizes=(2000, 2000, 2000, 2000, 100)) -> str:
    """Run folders shaped like the blog's 5x2000 MLP study (random numbers, no training)."""
    rng = np.random.default_rng(0)
    for i in range(n_runs):
        method, seed = ("none", "frobenius", "spectral")[i % 3], i // 3 + 1
        d = os.path.join(root, f"mlp5x2000-{method}-s{seed}")
        write_json(os.path.join(d, "config.json"), {"model": "mlp", "depth": 5, "width": 2000, "method": method,
                                                    "seed": seed, "epochs": epochs})
        write_json(os.path.join(d, "status.json"), {"status": "completed", "message": "", "epoch": epochs})
        e = np.arange(1, epochs + 1)
        write_table(os.path.join(d, "epochs.csv"), pd.DataFrame(
            {"epoch": e, "lr": 1e-3, "train_loss": 4 / e ** .3, "train_acc": 1 - 1 / e ** .2, "test_loss": 4.5 / e ** .2,
             "test_acc": .3 - .3 / e ** .5, "seconds": 1.0}))
        ep = np.repeat(np.arange(epochs + 1), len(sizes))
        layer = np.tile([f"{2 * j}.weight" for j in range(len(sizes))], epochs + 1)
        write_table(os.path.join(d, "layers.csv"), pd.DataFrame(
            {"epoch": ep, "layer": layer, "shape": "", "sigma_max": 1 + ep / 50 + rng.random(len(ep)), "frobenius": 10.0,
             "stable_rank": 5.0, "effective_rank": 50.0, "numerical_rank": 100, "target": 1.0 if method == "spectral" else np.nan,
             "power_iter_rel_err": np.nan}))
        spec = [pd.DataFrame({"epoch": k, "layer": f"{2 * j}.weight", "index": np.arange(n),
                              "sigma": np.sort(rng.random(n))[::-1] * (1 + k / 50)})
                for k in sorted(set(range(0, epochs + 1, spectra_every)) | {epochs}) for j, n in enumerate(sizes)]
        write_table(os.path.join(d, "spectra.parquet"), pd.concat(spec, ignore_index=True))
    return root


@pytest.mark.slow
def test_twelve_runs_by_two_hundred_epochs_do_not_stall(tmp_path):
    root = fake_sweep(str(tmp_path / "big"))
    t0 = time.perf_counter()
    dash = Dashboard(analysis.load_study(root))
    build = time.perf_counter() - t0
    assert len(dash.study.names) == 12 and len(dash.epoch.options) == 21
    times = []
    for epoch in dash.epoch.options[1:]:
        t0 = time.perf_counter()
        dash.epoch.value = epoch
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    dash.layer.value = "8.weight"
    dash.runs.value = dash.runs.value[:4]
    other = time.perf_counter() - t0
    print(f"12x200: load+build {build:.2f}s, slider step max {max(times) * 1e3:.1f} ms, layer+selection {other:.2f}s")
    assert dash.spectrum.layout.title.text == "singular values of 8.weight at epoch 200"
    assert build < 60 and max(times) < 0.5 and other < 2
