"""Static reports and exports: HTML that works without a kernel or internet, PNG/SVG, CSV and LaTeX.

``write_report(source)`` writes one HTML file for a run or a sweep: tables, and plotly figures
whose singular-value spectra have one frame per checkpoint epoch and a slider. plotly.js is
embedded once, inline, in the first figure; the file opens from disk with no network.

``export_figures`` writes PNG/SVG through kaleido, which drives a Chrome or Chromium it finds on
the machine (Debian's ``chromium`` works; nothing is downloaded). Where it cannot run, it
raises RuntimeError saying so, and tables are still written by ``export_tables``.

Command line (registered by :func:`add_parser`): ``nslab report RUN_OR_SWEEP_DIR [--out FILE]
[--export DIR]``.
"""
from __future__ import annotations

import datetime
import html
import os
import sys

import pandas as pd
import plotly.graph_objects as go

from . import analysis, figures
from .analysis import Source, Study
from .records import atomic_path, write_table


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
    """Write each figure as ``<name>.<format>`` with kaleido (one browser session for all of them).

    Raises RuntimeError with the reason where kaleido or a Chrome/Chromium is missing.
    """
    for fmt in formats:
        if fmt not in ("png", "svg", "pdf", "jpeg", "webp"):
            raise ValueError(f"format={fmt!r} is not allowed: choose from ['png', 'svg', 'pdf', 'jpeg', 'webp']")
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

    try:
        pio.write_images([f for f, _, _ in items], [p for _, p, _ in items], format=[m for _, _, m in items],
                         scale=scale)
    except Exception as err:  # kaleido's errors for a missing browser vary by version: name the fix
        raise RuntimeError(f"kaleido could not render images ({type(err).__name__}: {err}); it needs a Chrome "
                           f"or Chromium on the machine (e.g. apt-get install chromium)") from err
    return [p for _, p, _ in items]


# --- Figures and tables of a report --------------------------------------------------------
def report_figures(study: Study, max_points: int = 400) -> list[tuple[str, go.Figure]]:
    """(heading, figure) pairs: spectra with an epoch slider (per layer for a sweep, all layers for
    one run), sigma_max, ranks, training curves and, with several seeds, the grouped curves."""
    out = []
    if len(study.names) == 1:
        run = study.names[0]
        pairs = [(run, layer) for layer in study.layer_names]
        out.append(("singular values, every layer", figures.spectrum_slider_figure(
            study, pairs, f"{run}: singular values", max_points)))
    else:
        for layer in study.layer_names:
            out.append((f"singular values of {layer}", figures.spectrum_slider_figure(
                study, [(r, layer) for r in study.names], f"singular values of {layer}", max_points)))
    for layer in study.layer_names:
        out.append((f"sigma_max: {layer} and the spread across layers", figures.sigma_max_figure(study, layer)))
    for layer in study.layer_names:
        out.append((f"ranks of {layer}", figures.rank_figure(study, layer)))
    out.append(("training curves", figures.training_figure(study)))
    if len(set(study.groups.values())) < len(study.names):
        out.append(("test accuracy by configuration (mean and band over seeds)", figures.group_figure(study)))
    return out


def report_tables(study: Study) -> dict[str, pd.DataFrame]:
    return {"runs": analysis.summary_table(study), "blog_final": analysis.compare_with_blog(study),
            "blog_spectral": analysis.spectral_claims(study)}


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}td,th{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f4f4f4}.note{color:#a33}.small{color:#666;font-size:13px}"""


def html_page(title: str, blocks: list[tuple[str, str]], subtitle: str = "") -> str:
    """A self-contained HTML page of (heading, html fragment) blocks."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{frag}" if h else frag for h, frag in blocks)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"<p class='small'>{subtitle}</p>\n{body}\n</body></html>\n")


def figures_html(figs: list[go.Figure]) -> list[str]:
    """HTML fragments of figures; plotly.js is inlined in the first one only."""
    config = {"displaylogo": False, "responsive": True}
    return [fig.to_html(full_html=False, include_plotlyjs=(i == 0), include_mathjax=False, config=config,
                        auto_play=False) for i, fig in enumerate(figs)]


def _table(df: pd.DataFrame) -> str:
    table = df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")
    return f"<div style='overflow-x:auto'>{table}</div>"


def report_html(study: Study, title: str, max_points: int = 400) -> str:
    tables = report_tables(study)
    short = tables["runs"][tables["runs"].epochs_done < analysis.BLOG_EPOCHS]
    notes = []
    if len(short):
        notes.append(f"<p class='note'>{len(short)} of {len(study.names)} runs are shorter than the blog's "
                     f"{analysis.BLOG_EPOCHS} epochs: their numbers are not the blog's study.</p>")
    figs = report_figures(study, max_points)
    frags = figures_html([f for _, f in figs])
    blocks = [("runs", "".join(notes) + _table(tables["runs"]))]
    blocks += [(h, frag) for (h, _), frag in zip(figs, frags)]
    blocks += [("the blog's final numbers beside these runs (accuracy in %, d_ = here minus blog)",
                _table(tables["blog_final"]) + f"<p class='small'>Source: {html.escape(analysis.BLOG_SOURCE)}</p>"),
               ("the blog's spectral claims beside these runs", _table(tables["blog_spectral"]))]
    first = next(iter(study.runs.values()))
    subtitle = (f"written {datetime.datetime.now():%Y-%m-%d %H:%M} by nslab; {len(study.names)} runs; "
                f"git revision {html.escape(str(first.config.get('git_revision')))}; spectra thinned to at most "
                f"{max_points} points per curve; works offline")
    return html_page(title, blocks, subtitle)


def write_report(source: Source, out: str | None = None, max_points: int = 400, study: Study | None = None) -> str:
    """Write the HTML report of a run folder, a sweep folder or a list of run folders; returns its path.

    Default path: ``report.html`` inside the run or sweep folder. ``study``: the source already loaded.
    """
    study = study or analysis.load_study(source)
    if out is None:
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("out is required when the source is a list of run folders")
        out = os.path.join(os.fspath(source), "report.html")
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
        study = analysis.load_study(args.source)
        path = write_report(args.source, args.out, args.max_points, study=study)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    if args.export:
        written, note = export_study(study, args.export)
        print(f"wrote {len(written)} files to {args.export}")
        if note:
            print(note, file=sys.stderr)
    return 0
