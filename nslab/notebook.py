"""What the notebooks share: the parameters cell of 01 (generated from RunConfig), checking what
papermill injected, and error messages that come first.

The ``parameters`` cell of ``notebooks/01_reproduce.ipynb`` is :func:`parameters_source`: one line
per :class:`~nslab.config.RunConfig` field, in order, with its type, its default and its help. The
shipped defaults are the ``quick`` preset's (a CPU-sized run), so Run All is safe; the paper's runs
are a preset away. ``python -m nslab.notebook`` rewrites the cell after a field changes; a test
compares the two.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
from dataclasses import fields
from typing import Any, Mapping

from .config import RunConfig
from .paths import REPO_ROOT, resolve
from .presets import PRESETS

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "01_reproduce.ipynb")
SHIPPED_PRESET = "quick"


def notebook_defaults() -> dict[str, Any]:
    """RunConfig's defaults with the shipped preset's values on top (``name`` stays derived)."""
    preset = {k: v for k, v in PRESETS[SHIPPED_PRESET].items() if k != "name"}
    return RunConfig.from_dict(preset).to_dict()


def _literal(value: Any) -> str:
    return repr(list(value)) if isinstance(value, (tuple, list)) else repr(value)


def _type_name(value: Any) -> str:
    return "list" if isinstance(value, (tuple, list)) else type(value).__name__


def parameters_source() -> str:
    """The parameters cell: ``name: type = default  # help`` for every field, in RunConfig's order."""
    defaults = notebook_defaults()
    lines = []
    for f in fields(RunConfig):
        value = defaults[f.name]
        line = f"{f.name}: {_type_name(value)} = {_literal(value)}"
        lines.append(f"{line}  # {f.metadata['help']}" if f.metadata["help"] else line)
    return "\n".join(lines)


def _parameters_cell(nb: dict) -> dict:
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{NOTEBOOK} must have exactly one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def write_parameters_cell(path: str = NOTEBOOK) -> bool:
    """Rewrite the parameters cell of ``path`` from RunConfig; True if it changed."""
    with open(path) as f:
        nb = json.load(f)
    cell = _parameters_cell(nb)
    lines = parameters_source().splitlines(keepends=True)
    if cell["source"] == lines or "".join(cell["source"]) == "".join(lines):
        return False
    cell["source"] = lines
    from .records import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return True


def config_from_namespace(namespace: Mapping[str, Any], before: set[str]) -> RunConfig:
    """The RunConfig of a notebook's globals, refusing a name papermill injected that is no field.

    ``before``: the global names that existed before the parameters cell ran. Papermill injects
    ``-p widht 10`` as a variable ``widht`` with only a warning; here it stops the notebook at once,
    naming the nearest field. Relative ``out_dir`` and ``data_dir`` are resolved by
    :func:`nslab.paths.resolve` (from ``notebooks/``: against the repository root).
    """
    known = [f.name for f in fields(RunConfig)]
    unknown = [n for n in namespace if n not in before and not n.startswith("_") and n not in known]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, known, n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown parameter {', '.join(hints)}: not a RunConfig field; the parameters are "
                         f"{known}")
    config = RunConfig.from_dict({n: namespace[n] for n in known if n in namespace})
    # One rule for relative paths in all notebooks (nslab.paths): from notebooks/, the repository root.
    return config.replace(out_dir=resolve(config.out_dir), data_dir=resolve(config.data_dir))


# Errors nslab raises to refuse an input: the message is the whole story, the traceback only noise.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


PARENT_POLL_S = 0.1


def die_with_sweep_worker() -> bool:
    """In a kernel a sweep started, end this process as soon as the worker that started it is gone.

    A cancelled SLURM job, a cancelled Ray task or a killed local worker takes papermill with it, but
    Jupyter starts kernels in their own session, out of reach of the job's signals; ipykernel notices
    an orphaned kernel only when it is re-parented to pid 1 (not to a job step or a subreaper). An
    orphan would keep training and checkpointing into a run folder that the resubmitted run is about
    to take. Returns whether the watch was armed.
    """
    from .sweep.task import SWEEP_PARENT

    expected = os.environ.get(SWEEP_PARENT, "")
    if not expected.isdigit() or os.getppid() != int(expected):
        return False
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)  # checkpoints and tables are replaced atomically: nothing is half-written

    threading.Thread(target=watch, name="nslab-sweep-parent", daemon=True).start()
    return True


def setup() -> None:
    """In a notebook kernel, show nslab's refusals as one line, message first (no-op elsewhere).

    In a kernel started by a sweep, also end the kernel with the sweep's worker
    (:func:`die_with_sweep_worker`).

    A refused value (``ValueError``), a missing file or a folder in use then prints
    ``ValueError: width='abc' is not allowed: expected an integer`` and where it was raised, instead
    of a screenful of traceback; any other exception keeps its full traceback.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    die_with_sweep_worker()
    from .locks import FolderInUse

    def short(shell, etype, value, tb, tb_offset=None):
        where = ""
        while tb is not None:  # the innermost frame: where nslab refused
            frame, tb = tb.tb_frame, tb.tb_next
            where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"
        stb = [f"{etype.__name__}: {value}", f"(raised at {where}; nothing further ran)"]
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc(USER_ERRORS + (FolderInUse,), short)


def main(argv: list[str] | None = None) -> int:
    """``python -m nslab.notebook [--check]``: rewrite (or check) 01's parameters cell."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--check"]:
        with open(NOTEBOOK) as f:
            current = "".join(_parameters_cell(json.load(f))["source"])
        if current != parameters_source():
            print(f"{NOTEBOOK}: the parameters cell differs from RunConfig; run python -m nslab.notebook")
            return 1
        return 0
    changed = write_parameters_cell()
    print(f"{NOTEBOOK}: parameters cell {'rewritten' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
