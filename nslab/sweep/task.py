"""One run of a sweep: papermill executes ``notebooks/01_reproduce.ipynb`` into the run folder.

Every engine runs exactly this, in whatever process it gives the run: a local worker process,
a SLURM job (through submitit) or a Ray task. Only the outcome comes back: ``None`` when the
notebook ran to its end, else one line ``"ename: evalue"``. Everything else (tables, checkpoints,
status, the executed notebook and papermill's log) is in the run folder, on a filesystem the
sweep shares with the engine's machines.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from dataclasses import dataclass, field

from ..locks import open_append

# Environment variables a run takes along to any machine (the data folder and other nslab settings).
CARRIED_PREFIXES = ("NSLAB_",)
# The worker's pid, for the kernel it starts: the kernel ends with the worker (nslab.notebook.die_with_sweep_worker).
SWEEP_PARENT = "NSLAB_SWEEP_PARENT"


@dataclass(frozen=True)
class RunTask:
    """What a worker needs: the notebook, the run folder, papermill parameters, environment, cwd."""

    notebook: str
    run_dir: str
    parameters: dict
    cwd: str
    env: dict = field(default_factory=dict)

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, "papermill.log")


def carried_env(package_root: str) -> dict:
    """PYTHONPATH with this checkout first (a worker imports the same nslab), and every ``NSLAB_*``."""
    env = {k: v for k, v in os.environ.items() if k.startswith(CARRIED_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env["NSLAB_PROGRESS"] = "lines"  # a tqdm widget in a papermill kernel would be saved frozen at 0 %
    return env


def execute(task: RunTask) -> str | None:
    """Run the notebook with papermill in this process; ``None`` on success, else the error in one line.

    Never raises for a failing run: an engine must not mistake a run's failure for its own.
    """
    os.environ.update(task.env)  # the kernel inherits it: data dir, thread count, PYTHONPATH
    os.environ[SWEEP_PARENT] = str(os.getpid())
    partial = os.path.join(task.run_dir, ".notebook.running.ipynb")
    final = os.path.join(task.run_dir, "notebook.ipynb")
    try:
        os.makedirs(task.run_dir, exist_ok=True)  # papermill needs the output folder to exist
        _refuse_link(partial)
        log = open_append(task.log_path)
    except (OSError, PermissionError) as err:
        return f"{type(err).__name__}: {err}"
    error = None
    with log, _output_to(log):
        logging.getLogger("papermill").info("sweep: executing %s for run %s", task.notebook, task.parameters["name"])
        try:
            import papermill

            papermill.execute_notebook(task.notebook, partial, parameters=task.parameters, kernel_name="python3",
                                       cwd=task.cwd, progress_bar=False, log_output=True, store_widget_state=False,
                                       shutdown_kernel="immediate")  # the run folder is complete by then
        except BaseException as err:  # PapermillExecutionError (a cell raised), an interrupt, anything else
            ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
            error = f"{ename}: {evalue}".strip()[:4000]  # one message, small enough for any engine's channel
            logging.getLogger("papermill").info("sweep: the run failed: %s", error)
        finally:
            if os.path.lexists(partial):  # a failed notebook is kept too, with the failing cell marked
                os.replace(partial, final)
    return error


def _refuse_link(path: str) -> None:
    """Papermill writes ``path`` with a plain open(): refuse one that is a link or not a file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise PermissionError(f"{path} is a symbolic link or not a regular file: nslab does not write through "
                              f"links (remove it, or use another folder)")


@contextlib.contextmanager
def _output_to(log):
    """Send this process's stdout, stderr (file descriptors too: the kernel inherits them) and logging to ``log``.

    Restored afterwards, so an engine's own process (a SLURM job, a Ray worker) keeps its logs.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ours = logging.StreamHandler(log)
    ours.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        root.handlers[:] = [ours]  # detached, not closed: they are the engine's, given back below
        root.setLevel(logging.INFO)
        yield
    finally:
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sys.stdout, sys.stderr = streams
        root.handlers[:] = handlers
        root.setLevel(level)
