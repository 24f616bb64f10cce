"""The JupyterLab dashboard: ipywidgets controls over plotly ``FigureWidget``s of a Study.

``DashboardApp(source)`` adds a folder picker in front of a :class:`Dashboard`. Each figure is a
pure function of the study and the controls (nslab.figures, nslab.spectrum_figures); a control
rebuilds the figures it affects and :func:`~nslab.figure_sync.sync_figure` sends only what
changed. The epoch slider is faster still: it swaps one array per run of the spectrum, and the
time series' epoch cursors follow once it pauses. So a sweep of 12 runs x 200 epochs scrubs
without stalling. Figures are as wide as their cell (nslab.figure_sync).

Live: while "auto-refresh" is on, the run folders are polled every few seconds (nslab.live) and
the figures follow new epochs and new runs in place. Runs that are still running are marked.
Linked: picking runs, or clicking a run's legend entry in any figure, filters every figure.
"""
from __future__ import annotations

import datetime
import html
import os

import ipywidgets as widgets
import plotly.graph_objects as go

from . import analysis, figures, report, spectrum_figures
from .analysis import Source, Study, has_values
from .figure_sync import FitWidget, ResizeNudge, sync_figure
from .live import Debounce, FolderWatch, Poller, refresh_study
from .paths import resolve
from .plotting import View, set_cursor

RUNNING = "running"


class Dashboard:
    """Widgets and figures over one Study. ``widget`` is the whole dashboard (a VBox).

    ``source``: the folders the study was read from; with it, :meth:`refresh` (and auto-refresh
    every ``refresh_seconds``, 0 = off) follows runs as they are written.
    """

    def __init__(self, study: Study, selected=None, export_dir: str = "outputs/exports", source: Source | None = None,
                 refresh_seconds: float = 3.0):
        if not study.names:
            raise ValueError("the dashboard needs at least one run")
        self.study = study
        self.watch = FolderWatch(source) if source is not None else None
        names = study.names
        self.header = widgets.HTML()
        self.runs = widgets.SelectMultiple(options=self._run_options(), value=tuple(selected or names),
                                           rows=min(len(names), 8), description="runs",
                                           layout=widgets.Layout(width="440px"))
        epochs = study.spectra.all_epochs() or [0]
        layers = study.layer_names or [""]
        self.layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")
        self.epoch = widgets.SelectionSlider(options=epochs, value=epochs[0], description="epoch",
                                             continuous_update=True, layout=widgets.Layout(width="360px"))
        self.heat_run = widgets.Dropdown(options=names, value=names[0], description="heat map")
        self.smoothing = widgets.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, description="smoothing",
                                             continuous_update=False, readout_format=".2f",
                                             layout=widgets.Layout(width="300px"))
        narrow = {"description_width": "initial"}
        self.yscale = widgets.Dropdown(options=[("each panel's default", "default"), ("linear", "linear"), ("log", "log")],
                                       value="default", description="y axes", style=narrow,
                                       layout=widgets.Layout(width="210px"))
        self.column = widgets.Dropdown(options=figures.group_columns(study), value="test_acc", description="seed band of",
                                       style=narrow, layout=widgets.Layout(width="230px"))
        self.band = widgets.Dropdown(options=[("min-max", "minmax"), ("+/- 1 std", "std")], value="minmax",
                                     layout=widgets.Layout(width="110px"))
        self.auto = widgets.Checkbox(value=bool(self.watch and refresh_seconds > 0), description="auto-refresh",
                                     indent=False, layout=widgets.Layout(width="120px", margin="0 0 0 16px"),
                                     disabled=self.watch is None or refresh_seconds <= 0)
        self.notice = widgets.HTML()
        self.table = widgets.HTML()
        self.export_dir = widgets.Text(value=export_dir, description="export to")
        self.export_button = widgets.Button(description="export PNG, SVG, CSV, LaTeX", icon="download",
                                            layout=widgets.Layout(width="260px"))
        self.message = widgets.HTML()
        self._syncing = False
        self.updated = ""
        # Moving a shape makes plotly recalculate the whole figure (~0.1 s each): the time series'
        # cursors follow once the slider pauses, the spectrum at every step.
        self._move_cursors = Debounce(self.move_cursors, 0.3)

        self.figs: dict[str, go.FigureWidget] = {}
        self.fit = ResizeNudge()  # figures as wide as the cell (nslab.figure_sync)
        self.figure_box = widgets.VBox(layout=widgets.Layout(width="100%"))
        self._rebuild_all()

        self._quiet = False  # set while _update_options changes the controls: one redraw afterwards
        self._on(self.epoch, self.update_epoch)
        self._on(self.layer, self.redraw)
        self._on(self.runs, self.redraw)
        self._on(self.heat_run, lambda: self.redraw(["spectrum"]))
        for w in (self.smoothing, self.yscale):
            self._on(w, lambda: self.redraw([n for n in self.figs if n != "spectrum"]))
        for w in (self.column, self.band):
            self._on(w, lambda: self.redraw(["groups"]))
        self.auto.observe(lambda _: self._auto_changed(), "value")
        self.export_button.on_click(lambda _: self.export())
        self.poller = Poller(self.refresh, refresh_seconds, self._poll_failed) if refresh_seconds > 0 else None

        wrap = widgets.Layout(flex_flow="row wrap", align_items="center")
        self.widget = widgets.VBox([
            widgets.HBox([self.header, self.auto], layout=widgets.Layout(align_items="center")),
            widgets.HBox([self.runs, widgets.VBox([self.layer, self.epoch, self.heat_run])], layout=wrap),
            widgets.HBox([self.smoothing, self.yscale, self.column, self.band], layout=wrap),
            self.notice, self.figure_box,
            widgets.HTML("<b>runs</b> (final epoch; accuracy in %; the configuration fields that differ between "
                         "the selected runs)"), self.table,
            widgets.HBox([self.export_dir, self.export_button]), self.message], layout=widgets.Layout(width="100%"))
        self._describe()
        if self.auto.value:
            self._auto_changed()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _on(self, control, action) -> None:
        control.observe(lambda _: None if self._quiet else action(), "value")

    # -- what is shown ---------------------------------------------------------------------
    @property
    def view(self) -> View:
        return View(selected=frozenset(self.runs.value), smoothing=self.smoothing.value, yscale=self.yscale.value,
                    epoch=self.epoch.value)

    def builders(self) -> dict:
        """Figure name -> a function building that figure from the study and the controls, in display order."""
        s, layer, view = self.study, self.layer.value, self.view
        out = {"spectrum": lambda: spectrum_figures.spectrum_figure(s, layer, self.epoch.value, view, self.heat_run.value),
               "sigma_max": lambda: figures.sigma_max_figure(s, layer, view),
               "training": lambda: figures.training_figure(s, view),
               "ranks": lambda: figures.rank_figure(s, layer, view)}
        if has_values(s.layers, "n_above_target") or has_values(s.layers, "excess"):
            out["targets"] = lambda: figures.target_figure(s, layer, view)
        if has_values(s.layers, "op_sigma_max"):
            out["operator"] = lambda: figures.operator_figure(s, layer, view)
        column = self.column.value
        out["groups"] = lambda: figures.group_figure(s, column, self.band.value, layer, view)
        return out

    def _rebuild_all(self) -> None:
        self.figs = {name: FitWidget(build()) for name, build in self.builders().items()}
        self._watch_legends()
        self.figure_box.children = [self.fit, *self.figs.values()]
        self.fit.nudge()

    def redraw(self, names=None) -> None:
        """Bring the named figures (all by default) up to date with the study and the controls."""
        builders = self.builders()
        if set(builders) != set(self.figs):  # a probe column appeared (live refresh): new panel set
            self._rebuild_all()
        else:
            self._syncing = True
            try:
                for name in names or builders:
                    if sync_figure(self.figs[name], builders[name]()) < 0:
                        self._watch_legends([name])
            finally:
                self._syncing = False
        self._describe()

    def update_epoch(self) -> None:
        """The slider's fast path: each run's spectrum and target swapped, the title and the heat map's
        cursor moved; the time series' cursors follow when the slider pauses (:meth:`move_cursors`)."""
        layer, epoch, fig = self.layer.value, self.epoch.value, self.figs["spectrum"]
        self._syncing = True
        try:
            with fig.batch_update():
                lengths = {}
                for t in fig.data:
                    run, role = t.meta["run"], t.meta["role"]
                    if role == "spectrum":
                        t.x, t.y = spectrum_figures.spectrum_xy(self.study, run, layer, epoch)
                        lengths[run] = len(t.y)
                    elif role == "target":  # follows its run's spectrum trace, which comes first
                        t.x, t.y = spectrum_figures.target_xy(self.study, run, layer, epoch, lengths.get(run, 0))
                fig.layout.title.text = spectrum_figures.spectrum_title(layer, epoch)
                set_cursor(fig, epoch)
        finally:
            self._syncing = False
        self._move_cursors()

    def move_cursors(self) -> None:
        """The epoch cursors of the time-series figures to the slider's epoch."""
        for name, fig in self.figs.items():
            if name != "spectrum":
                with fig.batch_update():
                    set_cursor(fig, self.epoch.value)

    # -- linked views: a legend click in any figure (de)selects that run everywhere -------------
    def _watch_legends(self, names=None) -> None:
        for name in names or self.figs:
            for t in self.figs[name].data:
                if t.meta and "run" in t.meta and t.showlegend is not False:
                    t.on_change(self._legend_clicked, "visible")

    def _legend_clicked(self, trace, visible) -> None:
        if self._syncing:
            return
        run, selected = trace.meta["run"], list(self.runs.value)
        if visible == "legendonly" and run in selected:
            selected.remove(run)
        elif visible is True and run not in selected:
            selected.append(run)
        else:
            return
        self.runs.value = tuple(n for n in self.study.names if n in selected)

    # -- live -----------------------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Read again the run folders that changed (new epochs, new runs) and update every figure in place.

        Returns the run folders read again (empty when nothing changed)."""
        if self.watch is None:
            raise ValueError("this dashboard was built without a source folder: nothing to refresh from")
        study, changed = refresh_study(self.study, self.watch)
        if not changed and study is self.study:
            self._describe()
            return []
        self.study = study
        self._update_options()
        self.updated = datetime.datetime.now().strftime("%H:%M:%S")
        self.redraw()
        return changed

    def _update_options(self) -> None:
        """Runs, epochs, layers and columns of the new study, keeping what the user picked where it still exists.

        Changing a control's options resets its value (ipywidgets): the callbacks are held off meanwhile."""
        s = self.study
        known = {value for _, value in self.runs.options}
        chosen = set(self.runs.value)
        epochs = s.spectra.all_epochs() or [0]
        at_end = self.epoch.value == self.epoch.options[-1]
        epoch = epochs[-1] if at_end or self.epoch.value not in epochs else self.epoch.value
        self._quiet = True
        try:
            for w, options, value in (
                    (self.runs, self._run_options(), tuple(n for n in s.names if n in chosen or n not in known)),
                    (self.epoch, epochs, epoch), (self.layer, s.layer_names or [""], self.layer.value),
                    (self.heat_run, s.names, self.heat_run.value), (self.column, figures.group_columns(s), self.column.value)):
                if list(w.options) != list(options):
                    w.options = options
                if w is self.runs or w is self.epoch:
                    w.value = value
                else:
                    w.value = value if value in options else options[0]
        finally:
            self._quiet = False

    def _run_options(self) -> list[tuple[str, str]]:
        out = []
        for name in self.study.names:
            status = self.study.status(name)
            if status == "completed":
                out.append((name, name))
                continue
            done = self.study.epoch_rows(name).epoch.max() if len(self.study.epoch_rows(name)) else 0
            out.append((f"{name} [{status} {int(done)}/{self.study.runs[name].config.get('epochs')}]", name))
        return out

    def _auto_changed(self) -> None:
        if self.poller is None:
            return
        if not self.auto.value:
            self.poller.stop()
        else:
            try:
                self.poller.start()
            except RuntimeError as err:
                self.auto.value = False
                self.message.value = html.escape(str(err))
        self._describe()

    def _poll_failed(self, err: BaseException) -> None:
        self.auto.value = False
        self.message.value = f"<span style='color:#b00'>auto-refresh stopped: {html.escape(repr(err))}</span>"

    def stop(self) -> None:
        """Stop polling the run folders."""
        self.auto.value = False

    def _describe(self) -> None:
        s = self.study
        running = [n for n in s.names if s.status(n) == RUNNING]
        live = (f"; <b style='color:#c60'>{len(running)} running</b>" if running else "")
        when = f"; updated {self.updated}" if self.updated else ""
        self.header.value = (f"<b>{len(s.names)} runs</b> in {len(set(s.groups.values()))} configurations"
                             f"{live}{when}")
        if not self.runs.value:
            self.notice.value = ("<p style='color:#a33'><b>No runs selected.</b> Pick runs in the list above "
                                 "(ctrl-click or shift-click for several), or click a run's name in a legend.</p>")
            self.figure_box.layout.display = "none"
        else:
            self.notice.value = ""
            if self.figure_box.layout.display == "none":  # figures drawn while hidden have no width
                self.fit.nudge()
            self.figure_box.layout.display = None
        self.table.value = runs_table_html(s, self.runs.value)

    # -- export ------------------------------------------------------------------------------
    def export(self, formats=("png", "svg")) -> list[str]:
        """Write the figures as they are now (PNG, SVG, each at its own size) and the tables (CSV, LaTeX)
        into ``export_dir`` (relative: nslab.paths.resolve, the repository root from notebooks/)."""
        out = resolve(self.export_dir.value)
        written = report.export_tables(report.report_tables(self.study), out)
        note = ""
        try:
            written += report.export_figures(self.figs, out, formats)
        except RuntimeError as err:
            note = f"<br>figures not exported: {html.escape(str(err))}"
        self.message.value = f"wrote {len(written)} files to <code>{html.escape(out)}</code>{note}"
        return written


SUMMARY_SHOWN = ("status", "epochs_done", "epochs_planned", "train_acc", "test_acc", "clean_test_acc", "test_loss",
                 "gap_acc", "mean_sigma_max_last", "seconds")


def runs_table_html(study: Study, selected) -> str:
    """The selected runs' final numbers, with the configuration fields whose values differ between them."""
    names = [n for n in study.names if n in set(selected)]
    if not names:
        return ""
    s = analysis.summary_table(study).set_index("run").loc[names]
    configs = [study.runs[n].config for n in names]
    diff = analysis.differing_fields(configs) if len(names) > 1 else []
    for key in diff:
        s[key] = [analysis._fmt(c.get(key)) for c in configs]
    return report.html_table(s.reset_index(), ["run", *diff, *SUMMARY_SHOWN],
                             cell_style="white-space:nowrap;padding:1px 6px;text-align:right", font_size="12px")


def list_sources(root: str = "outputs") -> list[str]:
    """Sweep and run folders directly under ``root`` (for the folder picker)."""
    if not os.path.isdir(root):
        return []
    found = []
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d)
        if os.path.isdir(path) and (analysis.is_run_dir(path) or any(
                analysis.is_run_dir(os.path.join(path, s)) for s in os.listdir(path))):
            found.append(path)
    return found


class DashboardApp:
    """A folder picker (sweep folder, run folder, or several separated by commas) and its Dashboard.

    Relative folders are read by :func:`nslab.paths.resolve` (from notebooks/: the repository root).
    """

    def __init__(self, source: Source | None = None, root: str = "outputs", export_dir: str = "outputs/exports",
                 refresh_seconds: float = 3.0):
        text = source if isinstance(source, str) else ", ".join(map(str, source or []))
        self.export_dir, self.refresh_seconds = export_dir, refresh_seconds
        self.path = widgets.Combobox(value=text, options=list_sources(resolve(root)), ensure_option=False,
                                     description="runs from", placeholder="a sweep folder, or run folders a, b",
                                     layout=widgets.Layout(width="600px"))
        self.load_button = widgets.Button(description="load", icon="folder-open")
        self.message = widgets.HTML()
        self.area = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.dashboard: Dashboard | None = None
        self.load_button.on_click(lambda _: self.load())
        self.widget = widgets.VBox([widgets.HBox([self.path, self.load_button]), self.message, self.area],
                                   layout=widgets.Layout(width="100%"))
        if text:
            self.load()

    def load(self) -> None:
        """Load the folders in the picker: a spinner while loading; on an error, the message and no dashboard."""
        parts = [resolve(p.strip()) for p in self.path.value.split(",") if p.strip()]
        source = parts[0] if len(parts) == 1 else parts
        self.load_button.disabled, self.load_button.icon = True, "spinner spin"
        self.message.value = f"<i>loading {html.escape(', '.join(parts))} ...</i>"
        if self.dashboard is not None:
            self.dashboard.stop()
        try:
            study = analysis.load_study(source)
            self.dashboard = Dashboard(study, export_dir=self.export_dir, source=source,
                                       refresh_seconds=self.refresh_seconds)
        except (FileNotFoundError, ValueError) as err:
            self.dashboard = None
            self.area.children = []
            self.message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        finally:
            self.load_button.disabled, self.load_button.icon = False, "folder-open"
        self.message.value = f"loaded {len(study.names)} runs from {html.escape(', '.join(parts))}"
        self.area.children = [self.dashboard.widget]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


__all__ = ["Dashboard", "DashboardApp", "list_sources", "runs_table_html"]
