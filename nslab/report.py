"""Static reports and exports: HTML that works without a kernel or internet, PNG/SVG, CSV and LaTeX.

``write_report(source)`` writes one HTML file for a run or a sweep: tables, and plotly figures
whose singular-value spectra have one frame per checkpoint epoch, a slider, play/pause buttons
and arrow keys (click a spectrum, then left/right, Home/End). plotly.js is embedded once, inline,
in the first figure; the file opens from disk with no network.

``export_figures`` writes PNG/SVG through kaleido, which drives a Chrome or Chromium it finds on
the machine (Debian's ``chromium`` works; nothing is downloaded), each figure at its own size
(:func:`nslab.plotting.figure_size`). Where it cannot run, it raises RuntimeError saying so, and
tables are still written by ``export_tables``.

Command line (registered by :func:`add_parser`): ``nslab report RUN_OR_SWEEP_DIR [--out FILE]
[--export DIR]``.
"""
from __future__ import annotations

import datetime
import html
import os
import sys

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import analysis, figures, fidelity, spectrum_figures
from .analysis import Source, Study, has_values
from .paths import resolve
from .plotting import figure_size
from .records import atomic_path, write_table

IMAGE_FORMATS = ("png", "svg", "pdf", "jpeg", "webp")


# --- Exports -------------------------------------------------------------------------------
def export_tables(tables: dict[str, pd.DataFrame], out_dir: str) -> list[str]:
    """Write each table as ``<name>.csv`` and ``<name>.tex`` (LaTeX tabular, 4 significant digits)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, df in tables.items():
        csv, tex = os.path.join(out_dir, f"{name}.csv"), os.path.join(out_dir, f"{name}.tex")
        write_table(csv, df)
        with atomic_path(tex) as tmp:
            df.to_latex(tmp, index=False, float_format=lambda v: f"{v:.4g}", na_rep="--")
        written += [csv, tex]
    return written


def export_figures(figs: dict[str, go.Figure], out_dir: str, formats=("png", "svg"), scale: float = 2) -> list[str]:
    """Write each figure as ``<name>.<format>`` with kaleido (one browser session for all of them),
    each at its own size (:func:`figure_size`; PNG pixels are that size times ``scale``).

    Raises RuntimeError with the reason where kaleido or a Chrome/Chromium is missing.
    """
    for fmt in formats:
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"format={fmt!r} is not allowed: choose from {list(IMAGE_FORMATS)}")
    try:
        import kaleido  # noqa: F401
    except ImportError as err:
        raise RuntimeError("PNG/SVG export needs the kaleido package (pip install kaleido) and a Chrome or "
                           "Chromium on the machine (e.g. apt-get install chromium)") from err
    os.makedirs(out_dir, exist_ok=True)
    items = [(go.Figure(fig), os.path.join(out_dir, f"{name}.{fmt}"), fmt) for name, fig in figs.items() for fmt in formats]
    if not items:
        return []
    import plotly.io as pio

    sizes = [figure_size(f) for f, _, _ in items]
    try:
        # Sizes per figure: without them kaleido draws every figure at one default size.
        pio.write_images([f for f, _, _ in items], [p for _, p, _ in items], format=[m for _, _, m in items],
                         width=[w for w, _ in sizes], height=[h for _, h in sizes], scale=scale)
    except Exception as err:  # kaleido's errors for a missing browser vary by version: name the fix
        raise RuntimeError(f"kaleido could not render images ({type(err).__name__}: {err}); it needs a Chrome "
                           f"or Chromium on the machine (e.g. apt-get install chromium)") from err
    return [p for _, p, _ in items]


# --- Figures and tables of a report --------------------------------------------------------
def report_figures(study: Study, max_points: int = 400) -> list[tuple[str, go.Figure]]:
    """(heading, figure) pairs: spectra with an epoch slider (per layer for a sweep, all layers for
    one run), sigma_max, ranks, the target and operator probes where recorded, training curves and,
    with several seeds, the grouped curves."""
    out = []
    single = len(study.names) == 1
    if single:
        run = study.names[0]
        out.append(("singular values, every layer", spectrum_figures.spectrum_slider_figure(
            study, [(run, layer) for layer in study.layer_names], f"{run}: singular values", max_points)))
        out.append(("sigma_max per layer", figures.layers_figure(study, run)))
    else:
        for layer in study.layer_names:
            out.append((f"singular values of {layer}", spectrum_figures.spectrum_slider_figure(
                study, [(r, layer) for r in study.names], f"singular values of {layer}", max_points)))
    for layer in study.layer_names:
        out.append((f"sigma_max: {layer} and the spread across layers", figures.sigma_max_figure(study, layer)))
    for layer in study.layer_names:
        out.append((f"ranks of {layer}", figures.rank_figure(study, layer)))
    if has_values(study.layers, "n_above_target") or has_values(study.layers, "excess"):
        if single:
            out.append(("singular values above the spectral target, per layer",
                        figures.layers_figure(study, study.names[0], "n_above_target")))
        else:
            out += [(f"singular values above the spectral target: {layer}", figures.target_figure(study, layer))
                    for layer in study.layer_names]
    conv = [l for l in study.layer_names if study.layers.loc[study.layers.layer == l, "op_sigma_max"].notna().any()] \
        if has_values(study.layers, "op_sigma_max") else []
    out += [(f"reshape vs operator sigma_max: {layer}", figures.operator_figure(study, layer)) for layer in conv]
    out.append(("training curves", figures.training_figure(study)))
    if len(set(study.groups.values())) < len(study.names):
        out.append(("test accuracy by configuration (mean and band over seeds)", figures.group_figure(study)))
    return out


def report_tables(study: Study) -> dict[str, pd.DataFrame]:
    return {"runs": analysis.summary_table(study), "blog_final": fidelity.compare_with_blog(study),
            "blog_spectral": fidelity.spectral_claims(study)}


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1em}td,th{padding:2px 6px;border-bottom:1px solid #ddd;
text-align:right;white-space:nowrap}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.wrap{overflow-x:auto;max-width:100%}.note{color:#a33}.small{color:#666;font-size:13px}ol.recipe{font-size:13px}
.js-plotly-plot:focus-within{outline:2px solid #9cf}"""

# Arrow keys on the report's sliders: plotly.js sliders take clicks and drags only. Left/right step
# one frame, Home/End jump to the ends; the slider follows because its steps animate named frames.
_KEYS = """<script>
document.querySelectorAll('.js-plotly-plot').forEach(function (gd) {
  if (!gd.layout || !gd.layout.sliders || !gd.layout.sliders.length) return;
  gd.setAttribute('tabindex', '0');
  gd.setAttribute('aria-label', 'spectrum by epoch: left and right arrow keys change the epoch');
  gd.addEventListener('click', function () { gd.focus(); });
  gd.addEventListener('keydown', function (ev) {
    var s = gd.layout.sliders[0], n = s.steps.length, i = s.active || 0;
    var j = {ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: n - 1}[ev.key];
    if (j === undefined) return;
    ev.preventDefault();
    j = Math.max(0, Math.min(n - 1, j));
    if (j === i) return;
    Plotly.animate(gd, [s.steps[j].args[0][0]], s.steps[j].args[1]);
    Plotly.relayout(gd, {'sliders[0].active': j});
  });
});
</script>"""


def html_page(title: str, blocks: list[tuple[str, str]], subtitle: str = "", script: str = "") -> str:
    """A self-contained HTML page of (heading, html fragment) blocks."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{frag}" if h else frag for h, frag in blocks)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"<p class='small'>{subtitle}</p>\n{body}\n{script}</body></html>\n")


def figures_html(figs: list[go.Figure]) -> list[str]:
    """HTML fragments of figures; plotly.js is inlined in the first one only."""
    config = {"displaylogo": False, "responsive": True}
    return [fig.to_html(full_html=False, include_plotlyjs=(i == 0), include_mathjax=False, config=config,
                        auto_play=False, default_width="100%") for i, fig in enumerate(figs)]


# Columns of the page's tables (the CSV/LaTeX exports keep every column), and how numbers read.
_PAGE_COLUMNS = {
    "runs": ["run", "status", "epochs_done", "epochs_planned", "train_acc", "test_acc", "clean_test_acc", "test_loss",
             "gap_acc", "mean_sigma_max_last", "seconds"],
    "blog_final": ["arch", "method", "n_runs", "epochs", "test_acc", "test_acc_std", "clean_test_acc", "blog_test_acc",
                   "d_test_acc", "test_loss", "blog_test_loss", "d_test_loss", "recipe"],
    "blog_spectral": ["arch", "method", "n_runs", "epochs", "mean_sigma_max_last", "blog_mean_sigma_max_last",
                      "d_mean_sigma_max_last", "std_sigma_max_last_half", "blog_std_sigma_max_last_half",
                      "d_std_sigma_max_last_half", "recipe"],
}
_HEADERS = {"epochs_done": "epochs", "epochs_planned": "of", "mean_sigma_max_last": "mean sigma_max",
            "std_sigma_max_last_half": "std sigma_max (2nd half)", "blog_mean_sigma_max_last": "blog",
            "blog_std_sigma_max_last_half": "blog", "d_mean_sigma_max_last": "d", "d_std_sigma_max_last_half": "d",
            "test_acc_std": "std", "blog_test_acc": "blog acc", "blog_test_loss": "blog loss",
            "clean_test_acc": "clean test_acc"}


def number_text(column: str, value) -> str:
    """A table cell as people read it: accuracies (percent) with 2 decimals, seconds whole, counts as
    integers (never "10.00"), other numbers to 4 significant digits, missing values empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if column.endswith("_acc") or column.endswith("_acc_std") or column == "d_test_acc":
        return f"{value:.2f}"
    return f"{value:.0f}" if column == "seconds" else f"{value:.4g}"


def html_table(df: pd.DataFrame, columns: list[str] | None = None, notes: list[str] | None = None,
               cell_style: str = "", font_size: str = "") -> str:
    """A compact HTML table: ``columns`` (all by default), short headers, numbers by :func:`number_text`;
    long ``recipe`` texts become numbered notes (``notes`` collects them) so that rows stay one line high."""
    cols = [c for c in (columns or list(df.columns)) if c in df]
    td, th = (f"<td style='{cell_style}'", f"<th style='{cell_style}'") if cell_style else ("<td", "<th")
    head = "".join(f"{th} title='{html.escape(c)}'>{html.escape(_HEADERS.get(c, c))}</th>" for c in cols)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c == "recipe" and notes is not None and isinstance(v, str) and v.startswith("differs: "):
                k = notes.index(v) + 1 if v in notes else (notes.append(v) or len(notes))
                cells.append(f"{td} class='note' title='{html.escape(v)}'>differs, see {k}</td>")
            else:
                cells.append(f"{td}>{html.escape(number_text(c, v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    size = f";font-size:{font_size}" if font_size else ""
    return f"<div class='wrap' style='overflow-x:auto{size}'><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def page_table(df: pd.DataFrame, name: str, notes: list[str] | None = None) -> str:
    """One of :func:`report_tables`' tables (``name``: runs, blog_final, blog_spectral) as the report shows it:
    its chosen columns, one line per row (also in a notebook, without the report's style sheet)."""
    return html_table(df, _PAGE_COLUMNS.get(name), notes, cell_style="white-space:nowrap;padding:1px 6px",
                      font_size="12px")


def notes_html(notes: list[str]) -> str:
    """The numbered recipe differences that :func:`page_table` refers to."""
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n[len('differs: '):])}</li>" for n in notes)
    return f"<p class='small'>How these runs differ from the blog's recipe (the seed code's):</p><ol class='recipe'>{items}</ol>"


def _warnings_html(study: Study) -> str:
    """How many runs differ from the blog's recipe (the differences are the numbered notes at the end),
    and the first-layer target warnings."""
    off = [g for g, n in fidelity.recipes(study).items() if n != "comparable"]
    n_runs = sum(1 for r in study.names if study.groups[r] in off)
    out = ""
    if off:
        out += (f"<p class='note'>{n_runs} of {len(study.names)} runs differ from the blog's recipe (the seed code's): "
                f"their numbers are not a reproduction of the blog's; the differences are listed under the blog's "
                f"tables below.</p>")
    return out + "".join(f"<p class='note'>{html.escape(w)}</p>" for w in fidelity.first_layer_target_warnings(study))


def report_html(study: Study, title: str, max_points: int = 400) -> str:
    tables = report_tables(study)
    head = _warnings_html(study)
    figs = report_figures(study, max_points)
    frags = figures_html([f for _, f in figs])
    notes: list[str] = []
    blocks = [("runs", head + page_table(tables["runs"], "runs"))]
    blocks += [(h, frag) for (h, _), frag in zip(figs, frags)]
    final = page_table(tables["blog_final"], "blog_final", notes)
    spectral = page_table(tables["blog_spectral"], "blog_spectral", notes)
    blocks += [("the blog's final numbers beside these runs (accuracy in %, d = here minus blog)",
                final + f"<p class='small'>Source: {html.escape(fidelity.BLOG_SOURCE)}</p>"),
               ("the blog's spectral claims beside these runs", spectral + notes_html(notes))]
    first = next(iter(study.runs.values()))
    subtitle = (f"written {datetime.datetime.now():%Y-%m-%d %H:%M} by nslab; {len(study.names)} runs; "
                f"git revision {html.escape(str(first.config.get('git_revision')))}; spectra thinned to at most "
                f"{max_points} points per curve; click a spectrum and use the arrow keys to step through epochs; "
                f"works offline")
    return html_page(title, blocks, subtitle, _KEYS)


def write_report(source: Source, out: str | None = None, max_points: int = 400, study: Study | None = None) -> str:
    """Write the HTML report of a run folder, a sweep folder or a list of run folders; returns its path.

    Default path: ``report.html`` inside the run or sweep folder. ``study``: the source already loaded.
    Relative paths follow :func:`nslab.paths.resolve`.
    """
    if isinstance(source, (str, os.PathLike)):
        source = resolve(source)
    study = study or analysis.load_study(source)
    if out is None:
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("out is required when the source is a list of run folders")
        out = os.path.join(os.fspath(source), "report.html")
    out = resolve(out)
    if isinstance(source, (str, os.PathLike)):
        name = os.path.basename(os.path.normpath(os.fspath(source)))
        kind = "run" if analysis.is_run_dir(source) else "sweep"
    else:
        name, kind = f"{len(study.names)} runs", "runs"
    text = report_html(study, f"nslab {kind} report: {name}", max_points)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return out


def export_study(study: Study, out_dir: str, formats=("png", "svg")) -> tuple[list[str], str]:
    """Tables as CSV/LaTeX and the report's figures as images; returns (files written, note on images)."""
    written = export_tables(report_tables(study), out_dir)
    figs = {f"fig{i:02d}_{_slug(h)}": fig for i, (h, fig) in enumerate(report_figures(study))}
    try:
        written += export_figures(figs, out_dir, formats)
        note = ""
    except RuntimeError as err:
        note = f"figures not exported: {err}"
    return written, note


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40].rstrip("_")


# --- Command line ---------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    """Register ``report`` on an argparse subparsers object (the handler is set as ``func``)."""
    p = subparsers.add_parser("report", help="write a static HTML report of a run or a sweep (opens offline)")
    p.add_argument("source", help="a run folder or a sweep folder")
    p.add_argument("--out", default=None, help="HTML file to write (default: SOURCE/report.html)")
    p.add_argument("--export", default=None, metavar="DIR", help="also write tables (CSV, LaTeX) and figures (PNG, SVG)")
    p.add_argument("--max_points", type=int, default=400, help="thin each spectrum to about this many points")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    try:
        if args.max_points < 2:
            raise ValueError(f"--max_points={args.max_points} is not allowed: at least 2 points per spectrum")
        study = analysis.load_study(args.source)
        path = write_report(args.source, args.out, args.max_points, study=study)
    except (FileNotFoundError, ValueError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    if args.export:
        written, note = export_study(study, args.export)
        print(f"wrote {len(written)} files to {args.export}")
        if note:
            print(note, file=sys.stderr)
    return 0
