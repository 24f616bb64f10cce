"""The Ray engine: one Ray task per run (``pip install nslab[ray]``).

``--address auto`` joins the cluster ``ray start`` started on this machine, ``host:port`` another
one, and no address starts a local Ray instance for the sweep. Each task asks for ``num_cpus`` /
``num_gpus`` per run and runs :func:`~.task.execute` in a fresh worker process (``max_calls=1``),
so a failing run (an error is returned, never raised) or a crashed worker does not touch the
others. The run folders must be on a filesystem every node shares, and nslab importable by the
cluster's workers (installed on every node, or on the PYTHONPATH ``ray start`` was given).

Ray's own telemetry is switched off in this process before Ray is imported (:data:`TELEMETRY_OFF`),
whether nslab starts a cluster or joins one; a cluster started with ``ray start`` needs the same
variables in the environment of ``ray start`` (see the README).
"""
from __future__ import annotations

import os
import time

from .engine import Executor, Report
from .options import ClusterOptions, SweepError
from .plan import Job, package_root
from .task import RunTask, carried_env, execute

# No usage report (and a loopback address for it, should a component send one anyway), and no silent
# joining of whatever cluster this machine runs when no address is given.
TELEMETRY_OFF = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_ENABLE_AUTO_CONNECT": "0",
}
CANCEL_GRACE_S = 15  # a cancelled run gets this long to stop its kernel before its worker is killed


class RayExecutor(Executor):
    name = "ray"
    poll_every = 0.5

    def __init__(self, options: ClusterOptions):
        os.environ.update(TELEMETRY_OFF)
        try:
            import ray
        except ImportError:
            raise SweepError("--engine ray needs Ray: pip install 'nslab[ray]'") from None
        self.ray, self.options = ray, options
        if not options.address:  # the instance started here: its workers inherit this environment
            os.environ["PYTHONPATH"] = carried_env(package_root())["PYTHONPATH"]
        try:
            ray.init(address=options.address or None, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as err:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") else "; a cluster that authenticates with a token "
                    "needs RAY_AUTH_MODE=token here, and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
            raise SweepError(f"--address={options.address!r}: cannot connect to a Ray cluster "
                             f"({str(err).strip().splitlines()[0]}){hint}") from None
        resources = ray.cluster_resources()
        self.cpus, self.gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        self.address = ray.get_runtime_context().gcs_address
        # Each run in a worker of its own, not retried (a rerun of the sweep resumes it instead).
        self.remote = ray.remote(max_calls=1, max_retries=0)(execute)

    def describe(self) -> str:
        gpus = self.options.gpus_per_run
        return (f"Ray cluster at {self.address} ({self.cpus:g} CPUs, {self.gpus:g} GPUs), per run "
                f"{self.options.cpus_per_run} CPU(s), "
                f"{'1 GPU where the run may use one' if gpus is None and self.gpus else f'{gpus or 0} GPU(s)'}")

    def _gpus(self, job: Job) -> int:
        if self.options.gpus_per_run is not None:
            return self.options.gpus_per_run
        return 1 if self.gpus and job.config.device != "cpu" else 0

    def prepare(self, jobs: list[Job], out: str) -> None:
        for job in jobs:
            cpus, gpus = self.options.cpus_per_run, self._gpus(job)
            if job.action != "skip" and (cpus > self.cpus or gpus > self.gpus):  # Ray would queue it forever
                raise SweepError(f"run {job.name} asks for {cpus} CPU(s) and {gpus} GPU(s); the Ray cluster has "
                                 f"{self.cpus:g} and {self.gpus:g}: lower --cpus-per-run / --gpus-per-run")

    def start(self, job: Job, task: RunTask) -> str:
        cpus, gpus = self.options.cpus_per_run, self._gpus(job)
        task.env["OMP_NUM_THREADS"] = task.env["MKL_NUM_THREADS"] = str(cpus)
        # execute() applies task.env before the kernel starts. Not a runtime_env: each distinct one costs
        # seconds of set-up per worker, and the worker must import nslab to unpickle the task anyway.
        job.handle = self.remote.options(num_cpus=cpus, num_gpus=gpus, name=f"nslab-{job.name}").remote(task)
        job.where, job.state = "a Ray task", "queued"
        return f"{'resuming' if job.action == 'resume' else 'submitted'} as {job.where}"

    def poll(self, jobs: list[Job]) -> dict[str, Report]:
        by_ref = {job.handle: job for job in jobs}
        ready, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0, fetch_local=True)
        reports = {}
        for ref in ready:
            try:
                error = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:  # the worker died, the task was cancelled, ...
                error = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
            reports[by_ref[ref].name] = Report("ended", error)
        for job in jobs:
            if job.name not in reports:  # started once its papermill.log moved (Ray does not say)
                log = os.path.join(job.run_dir, "papermill.log")
                moved = os.path.exists(log) and os.path.getmtime(log) >= job.started - 1
                reports[job.name] = Report("running" if moved else "queued")
        return reports

    def stop(self, jobs: list[Job]) -> bool:
        """Interrupt each run (its kernel is shut down), then kill the workers that did not stop."""
        refs = [job.handle for job in jobs]
        for ref in refs:
            self.ray.cancel(ref, force=False)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while refs and time.monotonic() < deadline:
            _, refs = self.ray.wait(refs, num_returns=len(refs), timeout=0.5)
        for ref in refs:
            self.ray.cancel(ref, force=True)
        return True

    def close(self) -> None:
        self.ray.shutdown()
