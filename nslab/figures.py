"""Plotly figures of one run's tables (pure: a Run in, a go.Figure out; nothing is shown here)."""
from __future__ import annotations

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
