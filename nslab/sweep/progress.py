"""What a sweep shows: the progress line (with an ETA), ``sweep_status.json`` and the summary table.

Shared by every engine and by ``python -m nslab status``: all of it is read from the run folders
(``epochs.csv``) and the jobs' states, never from an engine's own bookkeeping.
"""
from __future__ import annotations

import os
import statistics
import time

import pandas as pd

from ..records import EPOCH_COLUMNS, final_rows, write_json
from .plan import Job

SUMMARY_COLUMNS = ["run", "status", "action", "epochs_done", "epochs", "test_acc", "test_loss", "train_acc",
                   "seconds", "wall_s", "message"]
STATES = ("pending", "queued", "running", "completed", "failed", "diverged", "interrupted")
UNFINISHED = ("pending", "queued", "running")


def epoch_table(run_dir: str) -> pd.DataFrame:
    """A run folder's epochs.csv (empty, with its columns, before the first epoch or if unreadable)."""
    try:
        return pd.read_csv(os.path.join(run_dir, "epochs.csv"))
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=EPOCH_COLUMNS)


def sweep_epochs(jobs: list[Job]) -> pd.DataFrame:
    """Every job's epoch rows in one table with a ``run`` column."""
    tables = [epoch_table(j.run_dir).assign(run=j.name) for j in jobs]
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=EPOCH_COLUMNS + ["run"])


def eta_seconds(jobs: list[Job], epochs: pd.DataFrame) -> float | None:
    """Seconds until the unfinished runs are done, at the current parallelism; None before any epoch.

    Work left = sum over unfinished runs of (epochs left) x (the run's mean seconds per epoch, or
    the median of the other runs' before its first epoch); divided by the runs going at once.
    """
    unfinished = [j for j in jobs if j.state in UNFINISHED]
    if not unfinished:
        return 0.0
    per_epoch = epochs.groupby("run")["seconds"].mean().dropna() if len(epochs) else pd.Series(dtype=float)
    if not len(per_epoch):
        return None
    typical = statistics.median(per_epoch.tolist())
    done = epochs.groupby("run")["epoch"].max() if len(epochs) else pd.Series(dtype=float)
    work = sum(max(0, j.config.epochs - int(done.get(j.name, 0))) * float(per_epoch.get(j.name, typical))
               for j in unfinished)
    going = sum(j.state == "running" for j in jobs)
    return work / max(1, going)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(sweep: str, jobs: list[Job]) -> str:
    """E.g. ``sweep quick: 1 done, 2 running (mlp3x512-none-s1 epoch 2/3, ...), 0 queued, 0 failed,
    0 pending, ETA 1m05s``."""
    epochs = sweep_epochs(jobs)  # finished runs too: their seconds per epoch stand in for runs not yet timed
    done = epochs.groupby("run")["epoch"].max() if len(epochs) else {}
    states = [j.state for j in jobs]
    running = [f"{j.name} epoch {int(done.get(j.name, 0))}/{j.config.epochs}" for j in jobs if j.state == "running"]
    return (f"sweep {sweep}: {states.count('completed')} done, {len(running)} running"
            + (f" ({', '.join(running)})" if running else "")
            + (f", {states.count('queued')} queued" if "queued" in states else "")
            + f", {sum(s in ('failed', 'diverged', 'interrupted') for s in states)} failed"
            + f", {states.count('pending')} pending, ETA {format_duration(eta_seconds(jobs, epochs))}")


def write_status(path: str, sweep: dict, jobs: list[Job], started: float, finished: bool) -> None:
    """``sweep_status.json``: the sweep (name, grid, folder, engine), counts and one entry per run."""
    epochs = sweep_epochs(jobs)
    done = epochs.groupby("run")["epoch"].max() if len(epochs) else {}
    now = time.time()
    runs = [{"run": j.name, "state": j.state, "action": j.action, "epoch": int(done.get(j.name, 0)),
             "epochs": j.config.epochs, "where": j.where,
             "wall_s": round(j.wall_s or (now - j.started if j.state == "running" and j.started else 0), 1),
             "message": j.message, "log": j.log} for j in jobs]
    write_json(path, {**sweep, "finished": finished,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                      "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "eta_s": eta_seconds(jobs, epochs),
                      "counts": {s: sum(j.state == s for j in jobs) for s in STATES}, "runs": runs})


def summary(jobs: list[Job]) -> pd.DataFrame:
    """One row per run: status, what this invocation did, final metrics (accuracy in percent, as every
    table for people), training and wall seconds."""
    epochs = sweep_epochs(jobs)
    last = final_rows(epochs)
    seconds = epochs.groupby("run")["seconds"].sum() if len(epochs) else {}
    rows = []
    for j in jobs:
        row = {"run": j.name, "status": j.state, "action": j.action, "epochs_done": 0, "epochs": j.config.epochs,
               "test_acc": float("nan"), "test_loss": float("nan"), "train_acc": float("nan"), "seconds": 0.0,
               "wall_s": j.wall_s, "message": "" if j.state == "completed" else j.message}
        if j.name in last.index:
            r = last.loc[j.name]
            row.update(epochs_done=int(r["epoch"]), test_acc=100 * r["test_acc"], test_loss=r["test_loss"],
                       train_acc=100 * r["train_acc"], seconds=float(seconds[j.name]))
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
