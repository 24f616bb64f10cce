"""The SLURM engine: one SLURM job per run, submitted through submitit (``pip install nslab[slurm]``).

Each job runs :func:`~.task.execute` for its run on a cluster node; the sweep folder (run folders,
``.slurm/`` with submitit's scripts, pickles and logs) must be on a filesystem the nodes share.
The job ids are recorded in ``DIR/.slurm/jobs.json`` as they are handed out, so a later invocation
(or ``python -m nslab status DIR``) finds a run's job again: a run whose job is queued or running is
watched, never submitted twice; a run whose job ended without completing it is submitted again and
resumes from its last checkpoint. A job that SLURM preempts or times out is requeued by submitit
(SLURM signals it first) and resumes the same way.

Job states come from ``squeue --states=all`` (it lists finished jobs for a while, and needs no
accounting database); the outcome from submitit's result file.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time

from ..records import write_json
from .engine import Executor, Report
from .options import ClusterOptions, SweepError, minutes
from .plan import FINAL, Job, package_root
from .task import RunTask, execute

try:
    from submitit.helpers import Checkpointable
except ImportError:  # the slurm extra is not installed: SlurmExecutor says so before anything runs
    Checkpointable = object

QUEUED = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED")
RUNNING = ("RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING")
RESULT_GRACE_S = 30  # a shared filesystem may show a job's result file a little after the job ends


def book_path(out: str) -> str:
    return os.path.join(out, ".slurm", "jobs.json")


def read_book(out: str) -> dict:
    """``{run: {"job_id": ..., "submitted": ...}}`` from ``DIR/.slurm/jobs.json`` ({} where there is none)."""
    try:
        with open(book_path(out)) as f:
            book = json.load(f)
    except (OSError, ValueError):
        return {}
    return book if isinstance(book, dict) else {}


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job it still lists (``RUNNING``, ``PENDING``, ``CANCELLED``, ...)."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise SweepError("cannot ask SLURM about this sweep's jobs: squeue is not on PATH (run this on the "
                         "cluster, or delete .slurm/jobs.json in the sweep folder if those jobs are gone)")
    done = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={','.join(job_ids)}"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # none of them is known any more
            return {}
        raise SweepError(f"squeue failed: {done.stderr.strip() or done.returncode}")
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state.split()[0] if state else ""
    return states


def live_jobs(jobs: list[Job], out: str) -> dict[str, tuple[str, str]]:
    """Runs of ``jobs`` (not yet final) whose recorded SLURM job is still queued or running:
    ``{run: (job id, "queued" | "running")}``."""
    book = read_book(out)
    wanted = {j.name: str(book[j.name]["job_id"]) for j in jobs
              if j.state not in FINAL and isinstance(book.get(j.name), dict) and "job_id" in book[j.name]}
    states = squeue_states(sorted(set(wanted.values())))
    return {run: (job_id, "running" if states[job_id] in RUNNING else "queued")
            for run, job_id in wanted.items() if states.get(job_id, "") in QUEUED + RUNNING}


def refuse_if_live(jobs: list[Job], out: str) -> None:
    """For other engines: refuse to start runs that SLURM jobs of this sweep are still running."""
    if not os.path.exists(book_path(out)):
        return
    live = live_jobs(jobs, out)
    if live:
        listed = ", ".join(f"{run} (job {job_id})" for run, (job_id, _) in sorted(live.items()))
        raise SweepError(f"runs of this sweep are queued or running as SLURM jobs: {listed}; "
                         f"use --engine slurm to watch them, or scancel them first")


def _sinfo(*args: str) -> list[str]:
    done = subprocess.run(["sinfo", "--noheader", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SweepError(f"cannot reach SLURM (sinfo: {done.stderr.strip() or done.returncode})")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


class SlurmExecutor(Executor):
    name = "slurm"
    poll_every = 2.0

    def __init__(self, options: ClusterOptions):
        for tool in ("sbatch", "squeue", "sinfo", "srun"):
            if shutil.which(tool) is None:
                raise SweepError(f"--engine slurm: {tool} is not on PATH: run the sweep on a SLURM login node")
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise SweepError("--engine slurm needs submitit: pip install 'nslab[slurm]'") from None
        self.options = options
        # One line per partition and kind of node: name (the default marked *), generic resources, time limit.
        lines = [(line.split() + ["", ""])[:3] for line in _sinfo("--format=%P %G %l")]
        partitions = {name.rstrip("*") for name, _, _ in lines}
        default = next((name.rstrip("*") for name, _, _ in lines if name.endswith("*")), "")
        self.partition = options.partition or default
        if self.partition not in partitions:
            if options.partition:
                raise SweepError(f"--partition={options.partition!r} is not allowed: this cluster's partitions "
                                 f"are {sorted(partitions)}")
            raise SweepError("the cluster has no default partition: choose one with --partition")
        mine = [(gres, limit) for name, gres, limit in lines if name.rstrip("*") == self.partition]
        self.has_gpus = any("gpu" in gres.lower() for gres, _ in mine)
        limit = mine[0][1]
        try:  # the partition's limit (the longest a job may ask for) unless --time says otherwise
            minutes(limit)
        except SweepError:  # "infinite", "n/a"
            limit = "UNLIMITED"
        self.time = options.time or limit
        self.minutes = minutes(self.time)  # submitit's unit; it also times its requeue decisions by it
        self.out = ""
        self.book: dict = {}

    def describe(self) -> str:
        gpus = self.options.gpus_per_run
        return (f"SLURM partition {self.partition}, per run {self.options.cpus_per_run} CPU(s), "
                f"{'1 GPU where the run may use one' if gpus is None and self.has_gpus else f'{gpus or 0} GPU(s)'}, "
                f"time {self.time}" + (f", mem {self.options.mem}" if self.options.mem else ""))

    def prepare(self, jobs: list[Job], out: str) -> None:
        self.out = out
        self.folder = os.path.join(out, ".slurm")
        os.makedirs(self.folder, exist_ok=True)
        self.book = read_book(out)

    def _gpus(self, job: Job) -> int:
        if self.options.gpus_per_run is not None:
            return self.options.gpus_per_run
        return 1 if self.has_gpus and job.config.device != "cpu" else 0

    def _executor(self, job: Job):
        import submitit

        executor = submitit.SlurmExecutor(folder=self.folder)
        extra = dict(self.options.extra)
        if self.options.mem:
            extra["mem"] = self.options.mem  # SLURM's own format; submitit's mem_gb would round it
        gpus = self._gpus(job)
        # The job imports this checkout's nslab to unpickle its task, whatever --export the site uses.
        setup = [f"export PYTHONPATH={shlex.quote(package_root())}${{PYTHONPATH:+:$PYTHONPATH}}"]
        executor.update_parameters(job_name=f"nslab-{job.name}", partition=self.partition, time=self.minutes,
                                   cpus_per_task=self.options.cpus_per_run, ntasks_per_node=1, setup=setup,
                                   **({"gpus_per_node": gpus} if gpus else {}), additional_parameters=extra)
        return executor

    def start(self, job: Job, task: RunTask) -> str:
        record = self.book.get(job.name)
        if isinstance(record, dict) and "job_id" in record:
            state = squeue_states([str(record["job_id"])]).get(str(record["job_id"]), "")
            if state in QUEUED + RUNNING:  # never submit a run twice: watch the job already there
                job.handle, job.where = str(record["job_id"]), f"SLURM job {record['job_id']}"
                job.state = "running" if state in RUNNING else "queued"
                return f"already {job.state} as {job.where}"
        task.env["OMP_NUM_THREADS"] = task.env["MKL_NUM_THREADS"] = str(self.options.cpus_per_run)
        submitted = self._executor(job).submit(SlurmRun(), task)
        job.handle, job.where, job.state = str(submitted.job_id), f"SLURM job {submitted.job_id}", "queued"
        self.book[job.name] = {"job_id": job.handle, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(book_path(self.out), self.book)
        return f"{'resuming' if job.action == 'resume' else 'submitted'} as {job.where}"

    def poll(self, jobs: list[Job]) -> dict[str, Report]:
        states = squeue_states(sorted({j.handle for j in jobs}))
        reports = {}
        for job in jobs:
            state = states.get(job.handle, "")
            if state in QUEUED + RUNNING:
                reports[job.name] = Report("running" if state in RUNNING else "queued")
                continue
            outcome = self._outcome(job, state)
            if outcome is not None:
                reports[job.name] = outcome
        return reports

    def _outcome(self, job: Job, state: str) -> Report | None:
        """The job left the queue: its result file holds execute()'s answer; no file means SLURM ended it."""
        import submitit

        handle = submitit.SlurmJob(folder=self.folder, job_id=job.handle)
        log = str(handle.paths.stderr)
        if handle.paths.result_pickle.exists():
            try:  # execute()'s answer: papermill.log (the default) is the log to read
                return Report("ended", handle.result())
            except Exception as err:  # submitit's own failure (e.g. it could not unpickle the task)
                return Report("ended", f"{type(err).__name__}: {str(err).strip().splitlines()[-1:]}", log)
        first = job.extra.setdefault("left_queue", time.monotonic())
        if time.monotonic() - first < RESULT_GRACE_S and state in ("", "COMPLETED"):
            return None  # give a shared filesystem time to show the result file
        return Report("ended", f"SLURM job {job.handle} ended as {state or 'unknown'} before the run finished; "
                               f"run the sweep again to resume it", log)

    def stop(self, jobs: list[Job]) -> bool:
        return False  # Ctrl-C stops watching; the jobs stay queued or running (scancel stops them)


class SlurmRun(Checkpointable):
    """The job's callable. On preemption or time-out, submitit calls ``checkpoint`` (inherited: run
    again with the same task) and requeues the job; training then resumes from its last checkpoint."""

    def __call__(self, task: RunTask) -> str | None:
        return execute(task)
