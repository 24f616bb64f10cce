"""One rule for relative paths in notebooks: the repository root stands in for ``notebooks/``.

JupyterLab starts a notebook's kernel in the notebook's own folder, papermill in the folder it
was called from. So that ``out_dir='outputs'`` or ``sweep_dir='outputs/quick'`` means the same
folder in both cases, :func:`resolve` reads a relative path against the repository root when the
current folder is this checkout's ``notebooks/``, and against the current folder otherwise.
Absolute paths are returned unchanged.
"""
from __future__ import annotations

import os

# The checkout this package was imported from (nslab/ sits in the repository root).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO_ROOT, "notebooks")


def base_dir() -> str:
    """The folder relative paths are read against: the repository root from ``notebooks/``, else the cwd."""
    cwd = os.getcwd()
    try:
        in_notebooks = os.path.samefile(cwd, NOTEBOOKS)
    except OSError:  # no notebooks/ folder (an installed package): the cwd rules
        in_notebooks = False
    return REPO_ROOT if in_notebooks else cwd


def resolve(path: str | os.PathLike) -> str:
    """``path`` made absolute by the notebook rule above; ``""`` stays ``""`` (meaning: the default)."""
    path = os.path.expanduser(os.fspath(path))
    if not path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir(), path))
