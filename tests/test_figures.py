"""Figures read the records, not method names; axes, units, sizes and targets as promised; live figures sync."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from fake_runs import layer_rows, write_run
from nslab import analysis, figures, spectrum_figures
from nslab.figure_sync import diff, same, sync_figure
from nslab.plotting import (View, figure_size, log_axis, n_panels, nice_ticks, padded_log_range, set_cursor)

FLAT = 0.40824829  # sqrt(512/3072): every singular value of an orthogonal init, to 7 digits


@pytest.fixture
def study(tmp_path):
    """Spectral targets from the method (an old run without target_norm, two seeds), from target_norm
    (a method the views do not know), and Frobenius targets that must not be drawn as spectral ones."""
    root = str(tmp_path / "s")
    flat = [(0, "0.weight", i, FLAT + 1e-8 * (3 - i)) for i in range(4)]
    grown = [(2, "0.weight", i, s) for i, s in enumerate((2.0, 1.0, 0.5, 0.25))]
    for seed, acc in ((1, 0.2), (2, 0.3)):
        write_run(root, f"spec-s{seed}", {"method": "spectral", "seed": seed, "epochs": 2},
                  epochs=[(1, 0.1, acc / 2, 4.0, 4.2), (2, 0.4, acc, 3.0, 3.5)],
                  layers=layer_rows({0: [FLAT, 1.0], 1: [0.9, 1.1], 2: [1.2, 1.3]}, target=FLAT),
                  spectra=flat + grown, extra_layer_columns={"n_above_target": [0, 0, 3, 1, 4, 2],
                                                             "alpha": [np.nan, np.nan, np.nan, np.nan, 3.5, 4.0]})
    write_run(root, "cap-s1", {"method": "spectral_cap", "target_norm": "spectral", "epochs": 2},
              epochs=[(1, 0.1, 0.1, 4.0, 4.2), (2, 0.4, 0.2, 3.0, 3.5)],
              layers=layer_rows({0: [FLAT, 1.0], 2: [0.5, 0.9]}, target=0.5), spectra=flat + grown)
    write_run(root, "frob-s1", {"method": "frobenius", "target_norm": "frobenius", "epochs": 2},
              epochs=[(1, 0.1, 0.1, 4.0, 4.2), (2, 0.4, 0.2, 3.0, 3.5)],
              layers=layer_rows({0: [FLAT, 1.0], 2: [3.0, 4.0]}, target=9.0), spectra=flat + grown)
    return analysis.load_study(root)


def _traces(fig, role, run=None):
    return [t for t in fig.data if t.meta.get("role") == role and (run is None or t.meta.get("run") == run)]


def test_targets_come_from_the_records_not_the_method_name(study):
    fig = spectrum_figures.spectrum_figure(study, "0.weight", 2)
    targets = {t.meta["run"]: list(t.y) for t in _traces(fig, "target")}
    assert targets["spec-s1"] == [FLAT, FLAT] and targets["cap-s1"] == [0.5, 0.5]
    assert targets["frob-s1"] == []  # a Frobenius-norm target is not a line on a spectrum
    sigma = figures.sigma_max_figure(study, "0.weight")
    assert [len(t.y) for t in _traces(sigma, "layer_target")] == [2, 0, 3, 3]  # cap, frob, spec-s1, spec-s2
    assert sigma.layout.legend.title.text == figures.TARGET_NOTE


def test_flat_spectrum_gets_a_padded_fixed_range_shared_by_dashboard_and_report(study):
    """Epoch 0 of an orthogonal init: sigma_i equal to 7 digits must not autoscale to float noise."""
    lo, hi = padded_log_range([FLAT, FLAT * (1 + 1e-7)])
    assert hi - lo == pytest.approx(0.3) and lo < math.log10(FLAT) < hi
    dash = spectrum_figures.spectrum_figure(study, "0.weight", 0)
    assert dash.layout.yaxis.autorange is False
    pairs = [(r, "0.weight") for r in study.names]
    report = spectrum_figures.spectrum_slider_figure(study, pairs, "sv")
    assert list(dash.layout.yaxis.range) == list(report.layout.yaxis.range) == spectrum_figures.spectrum_range(study, pairs)
    lo, hi = report.layout.yaxis.range  # covers every epoch's values and the targets
    assert 10 ** lo < 0.25 and 10 ** hi > 9.0 * 0 + 2.0


def test_log_axis_ticks_never_crowd():
    assert log_axis([0.01, 1000])["dtick"] == 1  # 5 decades: decades only
    wide = log_axis([0.4, 60])
    assert (wide["dtick"], wide["tickformat"]) == ("D2", ".2~g")
    narrow = log_axis([0.4, 1.3])  # the "7 6 5 4 3 2 1 9 8 7"
    assert narrow["tickmode"] == "array" and narrow["tickvals"] == [0.4, 0.6, 0.8, 1.0, 1.2]
    assert nice_ticks(5.9, 16.6).tolist() == [6.0, 8.0, 10.0, 12.0, 14.0, 16.0]
    assert log_axis([np.nan, -1.0])["dtick"] is None  # nothing positive: plotly's default


def test_accuracy_in_percent_and_hidden_runs_stay_in_the_legend(study):
    fig = figures.training_figure(study, View(selected={"spec-s1"}))
    acc = [t for t in fig.data if t.meta == {"run": "spec-s1", "role": "test_acc"}][0]
    assert list(acc.y) == pytest.approx([10.0, 20.0])
    assert fig.layout.yaxis2.title.text == "accuracy (%)"
    assert {t.visible for t in fig.data if t.meta["run"] != "spec-s1"} == {"legendonly"}
    assert fig.layout.hovermode == "x unified" and fig.layout.hoverlabel.namelength == -1
    assert fig.layout.width is None and fig.layout.autosize  # follows the cell


def test_smoothing_and_log_view(study):
    plain = figures.training_figure(study)
    smooth = figures.training_figure(study, View(smoothing=0.5, yscale="log"))
    loss = lambda f: [t for t in f.data if t.meta == {"run": "spec-s1", "role": "test_loss"}][0].y  # noqa: E731
    assert list(loss(smooth)) == pytest.approx(analysis.smooth(loss(plain), 0.5))
    assert (smooth.layout.yaxis.type, smooth.layout.yaxis3.type) == ("log", "linear")  # the gap can be negative
    with pytest.raises(ValueError, match="yscale='huge'"):
        View(yscale="huge")


def test_rank_panels_follow_the_column_list(study):
    fig = figures.rank_figure(study, "0.weight")
    assert figures.rank_columns(study) == ["stable_rank", "effective_rank", "numerical_rank", "alpha"]
    assert n_panels(fig) == 4 and [a.text for a in fig.layout.annotations] == [
        "stable rank", "effective rank", "numerical rank", "alpha"]
    alpha = _traces(fig, "alpha", "spec-s1")[0]
    assert list(alpha.x) == [2] and list(alpha.y) == [3.5]  # recorded at spectra epochs only


def test_layers_figure_targets_in_the_layers_colour_with_one_legend_entry(study):
    fig = figures.layers_figure(study, "spec-s1")
    lines = {t.meta["layer"]: t for t in fig.data if t.meta["role"] == "sigma_max"}
    targets = [t for t in fig.data if t.meta["role"] == "target"]
    assert len(targets) == 2
    for t in targets:
        assert t.line.color == lines[t.meta["layer"]].line.color and t.line.dash == "dot"
        assert t.legendgroup == "targets"
    assert [t.showlegend for t in targets] == [True, False] and targets[0].name == "targets"
    assert not [t for t in figures.layers_figure(study, "frob-s1").data if t.meta["role"] == "target"]
    with pytest.raises(ValueError, match="column='lr'"):
        figures.layers_figure(study, "spec-s1", "lr")


def test_probe_figures_where_the_columns_have_values(study, tmp_path):
    fig = figures.target_figure(study, "0.weight")
    assert n_panels(fig) == 1  # n_above_target only: no excess recorded
    assert list(_traces(fig, "n_above_target", "spec-s1")[0].y) == [0, 3, 4]
    op = figures.operator_figure(study, "0.weight")
    assert n_panels(op) == 2 and all(np.isnan(t.y).all() for t in _traces(op, "op_sigma_max"))
    write_run(str(tmp_path / "old"), "r", {}, epochs=[(1, 0.1, 0.1, 4.0, 4.0)], layers=layer_rows({1: [1.0]}))
    with pytest.raises(ValueError, match="no n_above_target or excess values"):
        figures.target_figure(analysis.load_study(str(tmp_path / "old")), "0.weight")


def test_seed_bands_for_per_layer_columns(study):
    assert {"sigma_max", "n_above_target", "alpha"} <= set(figures.group_columns(study))
    fig = figures.group_figure(study, "sigma_max", layer="1.weight")
    mean = [t for t in fig.data if t.meta == {"group": "mlp5x2000-spectral", "role": "mean"}][0]
    assert list(mean.x) == [0, 1, 2] and list(mean.y) == pytest.approx([1.0, 1.1, 1.3])
    assert mean.name == "mlp5x2000-spectral (n=2)"
    with pytest.raises(ValueError, match="give layer="):
        figures.group_figure(study, "sigma_max")


def test_epoch_cursor_on_time_series(study):
    fig = figures.sigma_max_figure(study, "0.weight", View(epoch=1))
    cursors = [s for s in fig.layout.shapes if s.name == "epoch cursor"]
    assert len(cursors) == 2 and {s.x0 for s in cursors} == {1}
    set_cursor(fig, 2)
    assert {s.x0 for s in fig.layout.shapes} == {2}
    assert not figures.sigma_max_figure(study, "0.weight").layout.shapes


def test_heatmap_is_log10_of_the_spectra(study):
    fig = spectrum_figures.spectrum_figure(study, "0.weight", 2, heatmap_run="spec-s1")
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    epochs, sigma = study.spectra.matrix("spec-s1", "0.weight")
    assert list(heat.x) == epochs == [0, 2]
    assert np.asarray(heat.z) == pytest.approx(np.log10(sigma))
    assert n_panels(fig) == 2 and figure_size(fig) == (2 * 420 + 60, 480)


def test_slider_figure_draws_targets_and_plays(study):
    fig = spectrum_figures.spectrum_slider_figure(study, [("cap-s1", "0.weight")], "sv")
    assert [f.name for f in fig.frames] == ["0", "2"]
    target = fig.frames[1].data[1]
    assert list(target.y) == [0.5, 0.5] and target.line.dash == "dot"
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["play", "pause"]


def test_sizes_follow_panel_counts(study):
    assert figure_size(figures.training_figure(study)) == (3 * 420 + 60, 460)
    assert figure_size(go.Figure(layout=dict(width=500, height=300))) == (500, 300)


def test_sync_sends_only_what_changed_and_keeps_the_users_zoom(study):
    widget = go.FigureWidget(figures.training_figure(study))
    widget.layout.xaxis.range = [1, 1.5]  # as a zoom in the browser sets it
    fresh = figures.training_figure(study, View(selected={"spec-s1"}))
    layout_keys = diff(widget.layout.to_plotly_json(), fresh.layout.to_plotly_json())
    hidden = [t for t in fresh.data if t.visible == "legendonly"]
    assert sync_figure(widget, fresh) == len(hidden) + len(layout_keys)  # nothing else is sent
    assert [t.visible for t in widget.data] == [t.visible for t in fresh.data]
    assert list(widget.layout.xaxis.range) == [1, 1.5]
    assert sync_figure(widget, fresh) == 0
    assert sync_figure(widget, figures.rank_figure(study, "0.weight")) == -1  # other traces: replaced
    assert [t.meta for t in widget.data] == [t.meta for t in figures.rank_figure(study, "0.weight").data]


def test_same_and_diff():
    assert same(np.array([1.0, np.nan]), [1.0, float("nan")]) and not same([1, 2], [1, 2, 3])
    assert same({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) and not same("x", "y")
    assert diff({"a": 1, "b": {"c": 1, "range": [0, 1]}, "d": 4}, {"a": 1, "b": {"c": 2}}) == {"b": {"c": 2}, "d": None}
