"""Sweeps: run a grid file's configurations with papermill, side by side, resumably.

``python -m nslab sweep GRID.yaml [--out DIR] [--workers N] [--dry-run]`` executes
``notebooks/01_reproduce.ipynb`` once per run into ``DIR/<run>/`` (default
``outputs/<sweep>/``), keeping the executed notebook there as ``notebook.ipynb`` and
papermill's log, with every cell's output, as ``papermill.log``. Each run is a worker
process with its own kernel; ``--workers`` of them at a time (default: one per CUDA GPU,
each pinned with ``CUDA_VISIBLE_DEVICES``, else one on the CPU; several CPU workers share
the cores through ``OMP_NUM_THREADS``).

Running a sweep again skips completed (and diverged) runs and resumes the others from
their last checkpoint. A failing run does not stop the others. While it runs, the sweep
prints a line when a run starts or ends and every ``--progress-every`` seconds, and keeps
``DIR/sweep_status.json`` current; at the end it prints and writes ``DIR/summary.csv``,
and exits non-zero if any run did not complete.
"""
from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

import nslab

from .config import RunConfig, settings_differences
from .grid import Grid, GridError, load_grid
from .records import read_json, write_json, write_table

NOTEBOOK = "01_reproduce.ipynb"
SUMMARY_COLUMNS = ["run", "status", "action", "epochs_done", "epochs", "test_acc", "test_loss", "train_acc",
                   "seconds", "wall_s", "message"]
FINAL = ("completed", "diverged")  # states a rerun leaves alone (a diverged run would diverge again)


@dataclass
class Job:
    """One run of the sweep and what this invocation did with it."""

    config: RunConfig
    action: str = "run"  # run | resume | skip
    state: str = "pending"  # pending | running | completed | failed | diverged
    gpu: str | None = None
    process: multiprocessing.Process | None = None
    conn: object = None  # receives the worker's error message (None: papermill succeeded)
    started: float = 0.0
    wall_s: float = 0.0
    message: str = ""

    @property
    def name(self) -> str:
        return self.config.run_name

    @property
    def run_dir(self) -> str:
        return self.config.run_dir


# -- planning -------------------------------------------------------------------
def plan(grid: Grid, out: str) -> list[Job]:
    """One job per run with out_dir = the sweep folder; completed runs are skipped, others resumed.

    Raises GridError where a run folder already holds a run with other settings.
    """
    jobs = []
    for config in grid.configs:
        job = Job(config.replace(out_dir=out))
        config_path = os.path.join(job.run_dir, "config.json")
        if os.path.exists(config_path):
            diff = settings_differences(read_json(config_path), job.config)
            if diff:
                raise GridError(f"{grid.path}: run {job.name!r}: {job.run_dir} holds a run with other settings ("
                                + ", ".join(diff) + "): use another --out or delete that folder")
            status = _status(job.run_dir).get("status")
            job.action = "skip" if status in FINAL else "resume"
            if status in FINAL:
                job.state = status
        jobs.append(job)
    return jobs


def default_workers(jobs: list[Job]) -> int:
    return max(1, len(gpu_ids())) if any(j.config.device != "cpu" for j in jobs) else 1


def gpu_ids() -> list[str]:
    """The CUDA devices runs may be pinned to: CUDA_VISIBLE_DEVICES's entries, else 0..count-1."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


def find_notebook() -> str:
    """``notebooks/01_reproduce.ipynb`` of the checkout this package was imported from."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(nslab.__file__))), "notebooks", NOTEBOOK)
    if not os.path.exists(path):
        raise GridError(f"cannot find {path}: sweeps run the notebook of a repository checkout; "
                        f"install nslab from one (pip install -e .) or pass --notebook PATH")
    return path


# -- one run, in a worker process --------------------------------------------------
def _execute(notebook: str, run_dir: str, parameters: dict, env: dict, cwd: str, conn) -> None:
    """Worker process: papermill runs the notebook; the outcome goes back through ``conn``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so papermill shuts its kernel down
    os.environ.update(env)  # the kernel inherits it: data dir, GPU pinning, thread count
    log = open(os.path.join(run_dir, "papermill.log"), "a", buffering=1)
    os.dup2(log.fileno(), 1)  # the kernel's own stderr lands here too, not on the sweep's console
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    logging.basicConfig(level=logging.INFO, stream=log, format="%(asctime)s %(name)s %(message)s", force=True)
    logging.getLogger("papermill").info("sweep: executing %s for run %s", notebook, parameters["name"])
    partial, final = os.path.join(run_dir, ".notebook.running.ipynb"), os.path.join(run_dir, "notebook.ipynb")
    error = None
    try:
        import papermill

        papermill.execute_notebook(notebook, partial, parameters=parameters, kernel_name="python3", cwd=cwd,
                                   progress_bar=False, log_output=True, store_widget_state=False,
                                   shutdown_kernel="immediate")  # the run folder is complete by then
    except BaseException as err:  # PapermillExecutionError (a cell raised) or anything else
        ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
        error = f"{ename}: {evalue}".strip()[:4000]  # the pipe is read after the worker exits: keep it small
    finally:
        if os.path.exists(partial):  # a failed notebook is kept too, with the failing cell marked
            os.replace(partial, final)
    conn.send(error)
    conn.close()


def _start_method():
    """Fork where it is safe (one thread, no CUDA context): a worker then starts at once, with
    papermill and torch already imported; else spawn, which pays those imports (seconds) per run."""
    import threading

    import papermill  # noqa: F401  (imported once here, inherited by forked workers)
    import torch

    if ("fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
            and not torch.cuda.is_initialized()):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_env(job: Job, slot: int, workers: int, gpus: list[str]) -> dict:
    env = {}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(nslab.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env["NSLAB_PROGRESS"] = "lines"  # a tqdm widget in a papermill kernel would be saved frozen at 0 %
    if gpus and job.config.device != "cpu":
        job.gpu = gpus[slot % len(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = job.gpu
    elif workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, cores // workers))
    return env


# -- the sweep --------------------------------------------------------------------
def run_sweep(grid: Grid, out: str, workers: int = 0, notebook: str = "", progress_every: float = 15.0,
              log: Callable[[str], None] = lambda line: print(line, flush=True)) -> pd.DataFrame:
    """Run every job not yet completed, ``workers`` at a time; return (and write) the summary table."""
    out = os.path.abspath(out)
    notebook = os.path.abspath(notebook or find_notebook())
    os.makedirs(out, exist_ok=True)
    lock = open(os.path.join(out, ".sweep.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise GridError(f"another sweep is running in {out}: wait for it or use another --out") from None
    try:  # planned under the lock: another sweep may have been writing these run folders
        jobs = plan(grid, out)
    except BaseException:
        lock.close()
        raise
    workers = workers or default_workers(jobs)
    gpus = gpu_ids() if any(j.config.device != "cpu" for j in jobs) else []
    ctx = _start_method()
    started = time.time()
    log(f"sweep {grid.name}: {len(jobs)} runs into {out}, {workers} worker(s)"
        + (f" on GPUs {','.join(gpus)}" if gpus else " on the CPU"))
    for job in jobs:
        if job.action == "skip":
            log(f"  {job.name}: {job.state} earlier, skipped")
    pending = [j for j in jobs if j.action != "skip"]
    free, running = list(range(workers)), {}
    last_line = time.monotonic()
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                running[slot] = job
                _start(job, slot, workers, gpus, notebook, ctx)
                log(f"  {job.name}: {'resuming' if job.action == 'resume' else 'started'}"
                    + (f" on GPU {job.gpu}" if job.gpu is not None else ""))
                _write_status(grid, out, jobs, started, finished=False)
            time.sleep(0.2)
            for slot, job in list(running.items()):
                if not job.process.is_alive():
                    _finish(job)
                    del running[slot]
                    free.append(slot)
                    free.sort()
                    log(f"  {job.name}: {job.state} after {job.wall_s:.0f}s"
                        + (f" ({job.message})" if job.state != "completed" and job.message else ""))
                    log(progress_line(grid.name, jobs))
                    last_line = time.monotonic()
                    _write_status(grid, out, jobs, started, finished=False)
            if running and time.monotonic() - last_line >= progress_every:
                log(progress_line(grid.name, jobs))
                last_line = time.monotonic()
                _write_status(grid, out, jobs, started, finished=False)
    except KeyboardInterrupt:
        for job in running.values():
            job.process.terminate()
        for job in running.values():
            job.process.join(30)
            job.state, job.wall_s = "failed", time.time() - job.started
            job.message = "interrupted; run the sweep again to resume"
        log(f"sweep {grid.name}: interrupted")
    finally:
        _write_status(grid, out, jobs, started, finished=True)
        table = summary(jobs)
        write_table(os.path.join(out, "summary.csv"), table)
        lock.close()
    return table


def _start(job: Job, slot: int, workers: int, gpus: list[str], notebook: str, ctx) -> None:
    os.makedirs(job.run_dir, exist_ok=True)  # papermill needs the output folder to exist
    receive, send = ctx.Pipe(duplex=False)
    job.conn, job.state, job.started = receive, "running", time.time()
    job.process = ctx.Process(target=_execute, name=f"nslab-sweep-{job.name}", daemon=False,
                              args=(notebook, job.run_dir, job.config.to_dict(),
                                    _worker_env(job, slot, workers, gpus), os.getcwd(), send))
    job.process.start()
    send.close()  # the worker holds the only sending end now


def _finish(job: Job) -> None:
    job.process.join()
    job.wall_s = time.time() - job.started
    error = job.conn.recv() if job.conn.poll() else f"worker process ended with exit code {job.process.exitcode}"
    job.conn.close()
    status = _status(job.run_dir)
    if error is None and status.get("status") in FINAL:
        job.state, job.message = status["status"], status.get("message", "")
    else:  # the notebook failed (perhaps before the run folder was written), or the run did not finish
        job.state = "failed"
        job.message = error or f"the run's status is {status.get('status', 'missing')}"


def _status(run_dir: str) -> dict:
    path = os.path.join(run_dir, "status.json")
    try:
        return read_json(path) if os.path.exists(path) else {}
    except ValueError:  # never half-written (records writes atomically), but be lenient with foreign files
        return {}


def _last_epoch(run_dir: str) -> int:
    """The last epoch in epochs.csv, read without parsing the whole table."""
    try:
        with open(os.path.join(run_dir, "epochs.csv"), "rb") as f:
            lines = f.read().splitlines()
        return int(lines[-1].split(b",")[0]) if len(lines) > 1 else 0
    except (OSError, ValueError):
        return 0


# -- progress and summary -----------------------------------------------------------
def progress_line(sweep: str, jobs: list[Job]) -> str:
    """E.g. ``sweep quick: 1 done, 2 running (mlp3x512-none epoch 2/3, ...), 0 failed, 0 pending``."""
    states = [j.state for j in jobs]
    running = [f"{j.name} epoch {_last_epoch(j.run_dir)}/{j.config.epochs}" for j in jobs if j.state == "running"]
    return (f"sweep {sweep}: {states.count('completed')} done, {len(running)} running"
            + (f" ({', '.join(running)})" if running else "")
            + f", {states.count('failed') + states.count('diverged')} failed, {states.count('pending')} pending")


def _write_status(grid: Grid, out: str, jobs: list[Job], started: float, finished: bool) -> None:
    runs = [{"run": j.name, "state": j.state, "action": j.action, "epoch": _last_epoch(j.run_dir),
             "epochs": j.config.epochs, "gpu": j.gpu, "wall_s": round(j.wall_s or (time.time() - j.started
                                                                                    if j.state == "running" else 0), 1),
             "message": j.message} for j in jobs]
    counts = {s: sum(j.state == s for j in jobs) for s in ("pending", "running", "completed", "failed", "diverged")}
    write_json(os.path.join(out, "sweep_status.json"),
               {"sweep": grid.name, "grid": os.path.abspath(grid.path), "out": out, "finished": finished,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "counts": counts, "runs": runs})


def summary(jobs: list[Job]) -> pd.DataFrame:
    """One row per run: status, what this invocation did, final metrics, training and wall seconds."""
    rows = []
    for j in jobs:
        path = os.path.join(j.run_dir, "epochs.csv")
        epochs = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()
        last = epochs.iloc[-1] if len(epochs) else {}
        rows.append({"run": j.name, "status": j.state, "action": j.action,
                     "epochs_done": int(last["epoch"]) if len(epochs) else 0, "epochs": j.config.epochs,
                     "test_acc": last.get("test_acc", float("nan")), "test_loss": last.get("test_loss", float("nan")),
                     "train_acc": last.get("train_acc", float("nan")),
                     "seconds": float(epochs["seconds"].sum()) if len(epochs) else 0.0, "wall_s": j.wall_s, "message": j.message if j.state != "completed" else ""})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# -- command line ----------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid file's configurations with papermill (see nslab.sweep)",
                       description="Execute notebooks/01_reproduce.ipynb with papermill once per run of a grid file, "
                       "into DIR/<run>/ (default outputs/<sweep>/); completed runs are skipped, interrupted "
                       "ones resumed; DIR/summary.csv lists every run at the end.")
    p.add_argument("grid", help="a grid file, e.g. grids/quick.yaml (format: see nslab.grid)")
    p.add_argument("--out", default="", help="the sweep's folder (default: outputs/<sweep name>)")
    p.add_argument("--workers", type=int, default=0,
                   help="runs side by side (default: one per CUDA GPU, else 1)")
    p.add_argument("--dry-run", action="store_true", help="validate the grid and list the runs; run nothing")
    p.add_argument("--progress-every", type=float, default=15.0, metavar="SECONDS",
                   help="seconds between progress lines (default: 15)")
    p.add_argument("--notebook", default="", help=f"the notebook to execute (default: the checkout's {NOTEBOOK})")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    try:
        if args.workers < 0:
            raise GridError(f"--workers={args.workers} is not allowed: must be >= 1 (0: the default)")
        grid = load_grid(args.grid)
        out = os.path.abspath(args.out or os.path.join("outputs", grid.name))
        if args.dry_run:
            jobs = plan(grid, out)
            varied = grid.varied_fields()
            print(f"sweep {grid.name}: {len(jobs)} runs into {out}, {args.workers or default_workers(jobs)} worker(s)")
            print(pd.DataFrame([{"run": j.name, "action": j.action, **{f: getattr(j.config, f) for f in varied}}
                                for j in jobs]).to_string(index=False))
            return 0
        table = run_sweep(grid, out, args.workers, args.notebook, args.progress_every)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"summary: {os.path.join(out, 'summary.csv')}")
    return 0 if (table.status == "completed").all() else 1
