"""What every nslab figure shares: colours per run, what a view shows, units, axes that read right, sizes.

Figures are responsive: no fixed width, so they follow the notebook cell or the page
(``autosize``). Exports need a size, so :func:`figure_size` gives each figure its own from its
panel count. Accuracies are shown in percent everywhere (run tables store fractions).
Log axes get ticks from their data range (:func:`log_axis`): decades only over wide ranges,
1-2-5 steps over one or two decades, so minor labels never crowd ("7 6 5 4 3 2 1 9 8 7").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
PANEL_WIDTH, LEGEND_WIDTH, HEIGHT = 420, 60, 460  # export size of a figure: panels side by side plus margins
YSCALES = ("default", "linear", "log")
CURSOR = "epoch cursor"


@dataclass(frozen=True)
class View:
    """What a figure shows of a study: which runs, smoothing, y scale, and the epoch cursor.

    ``selected``: run names drawn (None: all); the others stay in the legend, greyed, so that
    clicking them brings them back. ``smoothing``: EMA weight in [0, 1) for time series.
    ``yscale``: ``default`` (each panel's own), ``linear`` or ``log`` for time series.
    ``epoch``: where the epoch cursor (a vertical line) stands on time series; None: no cursor.
    """

    selected: frozenset | None = None
    smoothing: float = 0.0
    yscale: str = "default"
    epoch: int | None = None

    def __post_init__(self):
        if self.yscale not in YSCALES:
            raise ValueError(f"yscale={self.yscale!r} is not allowed: choose one of {list(YSCALES)}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing={self.smoothing!r} is not allowed: a weight in [0, 1)")
        if self.selected is not None:
            object.__setattr__(self, "selected", frozenset(self.selected))

    def visible(self, run: str):
        return True if self.selected is None or run in self.selected else "legendonly"

    def scale(self, default: str) -> str:
        return default if self.yscale == "default" else self.yscale


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


def rgba(hex_color: str, a: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"


# --- units ------------------------------------------------------------------------------------
def unit_factor(column: str) -> float:
    """100 for accuracy columns (stored as fractions, shown in percent), else 1."""
    return 100.0 if column.endswith("_acc") else 1.0


def column_title(column: str) -> str:
    words = column.replace("_", " ")
    return f"{words} (%)" if column.endswith("_acc") else words


# --- axes -------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About ``n`` round values (steps of 1, 2 or 5 times a power of ten) between ``lo`` and ``hi``."""
    raw = (hi - lo) / max(n - 1, 1)
    if not raw > 0:
        return np.array([lo])
    power = 10 ** np.floor(np.log10(raw))
    step = power * min((1, 2, 5, 10), key=lambda m: abs(m * power - raw))
    ticks = np.arange(np.ceil(lo / step) * step, hi + step / 2, step)
    return np.round(ticks[(ticks >= lo) & (ticks <= hi)], 12)


def log_axis(values) -> dict:
    """Axis settings for a log axis over ``values`` (non-positive and non-finite ones ignored).

    Up to a decade, round linear steps (0.3, 0.4, 0.5: plotly would label one value or crowd
    minor digits); up to 2.5 decades 1, 2, 5 with full labels (0.5, 1, 2); wider ranges show
    decades only. ``values``: what is drawn (hidden runs left out, as plotly's autorange does).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    axis = {"type": "log", "dtick": None, "tickformat": None, "exponentformat": "B", "tickmode": None, "tickvals": None}
    if not len(v):
        return axis
    span = np.log10(v.max() / v.min())
    if span > 2.5:
        axis.update(dtick=1, exponentformat="power")
    elif span > 1:
        axis.update(dtick="D2", tickformat=".2~g")
    elif span > 0:
        axis.update(tickmode="array", tickvals=nice_ticks(v.min(), v.max()).tolist(), tickformat=".3~g")
    return axis


def y_axis(scale: str, values) -> dict:
    """``log_axis(values)`` for ``scale == "log"``, else a plain linear axis (ticks reset to plotly's)."""
    if scale == "log":
        return log_axis(values)
    return {"type": "linear", "dtick": None, "tickformat": None, "tickmode": None, "tickvals": None}


def padded_log_range(values, pad: float = 0.05, min_span: float = 0.3) -> list[float] | None:
    """A fixed log10 range over ``values``: padded, and at least ``min_span`` decades wide.

    A flat spectrum (orthogonal init: every sigma_i equal to 7 digits) would otherwise autoscale
    to float noise (ticks 0.40824815 ... 0.40824845) and look like a decaying curve.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return None
    lo, hi = np.log10(v.min()), np.log10(v.max())
    half = max((hi - lo) / 2 + pad, min_span / 2)
    mid = (hi + lo) / 2
    return [float(mid - half), float(mid + half)]


# --- layout -----------------------------------------------------------------------------------
def base_layout(fig: go.Figure, title: str, height: int = HEIGHT, unified: bool = True) -> go.Figure:
    """Responsive (no width), a full-name hover across runs at one x, the legend under the panels.

    The legend goes below so that the panels keep the cell's width: at 1280 px with JupyterLab's
    side bar open a cell is about 850 px, too narrow for three panels and a legend beside them.
    """
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", xref="paper"), height=height, autosize=True,
                      margin=dict(l=60, r=20, t=80, b=40), hovermode="x unified" if unified else "closest",
                      hoverlabel=dict(namelength=-1),
                      legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top", font=dict(size=11)))
    fig.update_annotations(font_size=13)  # subplot titles
    return fig


def n_panels(fig: go.Figure) -> int:
    """Panels side by side: x axes whose domains start at distinct places."""
    layout = fig.layout.to_plotly_json()
    starts = {round(layout[k].get("domain", [0, 1])[0], 3) for k in layout if k.startswith("xaxis")}
    return max(len(starts), 1)


def figure_size(fig: go.Figure) -> tuple[int, int]:
    """(width, height) in layout pixels to export ``fig`` at: its own if set, else from its panel count."""
    width = fig.layout.width or PANEL_WIDTH * n_panels(fig) + LEGEND_WIDTH
    return int(width), int(fig.layout.height or HEIGHT)


def epoch_axes(fig: go.Figure) -> list[str]:
    """Layout keys of the x axes titled "epoch"."""
    layout = fig.layout.to_plotly_json()
    return sorted(k for k in layout if k.startswith("xaxis") and (layout[k].get("title") or {}).get("text") == "epoch")


def whole_epochs(fig: go.Figure) -> None:
    """Epoch axes tick at whole epochs where the runs are short (plotly would also mark 1.5, 2.5)."""
    xs = [np.asarray(t.x, dtype=float) for t in fig.data if t.type == "scatter" and t.x is not None and len(t.x)]
    span = max((x.max() for x in xs), default=0) - min((x.min() for x in xs), default=0)
    for key in epoch_axes(fig):
        fig.layout[key].dtick = 1 if span <= 12 else None


def cursor_shapes(fig: go.Figure, epoch: int | None) -> None:
    """A thin vertical line at ``epoch`` in every panel whose x axis is epochs (shapes named ``CURSOR``)."""
    if epoch is None:
        return
    for key in epoch_axes(fig):
        suffix = key[len("xaxis"):]
        fig.add_shape(type="line", x0=epoch, x1=epoch, xref=f"x{suffix}", y0=0, y1=1, yref=f"y{suffix} domain",
                      line=dict(color="rgba(60,60,60,0.45)", width=1, dash="dot"), layer="below", name=CURSOR)


def set_cursor(fig, epoch: int) -> None:
    """Move the epoch cursors of ``fig`` (a Figure or FigureWidget) to ``epoch``, in place."""
    for shape in fig.layout.shapes:
        if shape.name == CURSOR:
            shape.x0 = shape.x1 = epoch
