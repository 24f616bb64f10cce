"""The local engine: runs side by side in worker processes on this machine.

``workers`` at a time (default: one per CUDA GPU, each pinned with ``CUDA_VISIBLE_DEVICES``, else one
on the CPU; several CPU workers share the cores through ``OMP_NUM_THREADS``). Each worker is one
process running :func:`~.task.execute`; it dies with the sweep (a parent-death signal), and its
notebook kernel dies with it (the kernel polls its parent), so killing the sweep frees its lock.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time

from .engine import Executor, Report
from .plan import Job
from .task import RunTask, execute

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def gpu_ids() -> list[str]:
    """The CUDA devices runs may be pinned to: CUDA_VISIBLE_DEVICES's entries, else 0..count-1."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


def default_workers(jobs: list[Job]) -> int:
    return max(1, len(gpu_ids())) if any(j.config.device != "cpu" for j in jobs) else 1


def worker_env(job: Job, slot: int, workers: int, gpus: list[str]) -> dict:
    """The worker's additions to the environment: its GPU, or its share of the CPU cores."""
    env = {}
    if gpus and job.config.device != "cpu":
        job.where = f"GPU {gpus[slot % len(gpus)]}"
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    elif workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, cores // workers))
    return env


def _worker(task: RunTask, parent: int, conn) -> None:
    """Worker process: dies with the sweep; papermill runs the notebook; the outcome goes back through ``conn``."""
    if sys.platform.startswith("linux"):  # SIGTERM when the sweep's process dies, even by kill -9
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so papermill shuts its kernel down
    if os.getppid() != parent:  # the sweep died before the signal was armed
        sys.exit(143)
    conn.send(execute(task))
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


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int = 0):
        self.workers = workers
        self.gpus: list[str] = []
        self.free: list[int] = []
        self.ctx = None

    def prepare(self, jobs: list[Job], out: str) -> None:
        self.workers = self.workers or default_workers(jobs)
        self.gpus = gpu_ids() if any(j.config.device != "cpu" for j in jobs) else []
        self.free = list(range(self.workers))
        self.ctx = _start_method()

    def describe(self) -> str:
        return f"{self.workers} worker(s)" + (f" on GPUs {','.join(self.gpus)}" if self.gpus else " on the CPU")

    def has_room(self) -> bool:
        return bool(self.free)

    def start(self, job: Job, task: RunTask) -> str:
        slot = self.free.pop(0)
        task.env.update(worker_env(job, slot, self.workers, self.gpus))
        receive, send = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=_worker, name=f"nslab-sweep-{job.name}", daemon=False,
                                   args=(task, os.getpid(), send))
        process.start()
        send.close()  # the worker holds the only sending end now
        job.handle, job.state = (process, receive, slot), "running"
        return ("resuming" if job.action == "resume" else "started") + (f" on {job.where}" if job.where else "")

    def poll(self, jobs: list[Job]) -> dict[str, Report]:
        reports = {}
        for job in jobs:
            process, receive, slot = job.handle
            if process.is_alive():
                continue
            process.join()
            error = receive.recv() if receive.poll() else f"worker process ended with exit code {process.exitcode}"
            receive.close()
            self.free = sorted(self.free + [slot])
            reports[job.name] = Report("ended", error)
        return reports

    def stop(self, jobs: list[Job]) -> bool:
        for job in jobs:
            job.handle[0].terminate()
        deadline = time.monotonic() + 30
        for job in jobs:
            job.handle[0].join(max(0.0, deadline - time.monotonic()))
        return True
