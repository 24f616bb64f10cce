"""The JupyterLab dashboard: ipywidgets controls over plotly ``FigureWidget``s of a Study.

``DashboardApp(source)`` adds a folder picker in front of a :class:`Dashboard`. The
figures are built once for every run (nslab.figures); the controls then change traces in
place inside ``batch_update``: the epoch slider swaps one array per run from the spectra
index, the run picker toggles ``visible``. Nothing is re-read or rebuilt, so a sweep of
12 runs x 200 epochs scrubs without stalling. Loading and reshaping live in nslab.analysis.
"""
from __future__ import annotations

import html
import os

import ipywidgets as widgets
import plotly.graph_objects as go

from . import analysis, figures, report
from .analysis import Source, Study

GROUP_COLUMNS = ("test_acc", "train_acc", "test_loss", "train_loss", "gap_acc", "gap_loss")


class Dashboard:
    """Widgets and figures over one Study. ``widget`` is the whole dashboard (a VBox)."""

    def __init__(self, study: Study, selected=None, export_dir: str = "exports"):
        if not study.names:
            raise ValueError("the dashboard needs at least one run")
        self.study = study
        names = study.names
        epochs = study.spectra.all_epochs() or [0]
        layers = study.layer_names or [""]
        self.runs = widgets.SelectMultiple(options=names, value=tuple(selected or names), rows=min(len(names), 8),
                                           description="runs", layout=widgets.Layout(width="420px"))
        self.layer = widgets.Dropdown(options=layers, value=layers[0], description="layer")
        self.epoch = widgets.SelectionSlider(options=epochs, value=epochs[0], description="epoch",
                                             continuous_update=True, layout=widgets.Layout(width="480px"))
        self.column = widgets.Dropdown(options=GROUP_COLUMNS, value="test_acc", description="grouped")
        self.band = widgets.ToggleButtons(options=[("min-max", "minmax"), ("std", "std")], value="minmax",
                                          description="seed band")
        sel = set(self.runs.value)
        self.spectrum = go.FigureWidget(figures.spectrum_figure(study, self.layer.value, self.epoch.value, sel))
        self.sigma = go.FigureWidget(figures.sigma_max_figure(study, self.layer.value, sel))
        self.training = go.FigureWidget(figures.training_figure(study, sel))
        self.ranks = go.FigureWidget(figures.rank_figure(study, self.layer.value, sel))
        self.groups = go.FigureWidget(figures.group_figure(study, self.column.value, self.band.value))
        self.table = widgets.HTML(_table_html(analysis.summary_table(study)))
        self.export_dir = widgets.Text(value=export_dir, description="export to")
        self.export_button = widgets.Button(description="export PNG, SVG, CSV, LaTeX", icon="download",
                                            layout=widgets.Layout(width="260px"))
        self.message = widgets.HTML()

        self.epoch.observe(lambda _: self.update_spectrum(), "value")
        self.layer.observe(lambda _: self.update_layer(), "value")
        self.runs.observe(lambda _: self.update_selection(), "value")
        self.column.observe(lambda _: self.update_groups(), "value")
        self.band.observe(lambda _: self.update_groups(), "value")
        self.export_button.on_click(lambda _: self.export())
        self.update_selection()

        controls = widgets.VBox([self.layer, self.epoch, self.column, self.band])
        self.widget = widgets.VBox([
            widgets.HTML(f"<b>{len(names)} runs</b> in {len(set(study.groups.values()))} configurations"),
            widgets.HBox([self.runs, controls]),
            self.spectrum, self.sigma, self.training, self.ranks, self.groups,
            widgets.HTML("<b>runs</b> (accuracy in %, final epoch)"), self.table,
            widgets.HBox([self.export_dir, self.export_button]), self.message])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def figures(self) -> dict[str, go.FigureWidget]:
        return {"spectrum": self.spectrum, "sigma_max": self.sigma, "training": self.training, "ranks": self.ranks,
                "groups": self.groups}

    # -- callbacks: every one changes traces in place ---------------------------------------
    def update_spectrum(self) -> None:
        layer, epoch = self.layer.value, self.epoch.value
        with self.spectrum.batch_update():
            lengths = {}
            for t in self.spectrum.data:
                run = t.meta["run"]
                if t.meta["role"] == "spectrum":
                    t.x, t.y = figures.spectrum_xy(self.study, run, layer, epoch)
                    lengths[run] = len(t.y)
                else:  # the target trace follows its run's spectrum trace
                    t.x, t.y = figures.target_xy(self.study, run, layer, epoch, lengths.get(run, 0))
            self.spectrum.layout.title.text = figures.spectrum_title(layer, epoch)

    def update_layer(self) -> None:
        layer = self.layer.value
        self.update_spectrum()
        with self.sigma.batch_update():
            for t in self.sigma.data:
                rows = self.study.layer_rows(t.meta["run"], layer)
                if t.meta["role"] == "layer_sigma":
                    t.x, t.y = rows.epoch, rows.sigma_max
                elif t.meta["role"] == "layer_target":
                    t.x, t.y = figures._target_series(self.study, t.meta["run"], rows)
            self.sigma.layout.annotations[0].text = f"sigma_max of {layer}"
        with self.ranks.batch_update():
            for t in self.ranks.data:
                rows = self.study.layer_rows(t.meta["run"], layer)
                t.x, t.y = rows.epoch, rows[t.meta["role"]]
            self.ranks.layout.title.text = f"ranks of {layer}"

    def update_selection(self) -> None:
        selected = set(self.runs.value)
        for fig in (self.spectrum, self.sigma, self.training, self.ranks):
            with fig.batch_update():
                for t in fig.data:
                    t.visible = t.meta["run"] in selected
        shown = {self.study.groups[r] for r in selected}
        with self.groups.batch_update():
            for t in self.groups.data:
                t.visible = t.meta["group"] in shown

    def update_groups(self) -> None:
        fresh = figures.group_figure(self.study, self.column.value, self.band.value)
        with self.groups.batch_update():
            for t, new in zip(self.groups.data, fresh.data):
                t.x, t.y = new.x, new.y
            self.groups.layout.title.text = fresh.layout.title.text
            self.groups.layout.yaxis.title.text = self.column.value

    # -- export --------------------------------------------------------------------------
    def tables(self) -> dict:
        return report.report_tables(self.study)

    def export(self, formats=("png", "svg")) -> list[str]:
        """Write the figures as they are now (PNG, SVG) and the tables (CSV, LaTeX) into ``export_dir``."""
        out = self.export_dir.value
        written = report.export_tables(self.tables(), out)
        note = ""
        try:
            written += report.export_figures(self.figures, out, formats)
        except RuntimeError as err:
            note = f"<br>figures not exported: {html.escape(str(err))}"
        self.message.value = f"wrote {len(written)} files to <code>{html.escape(os.path.abspath(out))}</code>{note}"
        return written


def _table_html(df) -> str:
    cols = [c for c in ("run", "status", "epochs_done", "epochs_planned", "train_acc", "test_acc", "test_loss",
                        "gap_acc", "mean_sigma_max_last", "seconds") if c in df]
    return df[cols].to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)


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
    """A folder picker (sweep folder, run folder, or several separated by commas) and its Dashboard."""

    def __init__(self, source: Source | None = None, root: str = "outputs"):
        text = source if isinstance(source, str) else ", ".join(map(str, source or []))
        self.path = widgets.Combobox(value=text, options=list_sources(root), ensure_option=False,
                                     description="runs from", placeholder="a sweep folder, or run folders a, b",
                                     layout=widgets.Layout(width="600px"))
        self.load_button = widgets.Button(description="load")
        self.message = widgets.HTML()
        self.area = widgets.VBox()
        self.dashboard: Dashboard | None = None
        self.load_button.on_click(lambda _: self.load())
        self.widget = widgets.VBox([widgets.HBox([self.path, self.load_button]), self.message, self.area])
        if text:
            self.load()

    def load(self) -> None:
        parts = [p.strip() for p in self.path.value.split(",") if p.strip()]
        try:
            study = analysis.load_study(parts[0] if len(parts) == 1 else parts)
            self.dashboard = Dashboard(study)
        except (FileNotFoundError, ValueError) as err:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        self.message.value = f"loaded {len(study.names)} runs from {html.escape(self.path.value)}"
        self.area.children = [self.dashboard.widget]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


__all__ = ["Dashboard", "DashboardApp", "list_sources"]
