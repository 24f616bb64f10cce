"""Static HTML reports (one plotly.js, frames per epoch, offline), table and figure exports, the CLI hook."""
from __future__ import annotations

import argparse
import os
import re

import pandas as pd
import pytest

from nslab import analysis, figures, report, train
from nslab.config import RunConfig


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
    fig = figures.spectrum_slider_figure(study, pairs, "sv", max_points=None)
    assert [f.name for f in fig.frames] == ["0", "2", "3"]  # spectra_every=2 plus the last epoch
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "2", "3"]
    assert fig.frames[1].layout.title.text == "sv at epoch 2"
    for trace, (run, layer) in zip(fig.frames[1].data, pairs):
        assert list(trace.y) == study.spectra.get(run, layer, 2).tolist()
    thin = figures.spectrum_slider_figure(study, pairs, "sv", max_points=5)
    assert len(thin.frames[0].data[0].y) == 5 and thin.frames[0].data[0].x[-1] == 15


def test_sweep_report_is_self_contained(sweep):
    path = report.write_report(sweep)
    assert path == os.path.join(sweep, "report.html")
    text = open(path, encoding="utf-8").read()
    assert text.count("window.PlotlyConfig") == 1  # plotly.js inlined once
    n_figs = len(report.report_figures(analysis.load_study(sweep)))
    assert text.count("Plotly.newPlot") == n_figs
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: no CDN, no MathJax
    assert "SHORT: 3 of 200 epochs" in text and "3 of 3 runs are shorter" in text
    assert "Hess" in text and "mlp2x16-frobenius-s1" in text


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


def test_export_figures_png_svg(sweep, tmp_path):
    study = analysis.load_study(sweep)
    with pytest.raises(ValueError, match="format='gif'"):
        report.export_figures({"x": figures.training_figure(study)}, str(tmp_path), formats=("gif",))
    try:
        written = report.export_figures({"training": figures.training_figure(study)}, str(tmp_path))
    except RuntimeError as err:
        pytest.skip(f"PNG/SVG export unavailable here: {err}")
    assert written == [str(tmp_path / "training.png"), str(tmp_path / "training.svg")]
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "training.svg").read_text()[:500]
