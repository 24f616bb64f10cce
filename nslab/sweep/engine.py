"""The sweep loop, shared by every engine, and the seam an engine implements (:class:`Executor`).

The loop plans under the sweep folder's lock, hands each run to the executor as a
:class:`~.task.RunTask`, polls the executor for queued / running / ended, decides a run's outcome
from its run folder (``status.json``) and the error the executor reported, and keeps the progress
line, ``sweep_status.json`` and ``summary.csv`` current. It never schedules: the local executor
has worker slots, SLURM and Ray queue runs themselves.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..grid import Grid
from ..locks import exclusive
from ..records import read_status, write_table
from .plan import FINAL, Job, find_notebook, package_root, plan
from .progress import progress_line, summary, write_status
from .task import RunTask, carried_env


@dataclass
class Report:
    """What an executor knows of a run: ``queued``, ``running`` or ``ended`` (with the error, if any).

    error: None when the notebook ran to its end (the run folder then says how the run ended).
    log: the engine's own log to read when the run failed before papermill could write its log.
    """

    state: str
    error: str | None = None
    log: str = ""


class Executor:
    """Runs :class:`RunTask` s somewhere and reports on them; the engines subclass this.

    ``prepare`` sees the planned jobs once (resources, job records); ``start`` hands a run over and
    returns what the log line says ("started", "submitted as SLURM job 12", "already running as ...");
    ``poll`` returns a :class:`Report` per job it has news of; ``stop`` is called on Ctrl-C and says
    whether the runs were stopped (True) or left to the cluster (False).
    """

    name = "executor"
    poll_every = 0.2  # seconds between polls

    def describe(self) -> str:
        return self.name

    def prepare(self, jobs: list[Job], out: str) -> None:
        pass

    def has_room(self) -> bool:
        return True

    def start(self, job: Job, task: RunTask) -> str:
        raise NotImplementedError

    def poll(self, jobs: list[Job]) -> dict[str, Report]:
        raise NotImplementedError

    def stop(self, jobs: list[Job]) -> bool:
        return True

    def close(self) -> None:
        pass


def run_sweep(grid: Grid, out: str, executor: Executor, notebook: str = "", progress_every: float = 15.0,
              wait: bool = True, log: Callable[[str], None] = lambda line: print(line, flush=True),
              check_foreign: Callable[[list[Job], str], None] | None = None) -> pd.DataFrame:
    """Run every job not yet completed through ``executor``; return (and write) the summary table.

    wait=False returns once every run is handed over (for executors whose runs outlive this process).
    check_foreign: called with the plan before anything starts; raises where another engine is at work.
    """
    out = os.path.abspath(out)
    notebook = os.path.abspath(notebook or find_notebook())
    with exclusive(out, ".sweep.lock", what="sweep folder"):
        jobs = plan(grid, out)  # under the lock: another sweep may have been writing these run folders
        if check_foreign:
            check_foreign(jobs, out)
        executor.prepare(jobs, out)
        return _loop(grid, out, jobs, executor, notebook, progress_every, wait, log)


def _loop(grid, out, jobs, executor, notebook, progress_every, wait, log) -> pd.DataFrame:
    started = time.time()
    info = {"sweep": grid.name, "grid": os.path.abspath(grid.path), "out": out, "engine": executor.name}
    status_path = os.path.join(out, "sweep_status.json")
    env, cwd = carried_env(package_root()), os.getcwd()
    log(f"sweep {grid.name}: {len(jobs)} runs into {out}, {executor.describe()}")
    for job in jobs:
        if job.action == "skip":
            log(f"  {job.name}: {job.state} earlier, skipped")
    pending = [j for j in jobs if j.action != "skip"]
    in_flight: list[Job] = []
    last_line = time.monotonic()
    try:
        while pending or (in_flight and wait):
            while pending and executor.has_room():
                job = pending.pop(0)
                job.started = time.time()
                said = executor.start(job, RunTask(notebook, job.run_dir, job.config.to_dict(), cwd, dict(env)))
                in_flight.append(job)
                log(f"  {job.name}: {said}")
                write_status(status_path, info, jobs, started, finished=False)
            if not wait and not pending:
                break
            time.sleep(executor.poll_every)
            reports = executor.poll(in_flight)
            for job in list(in_flight):
                report = reports.get(job.name)
                if report is None:
                    continue
                if report.state != "ended":
                    job.state = report.state
                    continue
                _finish(job, report)
                in_flight.remove(job)
                log(f"  {job.name}: {job.state} after {job.wall_s:.0f}s"
                    + (f" ({job.message})" if job.state != "completed" and job.message else ""))
                log(progress_line(grid.name, jobs))
                last_line = time.monotonic()
                write_status(status_path, info, jobs, started, finished=False)
            if in_flight and time.monotonic() - last_line >= progress_every:
                log(progress_line(grid.name, jobs))
                last_line = time.monotonic()
                write_status(status_path, info, jobs, started, finished=False)
    except KeyboardInterrupt:
        if executor.stop(in_flight):
            for job in in_flight:
                job.state, job.wall_s = "interrupted", time.time() - job.started
                job.message = "interrupted; run the sweep again to resume"
            in_flight = []
            log(f"sweep {grid.name}: interrupted")
        else:
            log(f"sweep {grid.name}: stopped watching; {len(in_flight)} run(s) stay with {executor.name}: "
                f"python -m nslab status {out}")
    finally:
        write_status(status_path, info, jobs, started, finished=not in_flight)
        table = summary(jobs)
        write_table(os.path.join(out, "summary.csv"), table)
    if not wait and in_flight:
        log(f"sweep {grid.name}: {len(in_flight)} run(s) handed to {executor.name}; "
            f"watch with: python -m nslab status {out}")
    return table


def _finish(job: Job, report: Report) -> None:
    """A run ended: its folder says how (completed, diverged, interrupted); else it failed."""
    job.wall_s = time.time() - job.started
    status = read_status(job.run_dir)
    if report.error is None and status.get("status") in FINAL:
        job.state, job.message = status["status"], status.get("message", "")
        return
    job.state = "interrupted" if status.get("status") == "interrupted" else "failed"
    job.log = report.log or os.path.join(job.run_dir, "papermill.log")
    reason = report.error or f"the run's status is {status.get('status', 'missing')}"
    job.message = f"{reason} (log: {job.log})"
