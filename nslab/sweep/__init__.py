"""Sweeps: run a grid file's configurations with papermill, resumably, on one of three engines.

``python -m nslab sweep GRID.yaml [--out DIR] [--engine local|slurm|ray]`` executes
``notebooks/01_reproduce.ipynb`` once per run into ``DIR/<run>/`` (default ``outputs/<sweep>/``),
keeping the executed notebook there as ``notebook.ipynb`` and papermill's log, with every cell's
output, as ``papermill.log``. ``python -m nslab status DIR`` shows where a sweep stands.

One boundary splits the work (see :mod:`nslab.sweep.engine`):

* shared by every engine: planning (:mod:`.plan`: skip completed runs, resume the others from
  their last checkpoint), the progress line with its ETA, ``DIR/sweep_status.json`` and the
  summary ``DIR/summary.csv`` (:mod:`.progress`), the loop that starts runs and collects their
  outcomes (:mod:`.engine`);
* an executor takes "run this notebook with these parameters into this run folder"
  (:class:`.task.RunTask`) and reports back queued / running / ended (with the error, if any):
  :mod:`.local` (worker processes on this machine), :mod:`.slurm` (one SLURM job per run through
  submitit), :mod:`.ray_engine` (one Ray task per run).

A failing run does not stop the others; the command exits non-zero if any run did not complete.
"""


def add_parser(sub) -> None:
    """Register ``sweep`` and ``status`` (imported here, so ``nslab.grid`` may import ``.options``)."""
    from .cli import add_parsers

    add_parsers(sub)
