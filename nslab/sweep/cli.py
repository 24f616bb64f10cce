"""``python -m nslab sweep GRID`` and ``python -m nslab status DIR``.

Every refusal (a bad option value, a grid error, a folder in use, a symlinked lock, an engine that
cannot be reached) prints one line ``error: <message>`` and exits 2, before any run starts.
"""
from __future__ import annotations

import os
import sys

import pandas as pd

from ..grid import GridError, load_grid
from ..locks import FolderInUse, exclusive
from ..records import read_json, read_status
from .options import ENGINES, ClusterOptions, SweepError, flag
from .plan import FINAL, NOTEBOOK, plan
from .progress import progress_line, summary

# Which engines each engine option belongs to (checked, so a misplaced option is not silently ignored).
ENGINE_OPTIONS = {"workers": ("local",), "no_wait": ("slurm",), "partition": ("slurm",), "mem": ("slurm",),
                  "time": ("slurm",), "extra": ("slurm",), "address": ("ray",), "cpus_per_run": ("slurm", "ray"),
                  "gpus_per_run": ("slurm", "ray")}
REFUSALS = (GridError, SweepError, FolderInUse, PermissionError)


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid file's configurations with papermill (see nslab.sweep)",
                       description="Execute notebooks/01_reproduce.ipynb with papermill once per run of a grid file, "
                       "into DIR/<run>/ (default outputs/<sweep>/), on this machine, a SLURM cluster or a Ray "
                       "cluster; completed runs are skipped, interrupted ones resumed; DIR/summary.csv lists every "
                       "run at the end.")
    p.add_argument("grid", help="a grid file, e.g. grids/quick.yaml (format: see nslab.grid)")
    p.add_argument("--out", default="", help="the sweep's folder (default: outputs/<sweep name>); on a cluster, "
                   "on a filesystem every node shares")
    p.add_argument("--engine", default="local", help=f"where runs go: {', '.join(ENGINES)} (default: local)")
    p.add_argument("--dry-run", action="store_true", help="validate the grid and list the runs; run nothing")
    p.add_argument("--progress-every", default="15", metavar="SECONDS",
                   help="seconds between progress lines (default: 15)")
    p.add_argument("--notebook", default="", help=f"the notebook to execute (default: the checkout's {NOTEBOOK})")
    local = p.add_argument_group("--engine local")
    local.add_argument("--workers", default=None, help="runs side by side (default: one per CUDA GPU, else 1)")
    cluster = p.add_argument_group("--engine slurm and --engine ray (SLURM options also from the grid's slurm: block)")
    cluster.add_argument("--cpus-per-run", dest="cpus_per_run", default=None,
                         help="CPUs per run, also its thread count (default: 1)")
    cluster.add_argument("--gpus-per-run", dest="gpus_per_run", default=None,
                         help="GPUs per run (default: 1 where the partition or cluster has GPUs, else 0)")
    cluster.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    cluster.add_argument("--mem", default=None, help="SLURM memory per run, e.g. 16G")
    cluster.add_argument("--time", default=None, help="SLURM time limit per run, e.g. 1-00:00:00 (default: the "
                         "partition's limit)")
    cluster.add_argument("--slurm-extra", dest="extra", action="append", default=None, metavar="KEY=VALUE",
                         help="a further sbatch option, e.g. account=myproject (repeat for more)")
    cluster.add_argument("--no-wait", dest="no_wait", action="store_true", default=None,
                         help="SLURM: submit and return; a later sweep or `nslab status DIR` picks up")
    cluster.add_argument("--address", default=None, help="Ray: auto (the cluster `ray start` started here) or "
                         "host:port (default: start a local Ray instance)")
    p.set_defaults(func=_cmd_sweep)

    s = sub.add_parser("status", help="where a sweep stands (runs done, running, queued, failed; ETA)",
                       description="Show a sweep folder's progress and summary while its runs go or after; asks "
                       "SLURM about the sweep's jobs where it ran with --engine slurm. Writes nothing.")
    s.add_argument("out", help="the sweep's folder, e.g. outputs/quick")
    s.set_defaults(func=_cmd_status)


def _options(args, grid) -> ClusterOptions:
    """The engine options: checked against the engine, the grid's slurm: block first, the command line on top."""
    if args.engine not in ENGINES:
        raise SweepError(f"--engine={args.engine!r} is not allowed: choose one of {list(ENGINES)}")
    for name, engines in ENGINE_OPTIONS.items():
        if getattr(args, name) is not None and args.engine not in engines:
            raise SweepError(f"{flag(name)} is an option of --engine {' and '.join(engines)}, "
                             f"not of --engine {args.engine}")
    if args.workers is not None and not str(args.workers).strip().isdigit():
        raise SweepError(f"--workers={args.workers!r} is not allowed: a whole number >= 1 (0: the default)")
    options = ClusterOptions()
    if args.engine == "slurm":
        options = options.updated(grid.slurm, lambda key: f"{grid.path}: slurm.{key}")
    return options.updated({k: getattr(args, k) for k in ("partition", "gpus_per_run", "cpus_per_run", "mem",
                                                           "time", "extra", "address")})


def _executor(engine: str, args, options: ClusterOptions):
    if engine == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(options)
    if engine == "ray":
        from .ray_engine import RayExecutor

        return RayExecutor(options)
    from .local import LocalExecutor

    return LocalExecutor(int(args.workers or 0))


def _cmd_sweep(args) -> int:
    try:
        grid = load_grid(args.grid)
        options = _options(args, grid)
        progress_every = _seconds(args.progress_every)
        if args.notebook and not os.path.isfile(args.notebook):
            raise SweepError(f"--notebook={args.notebook!r} is not allowed: no such file")
        out = os.path.abspath(args.out or os.path.join("outputs", grid.name))
        if args.dry_run:
            jobs = plan(grid, out)
            varied = grid.varied_fields()
            print(f"sweep {grid.name}: {len(jobs)} runs into {out}, --engine {args.engine}")
            print(pd.DataFrame([{"run": j.name, "action": j.action, **{f: getattr(j.config, f) for f in varied}}
                                for j in jobs]).to_string(index=False))
            return 0
        from .engine import run_sweep
        from .slurm import refuse_if_live

        executor = _executor(args.engine, args, options)
        try:
            table = run_sweep(grid, out, executor, args.notebook, progress_every, wait=not args.no_wait,
                              check_foreign=None if args.engine == "slurm" else refuse_if_live)
        finally:
            executor.close()
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_table(table)
    print(f"summary: {os.path.join(out, 'summary.csv')}")
    if args.no_wait:
        return 1 if table.status.isin(["failed", "diverged", "interrupted"]).any() else 0
    return 0 if (table.status == "completed").all() else 1


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise SweepError(f"--progress-every={value!r} is not allowed: a number of seconds > 0")
    return seconds


def _print_table(table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))  # accuracy in percent


def _cmd_status(args) -> int:
    out = os.path.abspath(args.out)
    try:
        try:
            info = read_json(os.path.join(out, "sweep_status.json"))
        except (OSError, ValueError):
            raise SweepError(f"{out} is not a sweep folder: it has no readable sweep_status.json") from None
        jobs = plan(load_grid(info["grid"]), out)
        watched = _in_use(out)
        recorded = {r["run"]: r for r in info.get("runs", [])}
        from .slurm import book_path, live_jobs

        live = live_jobs(jobs, out) if os.path.exists(book_path(out)) else {}
        for job in jobs:
            if job.state in FINAL:
                continue
            seen = recorded.get(job.name, {})
            status = read_status(job.run_dir)
            job.wall_s = seen.get("wall_s", 0.0)
            if job.name in live:
                job.handle, job.state = live[job.name]
                job.where = f"SLURM job {job.handle}"
            elif watched and seen.get("state") in ("queued", "running"):
                job.state = seen["state"]
            elif seen.get("state") in ("failed", "interrupted"):  # as the last sweep found it
                job.state, job.message = seen["state"], seen.get("message", "")
            elif status:  # it ran and stopped: failed, interrupted, or killed while "running"
                job.state = status["status"] if status["status"] in ("failed", "interrupted") else "interrupted"
                job.message = status.get("message", "")
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    engine = info.get("engine", "local")
    print(f"sweep {info.get('sweep')} in {out} (--engine {engine}"
          + ("; a sweep is watching it)" if watched else "; no sweep is watching it)"))
    print(progress_line(info.get("sweep", ""), jobs))
    _print_table(summary(jobs))
    return 0


def _in_use(out: str) -> bool:
    """Whether a sweep process holds the folder's lock now."""
    try:
        with exclusive(out, ".sweep.lock", what="sweep folder"):
            return False
    except FolderInUse:
        return True
