"""Planning a sweep: one job per run, skipped or resumed by what its run folder already holds.

Shared by every engine: what to run is decided here from the run folders alone, before any
engine is asked to do anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import nslab

from ..config import RunConfig, settings_differences
from ..grid import Grid, GridError
from ..records import read_json, read_status

NOTEBOOK = "01_reproduce.ipynb"
# States a rerun leaves alone (a diverged run would diverge again, identically).
FINAL = ("completed", "diverged")
# What this sweep keeps beside the run folders; a run cannot take one of these names.
SWEEP_FILES = (".sweep.lock", ".slurm", "sweep_status.json", "summary.csv")
# Files the sweep writes in a run folder (besides the run's own): never through a link.
RUN_FILES = ("papermill.log", "notebook.ipynb", ".notebook.running.ipynb")


@dataclass
class Job:
    """One run of the sweep and what this invocation did with it.

    state: pending | queued | running | completed | failed | diverged | interrupted.
    handle: the engine's own reference (a process, a SLURM job id, a Ray object ref).
    """

    config: RunConfig
    action: str = "run"  # run | resume | skip
    state: str = "pending"
    handle: object = None
    where: str = ""  # the engine's word for where it runs: "GPU 1", "SLURM job 12"
    started: float = 0.0
    wall_s: float = 0.0
    message: str = ""
    log: str = ""  # the log to read when it failed
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.run_name

    @property
    def run_dir(self) -> str:
        return self.config.run_dir


def plan(grid: Grid, out: str) -> list[Job]:
    """One job per run with out_dir = the sweep folder; completed runs are skipped, others resumed.

    Raises GridError where a run folder holds a run with other settings, where a run would take
    the name of a file the sweep keeps, or where a file the sweep writes in a run folder is a link.
    """
    jobs = []
    for config in grid.configs:
        job = Job(config.replace(out_dir=out))
        if job.name in SWEEP_FILES:
            raise GridError(f"{grid.path}: run {job.name!r}: the sweep folder keeps its own {job.name} there: "
                            f"name the run differently")
        for name in RUN_FILES:
            path = os.path.join(job.run_dir, name)
            if os.path.islink(path):
                raise GridError(f"{path} is a symbolic link: nslab does not write through links "
                                f"(remove it, or use another --out)")
        config_path = os.path.join(job.run_dir, "config.json")
        if os.path.exists(config_path):
            diff = settings_differences(read_json(config_path), job.config)
            if diff:
                raise GridError(f"{grid.path}: run {job.name!r}: {job.run_dir} holds a run with other settings ("
                                + ", ".join(diff) + "): use another --out or delete that folder")
            status = read_status(job.run_dir).get("status")
            job.action = "skip" if status in FINAL else "resume"
            if status in FINAL:
                job.state = status
        jobs.append(job)
    return jobs


def package_root() -> str:
    """The folder holding the ``nslab`` package (a checkout's root): workers put it on PYTHONPATH."""
    return os.path.dirname(os.path.dirname(os.path.abspath(nslab.__file__)))


def find_notebook() -> str:
    """``notebooks/01_reproduce.ipynb`` of the checkout this package was imported from."""
    path = os.path.join(package_root(), "notebooks", NOTEBOOK)
    if not os.path.exists(path):
        raise GridError(f"cannot find {path}: sweeps run the notebook of a repository checkout; "
                        f"install nslab from one (pip install -e .) or pass --notebook PATH")
    return path
