"""Live plotly FigureWidgets: as wide as their cell, and brought to a fresh figure's state by sending only changes.

Width: plotly's anywidget front end draws a figure before its element is on the page, so a
figure without a width comes out at plotly's default 700 px whatever the cell, and it never
measures again. A :class:`FitWidget` turns on plotly's ``responsive`` option (the figure
re-measures its cell on every window ``resize`` event), and a :class:`ResizeNudge` placed
beside the figures fires that event a few times after they render, again whenever its own width
changes (a side bar opened or closed, the window resized), and when :meth:`ResizeNudge.nudge`
is called after figures were replaced.

A dashboard rebuilds a ``go.Figure`` from the study and the controls (cheap: no rendering), then
:func:`sync_figure` compares it with the widget, property by property, and assigns only the
differences inside one ``batch_update``: a browser receives one message with the changed arrays,
not the whole figure. Where the traces themselves differ (a run appeared, a panel was added),
the widget's traces are replaced. The axis range and autorange the user set by zooming are kept
unless the fresh figure fixes them.
"""
from __future__ import annotations

import anywidget
import numpy as np
import plotly.graph_objects as go
import traitlets

USER_STATE = frozenset({"range", "autorange"})  # set by zooming in the browser: left alone
WIDGET_STATE = USER_STATE | {"uid"}  # a FigureWidget names its traces: a fresh figure has no uids


class FitWidget(go.FigureWidget):
    """A FigureWidget that re-measures its cell on window resize events (plotly's ``responsive``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._config = {**(self._config or {}), "responsive": True}


class ResizeNudge(anywidget.AnyWidget):
    """An invisible widget that makes responsive plotly figures fit their cell (see the module's docstring)."""

    _esm = """
    export default {
      render({ model, el }) {
        el.style.width = "100%";
        el.style.height = "1px";
        const fire = () => window.dispatchEvent(new Event("resize"));
        let timers = [];
        const soon = () => {  // figures render a little after their widget appears: try a few times
          timers.forEach(clearTimeout);
          timers = [150, 600, 1500, 4000].map((ms) => setTimeout(fire, ms));
        };
        let width = 0;
        const watch = new ResizeObserver((entries) => {
          const w = Math.round(entries[0].contentRect.width);
          if (w && w !== width) { width = w; soon(); }
        });
        watch.observe(el);
        model.on("change:pulse", soon);
        soon();
        return () => { watch.disconnect(); timers.forEach(clearTimeout); };
      },
    };
    """
    pulse = traitlets.Int(0).tag(sync=True)

    def nudge(self) -> None:
        """Ask the browser to fit the figures again (after figure widgets were created or replaced)."""
        self.pulse += 1


def same(a, b) -> bool:
    """Equality for plotly property values: arrays element-wise (NaN equals NaN), dicts and lists deeply."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and any(isinstance(v, dict) for v in [*a, *b]):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        try:
            x, y = np.asarray(a), np.asarray(b)
        except ValueError:  # ragged: compare as lists
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            try:
                return bool(np.array_equal(x.astype(float), y.astype(float), equal_nan=True))
            except (TypeError, ValueError):
                return False
        return bool(np.array_equal(x, y))
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def diff(old: dict, new: dict, keep: frozenset = USER_STATE) -> dict:
    """The update that turns ``old`` into ``new``: changed values, and None for keys ``new`` lacks
    (except ``keep``, user state). Nested dicts are compared key by key."""
    out = {}
    for key, value in new.items():
        was = old.get(key)
        if isinstance(value, dict) and isinstance(was, dict):
            sub = diff(was, value, keep)
            if sub:
                out[key] = sub
        elif not same(was, value):
            out[key] = value
    for key in old.keys() - new.keys():
        if key not in keep and old[key] is not None:
            out[key] = None
    return out


def _signature(fig) -> list:
    return [(t.type, repr(t.meta)) for t in fig.data]


def sync_figure(widget: go.FigureWidget, fresh: go.Figure) -> int:
    """Make ``widget`` show ``fresh``; returns the number of traces and layout keys that changed
    (-1 where the traces were replaced)."""
    if _signature(widget) != _signature(fresh):
        with widget.batch_update():
            widget.layout = fresh.layout
        widget.data = []
        widget.add_traces(list(fresh.data))
        return -1
    changed = 0
    with widget.batch_update():
        for trace, new in zip(widget.data, fresh.data):
            update = diff(trace.to_plotly_json(), new.to_plotly_json(), WIDGET_STATE)
            update.pop("type", None)
            if update:
                trace.update(update)
                changed += 1
        old_layout, new_layout = widget.layout.to_plotly_json(), fresh.layout.to_plotly_json()
        update = diff({k: v for k, v in old_layout.items() if k != "template"},
                      {k: v for k, v in new_layout.items() if k != "template"})
        if update:
            widget.layout.update(update)
            changed += len(update)
    return changed
