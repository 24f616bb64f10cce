"""Figures of singular-value spectra: one epoch scrubbed by a slider, and a layer over all epochs as a heat map.

The y range of a spectrum is fixed per layer over every epoch and run shown
(:func:`spectrum_range`), padded and at least a third of a decade wide: the axes stay put while
scrubbing, and a flat spectrum (orthogonal init) reads as flat. The dashboard and the static
report use the same range, and both draw each run's spectral target as a dotted line.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plotting import PALETTE, View, base_layout, log_axis, padded_log_range, run_styles

HEATMAP_SCALE = "Viridis"


def spectrum_xy(study, run: str, layer: str, epoch: int, max_points: int | None = None):
    """(i, sigma_i) of one run's layer at one epoch, optionally thinned to about ``max_points`` points."""
    y = study.spectra.get(run, layer, epoch)
    x = np.arange(len(y))
    if max_points and len(y) > max_points:
        x = np.unique(np.round(np.linspace(0, len(y) - 1, max_points)).astype(int))
        y = y[x]
    return x, y


def target_xy(study, run: str, layer: str, epoch: int, n: int):
    """A horizontal segment at the layer's spectral target over i = 0..n-1 (empty without one)."""
    t = study.target(run, layer, epoch)
    return ([0, max(n - 1, 1)], [t, t]) if np.isfinite(t) and n else ([], [])


def spectrum_range(study, pairs: list[tuple[str, str]]) -> list[float] | None:
    """The fixed log10 y range of the spectra of (run, layer) pairs over all their epochs, targets included."""
    values = [study.spectra.get(r, l, e) for r, l in pairs for e in study.spectra.epochs.get(r, [])]
    values += [np.atleast_1d(study.target(r, l)) for r, l in pairs]
    return padded_log_range(np.concatenate(values) if values else [])


def spectrum_title(layer: str, epoch: int) -> str:
    return f"singular values of {layer} at epoch {epoch}"


def spectrum_figure(study, layer: str, epoch: int, view: View = View(), heatmap_run: str | None = None,
                    max_points: int | None = None) -> go.Figure:
    """Sorted singular values (log y) of ``layer`` at ``epoch``, one line per run, spectral targets dotted.

    ``heatmap_run``: also, on the right, that run's spectrum of ``layer`` over all epochs
    (:func:`add_heatmap`), with a cursor at ``epoch``.
    """
    styles = run_styles(study)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.1,
                        subplot_titles=("", f"{heatmap_run} over epochs")) if heatmap_run else go.Figure()
    spot = dict(row=1, col=1) if heatmap_run else {}
    for run in study.names:
        x, y = spectrum_xy(study, run, layer, epoch, max_points)
        vis = view.visible(run)
        fig.add_trace(go.Scatter(x=x, y=y, name=run, mode="lines", line=styles[run], visible=vis, legendgroup=run,
                                 meta={"run": run, "role": "spectrum"}), **spot)
        tx, ty = target_xy(study, run, layer, epoch, len(y))
        fig.add_trace(go.Scatter(x=tx, y=ty, name=f"{run} target", mode="lines", visible=vis, legendgroup=run,
                                 showlegend=False, line=dict(color=styles[run]["color"], dash="dot", width=1),
                                 meta={"run": run, "role": "target"}), **spot)
    y_range = spectrum_range(study, [(r, layer) for r in study.names])
    base_layout(fig, spectrum_title(layer, epoch), height=480, unified=False)
    fig.update_xaxes(title_text="index i", **spot)
    fig.update_yaxes(title_text="sigma_i", range=y_range, autorange=y_range is None,
                     **{**log_axis(10 ** np.asarray(y_range or [0, 0])), **spot})
    if any(np.isfinite(study.target(r, layer)) for r in study.names):
        fig.update_layout(legend_title_text="dotted: spectral target")
    if heatmap_run:
        add_heatmap(fig, study, heatmap_run, layer, epoch, row=1, col=2)
    return fig


def heatmap_z(study, run: str, layer: str) -> tuple[list[int], np.ndarray]:
    """(epochs, log10 sigma) of one run's layer: shape (n_values, n_epochs); NaN where no value or sigma <= 0."""
    epochs, sigma = study.spectra.matrix(run, layer)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, np.log10(sigma), np.nan)
    return epochs, z


def add_heatmap(fig: go.Figure, study, run: str, layer: str, epoch: int | None, row: int, col: int) -> None:
    """One run's singular values of ``layer``: index (y) by epoch (x), colour log10 sigma_i, colour bar in sigma."""
    epochs, z = heatmap_z(study, run, layer)
    finite = z[np.isfinite(z)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ticks = np.arange(np.floor(lo), np.ceil(hi) + 1) if hi - lo >= 1 else np.linspace(lo, hi, 4)
    fig.add_trace(go.Heatmap(x=epochs, y=np.arange(z.shape[0]), z=z, colorscale=HEATMAP_SCALE, zmin=lo, zmax=max(hi, lo + 1e-9),
                             colorbar=dict(title="sigma_i", tickvals=ticks, ticktext=[f"{10 ** t:.3g}" for t in ticks],
                                           len=0.9, thickness=12),
                             hovertemplate="epoch %{x}, i = %{y}: log10 sigma = %{z:.3f}<extra></extra>",
                             meta={"run": run, "role": "heatmap"}, showlegend=False), row=row, col=col)
    fig.update_xaxes(title_text="epoch", row=row, col=col)
    fig.update_yaxes(title_text="index i", autorange="reversed", row=row, col=col)
    if epoch is not None:
        fig.add_shape(type="line", x0=epoch, x1=epoch, y0=0, y1=1, xref=f"x{col}" if col > 1 else "x",
                      yref=f"y{col} domain" if col > 1 else "y domain", line=dict(color="white", width=1.5, dash="dot"),
                      name="epoch cursor")


def heatmap_figure(study, run: str, layer: str) -> go.Figure:
    """:func:`add_heatmap` alone: one run's spectrum of ``layer`` over every recorded epoch."""
    fig = make_subplots(rows=1, cols=1)
    add_heatmap(fig, study, run, layer, None, row=1, col=1)
    return base_layout(fig, f"{run}: singular values of {layer} over epochs (colour: log10 sigma_i)", unified=False)


def spectrum_slider_figure(study, pairs: list[tuple[str, str]], title: str, max_points: int | None = 400) -> go.Figure:
    """Singular values of (run, layer) pairs with one frame per recorded epoch, a slider and play/pause
    buttons (no kernel needed); each pair's spectral target is dotted in its colour.

    Every frame holds every trace (empty where a run has no spectrum at that epoch); the log y
    range is fixed over all frames (:func:`spectrum_range`) so the axes stay put while scrubbing.
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
            name = layer if many_layers else run
            out.append(go.Scatter(x=x, y=y, mode="lines", line=line, name=name, legendgroup=name))
            tx, ty = target_xy(study, run, layer, epoch, len(study.spectra.get(run, layer, epoch)))
            out.append(go.Scatter(x=tx, y=ty, mode="lines", line=dict(color=line["color"], dash="dot", width=1),
                                  name=f"{name} target", legendgroup=name, showlegend=False))
        return out

    frames = [go.Frame(name=str(e), data=traces(e), layout=dict(title_text=f"{title} at epoch {e}")) for e in epochs]
    fig = go.Figure(data=frames[0].data if frames else [], frames=frames)
    y_range = spectrum_range(study, pairs)
    if y_range:
        fig.update_yaxes(range=y_range, autorange=False, **log_axis(10 ** np.asarray(y_range)))
    animate = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    steps = [dict(label=str(e), method="animate", args=[[str(e)], animate]) for e in epochs]
    play = dict(type="buttons", direction="left", x=0, y=0, xanchor="right", yanchor="top", pad=dict(t=48, r=10),
                showactive=False, buttons=[
                    dict(label="play", method="animate",
                         args=[None, dict(frame=dict(duration=400, redraw=True), transition=dict(duration=0),
                                          fromcurrent=True, mode="immediate")]),
                    dict(label="pause", method="animate", args=[[None], animate])])
    base_layout(fig, f"{title} at epoch {epochs[0]}" if epochs else title, height=500, unified=False)
    # the slider and its buttons take the space under the panel: the legend goes beside it
    fig.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
    fig.update_layout(xaxis_title="index i", yaxis_title="sigma_i", yaxis_type="log", updatemenus=[play] if epochs else [],
                      sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="epoch "), pad=dict(t=40),
                                    x=0.08, len=0.92)] if epochs else [])
    if any(np.isfinite(study.target(r, l)) for r, l in pairs):
        fig.update_layout(legend_title_text="dotted: spectral target")
    return fig
