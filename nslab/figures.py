"""Plotly figures of run tables: one Run (the first three builders) or a Study of several runs
(nslab.analysis). Pure: tables in, a go.Figure out; nothing is shown or written here."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .records import Run


def training_curves(run: Run) -> go.Figure:
    """Train and test loss (left) and accuracy (right) over epochs."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    e = run.epochs
    for split, dash in (("train", None), ("test", "dash")):
        fig.add_scatter(x=e.epoch, y=e[f"{split}_loss"], name=f"{split} loss", line_dash=dash, row=1, col=1)
        fig.add_scatter(x=e.epoch, y=e[f"{split}_acc"], name=f"{split} acc", line_dash=dash, row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"{run.name}: training curves", height=350)
    return fig


def sigma_max_per_layer(run: Run) -> go.Figure:
    """Exact sigma_max of every scaled layer over epochs, with each layer's target dotted."""
    fig = go.Figure()
    for layer, rows in run.layers.groupby("layer", sort=False):
        line = fig.add_scatter(x=rows.epoch, y=rows.sigma_max, name=layer, mode="lines+markers").data[-1].line
        if rows.target.notna().any() and run.config.get("method") == "spectral":
            fig.add_scatter(x=rows.epoch, y=rows.target, name=f"{layer} target", mode="lines",
                            line=dict(dash="dot", color=line.color), showlegend=False)
    fig.update_layout(title=f"{run.name}: sigma_max per layer", xaxis_title="epoch", yaxis_title="sigma_max",
                      yaxis_type="log", height=350)
    return fig


def singular_values(run: Run, epoch: int | None = None) -> go.Figure:
    """Sorted singular values of every layer at one recorded epoch (the last by default), log scale."""
    spectra = run.spectra
    epoch = int(spectra.epoch.max()) if epoch is None else epoch
    fig = go.Figure()
    for layer, rows in spectra[spectra.epoch == epoch].groupby("layer", sort=False):
        fig.add_scatter(x=rows["index"], y=rows.sigma, name=layer, mode="lines")
    fig.update_layout(title=f"{run.name}: singular values at epoch {epoch}", xaxis_title="index i",
                      yaxis_title="sigma_i", yaxis_type="log", height=350)
    return fig


# --- Several runs (a Study, nslab.analysis) ---------------------------------------------------
# Every trace carries ``meta={"run": ..., "role": ...}`` (or ``"group"``) so that a dashboard can
# update it in place: the builders below make the first state, nslab.dashboard moves it.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def run_styles(study) -> dict[str, dict]:
    """Run -> line style: one colour per configuration group, one dash per seed within it."""
    groups = list(dict.fromkeys(study.groups.values()))
    seen: dict[str, int] = {}
    styles = {}
    for name in study.names:
        g = study.groups[name]
        k = seen[g] = seen.get(g, -1) + 1
        styles[name] = {"color": PALETTE[groups.index(g) % len(PALETTE)], "dash": DASHES[k % len(DASHES)]}
    return styles


def group_color(study, group: str) -> str:
    return PALETTE[list(dict.fromkeys(study.groups.values())).index(group) % len(PALETTE)]


def spectrum_xy(study, run: str, layer: str, epoch: int, max_points: int | None = None):
    """(i, sigma_i) of one run's layer at one epoch, optionally thinned to about ``max_points`` points."""
    y = study.spectra.get(run, layer, epoch)
    x = np.arange(len(y))
    if max_points and len(y) > max_points:
        x = np.unique(np.round(np.linspace(0, len(y) - 1, max_points)).astype(int))
        y = y[x]
    return x, y


def target_xy(study, run: str, layer: str, epoch: int, n: int):
    """A horizontal segment at the layer's spectral target over i = 0..n-1 (empty without a target)."""
    t = study.target(run, layer, epoch)
    return ([0, max(n - 1, 1)], [t, t]) if np.isfinite(t) and n else ([], [])


def spectrum_title(layer: str, epoch: int) -> str:
    return f"singular values of {layer} at epoch {epoch}"


def spectrum_figure(study, layer: str, epoch: int, selected=None) -> go.Figure:
    """Sorted singular values (log y) of ``layer`` at ``epoch``, one trace per run, spectral targets dotted."""
    styles, selected = run_styles(study), set(study.names if selected is None else selected)
    fig = go.Figure()
    for run in study.names:
        x, y = spectrum_xy(study, run, layer, epoch)
        vis = run in selected
        fig.add_scatter(x=x, y=y, name=run, mode="lines", line=styles[run], visible=vis, legendgroup=run,
                        meta={"run": run, "role": "spectrum"})
        tx, ty = target_xy(study, run, layer, epoch, len(y))
        fig.add_scatter(x=tx, y=ty, name=f"{run} target", mode="lines", visible=vis, legendgroup=run, showlegend=False,
                        line=dict(color=styles[run]["color"], dash="dot", width=1), meta={"run": run, "role": "target"})
    fig.update_layout(title=spectrum_title(layer, epoch), xaxis_title="index i", yaxis_title="sigma_i",
                      yaxis_type="log", height=380, width=900)
    return fig


def spectrum_slider_figure(study, pairs: list[tuple[str, str]], title: str, max_points: int | None = 400) -> go.Figure:
    """Singular values of (run, layer) pairs with one frame per recorded epoch and a slider (no kernel needed).

    Every frame holds every trace (empty where a run has no spectrum at that epoch); the log y
    range is fixed over all frames so that the axes stay put while scrubbing.
    """
    runs = list(dict.fromkeys(r for r, _ in pairs))
    epochs = study.spectra.all_epochs(runs)
    styles = run_styles(study)
    many_layers = len({l for _, l in pairs}) > 1
    colors = {l: PALETTE[i % len(PALETTE)] for i, l in enumerate(dict.fromkeys(l for _, l in pairs))}

    def traces(epoch):
        out = []
        for run, layer in pairs:
            x, y = spectrum_xy(study, run, layer, epoch, max_points)
            line = dict(color=colors[layer]) if many_layers else styles[run]
            out.append(go.Scatter(x=x, y=y, mode="lines", line=line, name=layer if many_layers else run))
        return out

    frames = [go.Frame(name=str(e), data=traces(e), layout=dict(title_text=f"{title} at epoch {e}")) for e in epochs]
    fig = go.Figure(data=frames[0].data if frames else [], frames=frames)
    values = np.concatenate([study.spectra.get(r, l, e) for r, l in pairs for e in epochs] or [np.empty(0)])
    values = values[values > 0]
    if len(values):
        hi = float(values.max())
        lo = max(float(values.min()), hi * 1e-8)
        fig.update_yaxes(range=[np.log10(lo) - 0.1, np.log10(hi) + 0.1], autorange=False)
    steps = [dict(label=str(e), method="animate",
                  args=[[str(e)], dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))])
             for e in epochs]
    fig.update_layout(title=f"{title} at epoch {epochs[0]}" if epochs else title, xaxis_title="index i",
                      yaxis_title="sigma_i", yaxis_type="log", height=450,
                      sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="epoch "), pad=dict(t=40))])
    return fig


def sigma_max_figure(study, layer: str, selected=None) -> go.Figure:
    """Left: sigma_max of ``layer`` over epochs per run (spectral targets dotted).
    Right: the mean of sigma_max across layers with a min-max band, per run."""
    from .analysis import layer_spread

    styles, selected = run_styles(study), set(study.names if selected is None else selected)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"sigma_max of {layer}", "sigma_max across layers: mean, min-max"))
    spread = layer_spread(study.layers) if len(study.layers) else None
    for run in study.names:
        vis, st = run in selected, styles[run]
        rows = study.layer_rows(run, layer)
        fig.add_scatter(x=rows.epoch, y=rows.sigma_max, name=run, mode="lines", line=st, visible=vis, legendgroup=run,
                        meta={"run": run, "role": "layer_sigma"}, row=1, col=1)
        tx, ty = _target_series(study, run, rows)
        fig.add_scatter(x=tx, y=ty, name=f"{run} target", mode="lines", line=dict(color=st["color"], dash="dot", width=1),
                        visible=vis, legendgroup=run, showlegend=False, meta={"run": run, "role": "layer_target"}, row=1, col=1)
        s = spread[spread.run == run] if spread is not None else None
        if s is None or not len(s):
            continue
        fig.add_scatter(x=s.epoch, y=s["min"], mode="lines", line=dict(width=0), visible=vis, legendgroup=run,
                        showlegend=False, hoverinfo="skip", meta={"run": run, "role": "band_lo"}, row=1, col=2)
        fig.add_scatter(x=s.epoch, y=s["max"], mode="lines", line=dict(width=0), fill="tonexty", visible=vis,
                        fillcolor=_alpha(st["color"], 0.15), legendgroup=run, showlegend=False, hoverinfo="skip",
                        meta={"run": run, "role": "band_hi"}, row=1, col=2)
        fig.add_scatter(x=s.epoch, y=s["mean"], name=f"{run} mean", mode="lines", line=st, visible=vis,
                        legendgroup=run, showlegend=False, meta={"run": run, "role": "band_mean"}, row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(type="log", title_text="sigma_max")
    fig.update_layout(title="spectral norms over training", height=380, width=1150)
    return fig


def _target_series(study, run: str, rows):
    if study.method(run) != "spectral" or not len(rows):
        return [], []
    return rows.epoch, rows.target


def _alpha(hex_color: str, a: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"


def training_figure(study, selected=None) -> go.Figure:
    """Loss, accuracy and the generalization gap (train minus test accuracy) per run; test bold, train faint."""
    styles, selected = run_styles(study), set(study.names if selected is None else selected)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss (test bold, train faint)", "accuracy",
                                                         "generalization gap: train - test accuracy"))
    for run in study.names:
        e, st, vis = study.epoch_rows(run), styles[run], run in selected
        for col, column in ((1, "loss"), (2, "acc")):
            for split in ("train", "test"):
                fig.add_scatter(x=e.epoch, y=e[f"{split}_{column}"], name=run if split == "test" else f"{run} train",
                                mode="lines", line=dict(st, width=2 if split == "test" else 1),
                                opacity=1 if split == "test" else 0.45, visible=vis, legendgroup=run,
                                showlegend=split == "test" and col == 1, meta={"run": run, "role": f"{split}_{column}"},
                                row=1, col=col)
        fig.add_scatter(x=e.epoch, y=e.get("gap_acc", []), name=f"{run} gap", mode="lines", line=st, visible=vis,
                        legendgroup=run, showlegend=False, meta={"run": run, "role": "gap_acc"}, row=1, col=3)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title="training curves", height=380, width=1150)
    return fig


def rank_figure(study, layer: str, selected=None) -> go.Figure:
    """Stable, effective and numerical rank of ``layer`` over epochs, one line per run."""
    from .analysis import RANK_COLUMNS

    styles, selected = run_styles(study), set(study.names if selected is None else selected)
    fig = make_subplots(rows=1, cols=3, subplot_titles=tuple(c.replace("_", " ") for c in RANK_COLUMNS))
    for run in study.names:
        rows = study.layer_rows(run, layer)
        for col, column in enumerate(RANK_COLUMNS, start=1):
            fig.add_scatter(x=rows.epoch, y=rows[column], name=run, mode="lines", line=styles[run],
                            visible=run in selected, legendgroup=run, showlegend=col == 1,
                            meta={"run": run, "role": column}, row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"ranks of {layer}", height=380, width=1150)
    return fig


def group_figure(study, column: str = "test_acc", band: str = "minmax") -> go.Figure:
    """``column`` over epochs per configuration: mean over seeds with a band (min-max or std)."""
    from .analysis import group_curves

    fig = go.Figure()
    if not len(study.epochs):
        return fig
    curves = group_curves(study.epochs, column, band)
    for group, c in curves.groupby("group", sort=False):
        color = group_color(study, group)
        n = int(c.n.max())
        fig.add_scatter(x=c.epoch, y=c.lo, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip",
                        legendgroup=group, meta={"group": group, "role": "lo"})
        fig.add_scatter(x=c.epoch, y=c.hi, mode="lines", line=dict(width=0), fill="tonexty", showlegend=False,
                        fillcolor=_alpha(color, 0.2), hoverinfo="skip", legendgroup=group, meta={"group": group, "role": "hi"})
        fig.add_scatter(x=c.epoch, y=c["mean"], mode="lines", name=f"{group} (n={n})", line=dict(color=color),
                        legendgroup=group, meta={"group": group, "role": "mean"})
    band_name = "min-max" if band == "minmax" else "+/- 1 std"
    fig.update_layout(title=f"{column} by configuration: mean over seeds, {band_name} band", xaxis_title="epoch",
                      yaxis_title=column, height=380, width=900)
    return fig
