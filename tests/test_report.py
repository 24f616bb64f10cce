"""Static HTML reports (one plotly.js, frames per epoch, keys, offline), exports, notebook 03, the CLI hook."""
from __future__ import annotations

import argparse
import os
import re

import numpy as np
import pandas as pd
import pytest

from fake_runs import layer_rows, write_run
from nslab import analysis, figures, report, spectrum_figures, train
from nslab.config import RunConfig
from nslab.paths import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "03_report.ipynb")


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("sweep") / "tiny")
    for method in ("none", "frobenius", "spectral"):
        train(RunConfig(model="mlp", depth=2, width=16, epochs=3, batch_size=64, data_dir=data_dir, out_dir=out,
                        device="cpu", spectra_every=2, checkpoint_every=1, method=method), log=lambda _: None)
    return out


def test_slider_figure_has_one_frame_per_recorded_epoch(sweep):
    study = analysis.load_study(sweep)
    pairs = [(r, "1.weight") for r in study.names]
    fig = spectrum_figures.spectrum_slider_figure(study, pairs, "sv", max_points=None)
    assert [f.name for f in fig.frames] == ["0", "2", "3"]  # spectra_every=2 plus the last epoch
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "2", "3"]
    assert fig.frames[1].layout.title.text == "sv at epoch 2"
    spectra = [t for t in fig.frames[1].data if not t.name.endswith("target")]
    for trace, (run, layer) in zip(spectra, pairs):
        assert list(trace.y) == study.spectra.get(run, layer, 2).tolist()
    targets = {t.name: list(t.y) for t in fig.frames[1].data if t.name.endswith("target")}
    assert targets["mlp2x16-spectral-s1 target"][0] == pytest.approx(study.target("mlp2x16-spectral-s1", "1.weight"))
    assert targets["mlp2x16-none-s1 target"] == []
    thin = spectrum_figures.spectrum_slider_figure(study, pairs, "sv", max_points=5)
    assert len(thin.frames[0].data[0].y) == 5 and thin.frames[0].data[0].x[-1] == 15


def test_sweep_report_is_self_contained(sweep):
    path = report.write_report(sweep)
    assert path == os.path.join(sweep, "report.html")
    text = open(path, encoding="utf-8").read()
    assert text.count("window.PlotlyConfig") == 1  # plotly.js inlined once
    n_figs = len(report.report_figures(analysis.load_study(sweep)))
    assert text.count("Plotly.newPlot") == n_figs
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: no CDN, no MathJax
    assert "3 of 3 runs differ from the blog's recipe" in text
    assert "<li>architecture mlp2x16 (the blog ran mlp5x2000, mlp7x4000, resnet34, resnet50); 3 epochs vs 200" in text
    assert "differs, see 1" in text  # long recipe texts are numbered notes: table rows stay one line high
    assert "Hess" in text and "mlp2x16-frobenius-s1" in text
    assert "ArrowRight" in text and '"label":"play"' in text  # keys and a play button on the sliders
    assert "white-space:nowrap" in text


def test_run_report_and_cli_hook(sweep, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="nslab")
    report.add_parser(parser.add_subparsers(dest="command"))
    run_dir = analysis.find_run_dirs(sweep)[0]
    out = str(tmp_path / "run.html")
    args = parser.parse_args(["report", run_dir, "--out", out, "--export", str(tmp_path / "exp")])
    assert args.func(args) == 0
    assert "nslab run report: mlp2x16-frobenius-s1" in open(out, encoding="utf-8").read()
    printed = capsys.readouterr()
    assert f"wrote {out}" in printed.out
    assert {"runs.csv", "runs.tex", "blog_final.csv", "blog_spectral.csv"} <= set(os.listdir(tmp_path / "exp"))
    bad = parser.parse_args(["report", str(tmp_path / "nothing")])
    assert bad.func(bad) == 2 and "does not exist" in capsys.readouterr().err


def test_export_tables_csv_and_latex(tmp_path):
    df = pd.DataFrame({"method": ["none", "spectral"], "test_acc": [25.123456, float("nan")]})
    written = report.export_tables({"t": df}, str(tmp_path))
    assert written == [str(tmp_path / "t.csv"), str(tmp_path / "t.tex")]
    assert pd.read_csv(tmp_path / "t.csv").method.tolist() == ["none", "spectral"]
    tex = (tmp_path / "t.tex").read_text()
    assert "\\begin{tabular}" in tex and "25.12" in tex and "--" in tex


def test_export_figures_refuses_unknown_formats(sweep, tmp_path):
    study = analysis.load_study(sweep)
    with pytest.raises(ValueError, match="format='gif'"):
        report.export_figures({"x": figures.training_figure(study)}, str(tmp_path), formats=("gif",))


def test_numbers_read_as_people_read_them():
    assert report.number_text("epochs", 10) == "10" and report.number_text("epochs_done", np.int64(24)) == "24"
    assert report.number_text("test_acc", 25.4567) == "25.46" and report.number_text("seconds", 12.7) == "13"
    assert report.number_text("test_loss", 3.77221) == "3.772" and report.number_text("test_acc_std", float("nan")) == ""
    assert report.number_text("epochs", pd.NA) == "" and report.number_text("recipe", "comparable") == "comparable"


def test_report_warns_about_first_layer_targets_at_another_width(tmp_path):
    t = float(np.sqrt(512 / 3072))
    write_run(str(tmp_path / "s"), "w512", {"method": "spectral", "width": 512}, epochs=[(1, 0.5, 0.01, 4.6, 4.6)],
              layers=layer_rows({0: [t] * 5, 1: [t] * 5}, target=t))
    text = open(report.write_report(str(tmp_path / "s")), encoding="utf-8").read()
    assert "first-layer targets at mlp5x512" in text and "0.408" in text


@pytest.mark.parametrize("cwd", ["root", "notebooks"])
def test_notebook_03_from_the_root_and_from_notebooks(sweep, tmp_path, cwd):
    """Relative sweep_dir and report_html mean the same files from the repository root and from notebooks/."""
    import nbformat
    import papermill

    rel = lambda p: os.path.relpath(p, REPO_ROOT)  # noqa: E731
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(NOTEBOOK, str(out), kernel_name="python3", progress_bar=False,
                               cwd=REPO_ROOT if cwd == "root" else os.path.join(REPO_ROOT, "notebooks"),
                               parameters=dict(sweep_dir=rel(sweep), report_html=rel(tmp_path / "r.html"),
                                               export_dir=rel(tmp_path / "exp")))
    assert (tmp_path / "r.html").exists() and (tmp_path / "exp" / "blog_final.csv").exists()
    cells = nbformat.read(out, as_version=4).cells
    html = "".join(o.get("data", {}).get("text/html", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    assert "differ from the blog" in "".join(o.get("data", {}).get("text/markdown", "")
                                             for c in cells if c.cell_type == "code" for o in c.outputs)
    assert ">3<" in html and ">3.00<" not in html and ">10.00<" not in html  # epochs as integers


@pytest.mark.parametrize("name", ["02_dashboard.ipynb", "03_report.ipynb"])
def test_refusals_show_as_one_line_from_the_first_code_cell(name):
    """nslab.notebook.setup() (tested with notebook 01) runs before anything that can refuse a path."""
    import nbformat

    cells = [c for c in nbformat.read(os.path.join(REPO_ROOT, "notebooks", name), as_version=4).cells
             if c.cell_type == "code"]
    assert "nslab.notebook.setup()" in cells[0].source and "parameters" in cells[1].metadata.get("tags", [])


def test_report_of_a_sweeps_first_minute_and_of_a_run_without_layers(tiny, tmp_path, capsys):
    """What exists is shown: runs with no epoch yet (config.json only), a run whose layers.csv is gone."""
    import json

    from nslab.cli import main
    from nslab.config import RunConfig

    sweep = tmp_path / "sweep"
    for name in ("a", "b"):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "config.json").write_text(json.dumps(RunConfig(depth=2, width=16).to_dict()))
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "report.html").stat().st_size > 0
    run = train(tiny(epochs=1, name="nolayers"), log=lambda _: None)
    os.remove(os.path.join(run.run_dir, "layers.csv"))
    assert main(["report", run.run_dir]) == 0
    capsys.readouterr()


def test_report_refusals_name_the_problem(tmp_path, capsys):
    from nslab.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["report", str(afile)]) == 2
    assert "is a file: give a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--max_points", "1"]) == 2
    assert "--max_points=1 is not allowed" in capsys.readouterr().err
