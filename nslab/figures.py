"""Plotly figures of a Study's time series (nslab.analysis): training curves, sigma_max, ranks, targets.

Pure: a Study and a :class:`~nslab.plotting.View` in, a ``go.Figure`` out; nothing is shown or
written here. A figure's traces depend only on the study (and the layer); the view changes their
values and visibility, so a dashboard can bring a live figure up to date by comparing it with a
fresh build (nslab.dashboard). Every trace carries ``meta={"run": ..., "role": ...}`` (or
``"group"``/``"layer"``). Targets are drawn where the run's records say they are spectral norms
(``Study.target_norm``), never from a method's name. Spectra are in :mod:`nslab.spectrum_figures`.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import OPTIONAL_RANK_COLUMNS, RANK_COLUMNS, group_curves, has_values, layer_spread, smooth
from .plotting import (PALETTE, View, base_layout, column_title, cursor_shapes, group_color, rgba, run_styles,
                       unit_factor, whole_epochs, y_axis)

TARGET_NOTE = "dotted: spectral target"
LAYER_COLUMNS_SHOWN = ("sigma_max", "frobenius", "stable_rank", "effective_rank", "numerical_rank", "n_above_target",
                       "excess", "op_sigma_max", "alpha")


def _line(view: View, run: str, x, y, role: str, style: dict, column: str = "", smoothed: bool = True, **kw):
    """One run's series as a Scatter: units, smoothing and visibility from the view, meta for updates."""
    y = np.asarray(y, dtype=float) * unit_factor(column)
    if smoothed and view.smoothing:
        y = smooth(y, view.smoothing)
    props = dict(mode="lines", line=style, visible=view.visible(run), legendgroup=run, meta={"run": run, "role": role})
    return go.Scatter(x=np.asarray(x), y=y, **{**props, **kw})


def _drawn(trace) -> np.ndarray:
    """The y values of a trace if it is drawn (hidden runs do not set an axis' ticks), else none."""
    return np.asarray(trace.y, dtype=float) if trace.visible is True else np.empty(0)


def _axes(fig: go.Figure, panels: list[tuple[str, str | None]], view: View, values: list[list]) -> None:
    """x axes titled epoch; each panel's y axis by its default scale (or the view's) and its data.

    A panel whose default is None stays linear whatever the view (a gap can be negative)."""
    fig.update_xaxes(title_text="epoch")
    for col, ((title, default), vals) in enumerate(zip(panels, values), start=1):
        flat = np.concatenate([np.asarray(v, dtype=float).ravel() for v in vals]) if vals else np.empty(0)
        scale = "linear" if default is None else view.scale(default)
        fig.update_yaxes(title_text=title, row=1, col=col, **y_axis(scale, flat))


def _finish(fig: go.Figure, title: str, view: View, note: str = "") -> go.Figure:
    base_layout(fig, title)
    if note:
        fig.update_layout(legend_title_text=note)
    whole_epochs(fig)
    cursor_shapes(fig, view.epoch)
    return fig


def training_figure(study, view: View = View()) -> go.Figure:
    """Loss, accuracy (%) and the generalization gap (train minus test accuracy, points) per run.

    Test bold, train faint; where a run recorded the clean (un-augmented) test set, it is dotted.
    The gap panel stays linear under a log view (it can be negative).
    """
    styles = run_styles(study)
    clean = has_values(study.epochs, "clean_test_acc")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "accuracy (%)", "gap: train - test accuracy"))
    values: list[list] = [[], [], []]
    splits = ("train", "test") + (("clean_test",) if clean else ())
    for run in study.names:
        e, st = study.epoch_rows(run), styles[run]
        for col, kind in ((1, "loss"), (2, "acc")):
            for split in splits:
                column = f"{split}_{kind}"
                width, opacity, dash = {"train": (1, 0.45, st["dash"]), "test": (2, 1, st["dash"]),
                                        "clean_test": (1.5, 1, "dot")}[split]
                name = run if split == "test" else f"{run} {split.replace('_', ' ')}"
                t = _line(view, run, e.epoch, e.get(column, np.full(len(e), np.nan)), column,
                          dict(color=st["color"], dash=dash, width=width), column, opacity=opacity, name=name,
                          showlegend=split == "test" and col == 1)
                fig.add_trace(t, row=1, col=col)
                values[col - 1].append(_drawn(t))
        t = _line(view, run, e.epoch, e.get("gap_acc", np.full(len(e), np.nan)), "gap_acc", st, "gap_acc",
                  name=f"{run} gap", showlegend=False)
        fig.add_trace(t, row=1, col=3)
        values[2].append(_drawn(t))
    _axes(fig, [("loss", "linear"), ("accuracy (%)", "linear"), ("percentage points", None)], view, values)
    note = "dotted: clean test set" if clean else ""
    return _finish(fig, "training curves (test bold, train faint)", view, note)


def sigma_max_figure(study, layer: str, view: View = View()) -> go.Figure:
    """Left: sigma_max of ``layer`` over epochs per run (spectral targets dotted, in the run's colour).
    Right: the mean of sigma_max across layers with a min-max band, per run."""
    styles = run_styles(study)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"sigma_max of {layer}", "across layers: mean, min-max"))
    spread = layer_spread(study.layers) if len(study.layers) else None
    left, right = [], []
    for run in study.names:
        st = styles[run]
        rows = study.layer_rows(run, layer)
        fig.add_trace(_line(view, run, rows.epoch, rows.sigma_max, "layer_sigma", st, name=run), row=1, col=1)
        tx, ty = study.target_series(run, layer)
        fig.add_trace(_line(view, run, tx, ty, "layer_target", dict(color=st["color"], dash="dot", width=1), smoothed=False,
                            name=f"{run} target", showlegend=False), row=1, col=1)
        s = spread[spread.run == run] if spread is not None else None
        if s is None or not len(s):
            continue
        for role, column, extra in (("band_lo", "min", {}), ("band_hi", "max", dict(fill="tonexty"))):
            fig.add_trace(_line(view, run, s.epoch, s[column], role, dict(width=0), name=f"{run} {column}",
                                showlegend=False, hoverinfo="skip", fillcolor=rgba(st["color"], 0.15), **extra), row=1, col=2)
        fig.add_trace(_line(view, run, s.epoch, s["mean"], "band_mean", st, name=f"{run} mean", showlegend=False),
                      row=1, col=2)
    for t in fig.data:  # every drawn series sets its panel's ticks: targets and band edges too
        (left if t.meta["role"].startswith("layer") else right).append(_drawn(t))
    _axes(fig, [("sigma_max", "log"), ("sigma_max", "log")], view, [left, right])
    has_targets = any(len(study.target_series(r, layer)[0]) for r in study.names)
    return _finish(fig, "spectral norms over training", view, TARGET_NOTE if has_targets else "")


def columns_figure(study, layer: str, columns: list[str], view: View, title: str, sparse=(), scales=None,
                   titles=None, shared_y: bool = False) -> go.Figure:
    """One panel per layers.csv column of ``layer`` over epochs, one line per run (legend from the first panel).

    ``sparse``: columns recorded at some epochs only (drawn with markers, gaps joined); ``scales``:
    column -> default y scale (linear otherwise); ``titles``: panel titles (the column names by default).
    """
    styles = run_styles(study)
    fig = make_subplots(rows=1, cols=len(columns), shared_yaxes=shared_y,
                        subplot_titles=tuple(titles or (c.replace("_", " ") for c in columns)))
    values: list[list] = [[] for _ in columns]
    for run in study.names:
        rows = study.layer_rows(run, layer)
        for col, column in enumerate(columns, start=1):
            rows_c = rows[rows[column].notna()] if column in sparse and column in rows else rows
            y = rows_c[column] if column in rows_c else np.full(len(rows_c), np.nan)
            t = _line(view, run, rows_c.epoch, y, column, styles[run], column, name=run, showlegend=col == 1,
                      mode="lines+markers" if column in sparse else "lines")
            fig.add_trace(t, row=1, col=col)
            values[col - 1].append(_drawn(t))
    if shared_y:  # one y axis for all panels: ticks from all their data
        values = [[v for vals in values for v in vals]] * len(columns)
    panels = [("" if shared_y and col else c.replace("_", " "), (scales or {}).get(c, "linear"))
              for col, c in enumerate(columns)]
    _axes(fig, panels, view, values)
    return _finish(fig, title, view)


def rank_columns(study) -> list[str]:
    """The rank panels: stable, effective and numerical rank, and ``alpha`` where the runs recorded it."""
    return list(RANK_COLUMNS) + [c for c in OPTIONAL_RANK_COLUMNS if has_values(study.layers, c)]


def rank_figure(study, layer: str, view: View = View()) -> go.Figure:
    """One panel per rank column (:func:`rank_columns`) of ``layer`` over epochs, one line per run.

    ``alpha`` is recorded at spectra epochs only: drawn with markers, gaps joined.
    """
    return columns_figure(study, layer, rank_columns(study), view, f"ranks of {layer}", sparse=OPTIONAL_RANK_COLUMNS)


def layers_figure(study, run: str, column: str = "sigma_max", view: View = View()) -> go.Figure:
    """``column`` of every layer of one run over epochs, one colour per layer.

    For ``sigma_max``, each layer's spectral target is dotted in that layer's colour; all targets
    share one legend entry ("targets"), so one click hides or shows them together.
    """
    if column not in LAYER_COLUMNS_SHOWN:
        raise ValueError(f"column={column!r} is not allowed: choose one of {list(LAYER_COLUMNS_SHOWN)}")
    fig = go.Figure()
    values = []
    targets = column == "sigma_max" and study.target_norm(run) == "spectral"
    for i, layer in enumerate(study.layer_names):
        rows = study.layer_rows(run, layer)
        rows = rows[rows[column].notna()] if column in rows else rows.iloc[:0]
        color = PALETTE[i % len(PALETTE)]
        t = _line(view, layer, rows.epoch, rows[column] if column in rows else [], column, dict(color=color), column,
                  name=layer, legendgroup=layer, meta={"layer": layer, "role": column})
        fig.add_trace(t)
        values.append(_drawn(t))
        if targets:
            tx, ty = study.target_series(run, layer)
            fig.add_scatter(x=np.asarray(tx), y=np.asarray(ty), mode="lines", line=dict(color=color, dash="dot", width=1.5),
                            name="targets", legendgroup="targets", showlegend=i == 0, legendrank=2000,
                            meta={"layer": layer, "role": "target"})
            values.append(np.asarray(ty))
    default = "log" if column in ("sigma_max", "frobenius", "op_sigma_max") else "linear"
    flat = np.concatenate([np.ravel(v) for v in values]) if values else np.empty(0)
    fig.update_layout(xaxis_title="epoch", yaxis_title=column_title(column))
    fig.update_yaxes(**y_axis(view.scale(default), flat))
    return _finish(fig, f"{run}: {column.replace('_', ' ')} per layer", view, TARGET_NOTE if targets else "")


def target_figure(study, layer: str, view: View = View()) -> go.Figure:
    """How far ``layer``'s spectrum sits above its spectral target, per run over epochs: the number
    of singular values above it (``n_above_target``) and, where recorded, ``excess`` (the sum of
    sigma_i - target above it, over the target). Panels only for the columns with values."""
    columns = [c for c in ("n_above_target", "excess") if has_values(study.layers, c)]
    if not columns:
        raise ValueError("no n_above_target or excess values in these runs: their layers.csv predate the probe, "
                         "or no run has spectral targets")
    return columns_figure(study, layer, columns, view, f"singular values above the spectral target: {layer}")


def operator_figure(study, layer: str, view: View = View()) -> go.Figure:
    """sigma_max of ``layer`` two ways, side by side on one y axis: the blog's reshape (out, in*kh*kw)
    and the conv as an operator on its feature map (``op_sigma_max``; NaN for non-conv layers and older runs)."""
    return columns_figure(study, layer, ["sigma_max", "op_sigma_max"], view,
                          f"reshape vs operator spectral norm: {layer}", scales={"sigma_max": "log", "op_sigma_max": "log"},
                          titles=("reshape (out, in*kh*kw)", "operator on the feature map"), shared_y=True)


def group_columns(study) -> list[str]:
    """Columns a seed band can be drawn for: the epochs table's metrics, then per-layer columns with values."""
    epoch_cols = [c for c in ("test_acc", "train_acc", "clean_test_acc", "test_loss", "train_loss", "clean_test_loss",
                              "gap_acc", "gap_loss") if has_values(study.epochs, c)]
    return epoch_cols + [c for c in LAYER_COLUMNS_SHOWN if has_values(study.layers, c)]


def group_figure(study, column: str = "test_acc", band: str = "minmax", layer: str | None = None,
                 view: View = View()) -> go.Figure:
    """``column`` over epochs per configuration: the mean over seeds with a band (min-max or std).

    ``column`` comes from the epochs table, or from layers.csv for ``layer`` (sigma_max, ranks, ...).
    A configuration is drawn where any of its runs is selected.
    """
    per_layer = column in LAYER_COLUMNS_SHOWN
    if per_layer and layer is None:
        raise ValueError(f"column={column!r} is a per-layer column: give layer=")
    table = study.layers[study.layers.layer == layer] if per_layer else study.epochs
    fig = go.Figure()
    values = []
    if len(table) and column in table:
        curves = group_curves(table, column, band)
        shown = None if view.selected is None else {study.groups[r] for r in view.selected}
        for group, c in curves.groupby("group", sort=False):
            color, n = group_color(study, group), int(c.n.max())
            vis = True if shown is None or group in shown else "legendonly"
            k = unit_factor(column)
            mean = smooth(c["mean"] * k, view.smoothing) if view.smoothing else c["mean"].to_numpy() * k
            for role, y, extra in (("lo", c.lo * k, {}), ("hi", c.hi * k, dict(fill="tonexty"))):
                fig.add_scatter(x=c.epoch, y=y, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip",
                                fillcolor=rgba(color, 0.2), legendgroup=group, visible=vis,
                                meta={"group": group, "role": role}, **extra)
            fig.add_scatter(x=c.epoch, y=mean, mode="lines", name=f"{group} (n={n})", line=dict(color=color),
                            legendgroup=group, visible=vis, meta={"group": group, "role": "mean"})
            if vis is True:
                values += [c.lo.to_numpy() * k, c.hi.to_numpy() * k]
    band_name = "min-max" if band == "minmax" else "+/- 1 std"
    default = "log" if column in ("sigma_max", "frobenius", "op_sigma_max") else "linear"
    flat = np.concatenate(values) if values else np.empty(0)
    what = f"{column} of {layer}" if per_layer else column
    fig.update_layout(xaxis_title="epoch", yaxis_title=column_title(column))
    fig.update_yaxes(**y_axis(view.scale(default), flat))
    return _finish(fig, f"{what} by configuration: mean over seeds, {band_name} band", view)
