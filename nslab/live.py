"""Following runs as they are written: which run folders changed, and a poller on the kernel's event loop.

A run folder changes when one of its files (:data:`WATCHED`) gets another modification time or
size; nslab writes each atomically (a rename), so a stamp change means a whole new table. A
sweep folder can gain run folders while it runs: :class:`FolderWatch` looks again for them at
every poll. Only changed runs are read again (:func:`refresh_study`); the others keep their
tables and their spectra index entries.

:class:`Poller` calls a function every few seconds as an asyncio task on the running event loop
(a Jupyter kernel's), so widget updates happen on the kernel's own thread, between cells;
:class:`Debounce` runs an action once a burst of calls has stopped (the epoch slider's cursors).
"""
from __future__ import annotations

import asyncio
import os
from typing import Callable

from .analysis import Source, Study, build_study, find_run_dirs, read_runs
from .records import load_run

WATCHED = ("config.json", "status.json", "epochs.csv", "layers.csv", "spectra.parquet")


def stamp(run_dir: str) -> tuple:
    """(mtime_ns, size) of each watched file of a run folder (None for a missing one)."""
    out = []
    for name in WATCHED:
        try:
            st = os.stat(os.path.join(run_dir, name))
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class FolderWatch:
    """The run folders of ``source`` and their stamps; :meth:`changes` says what is new since the last call."""

    def __init__(self, source: Source):
        self.source = source
        self.dirs = find_run_dirs(source)
        self.stamps = {d: stamp(d) for d in self.dirs}

    def changes(self) -> tuple[list[str], bool]:
        """(run folders whose files changed or that appeared, whether the list of folders changed)."""
        try:
            dirs = find_run_dirs(self.source)
        except (FileNotFoundError, ValueError):  # the sweep folder went away: keep what is shown
            return [], False
        changed = []
        for d in dirs:
            s = stamp(d)
            if self.stamps.get(d) != s:
                changed.append(d)
                self.stamps[d] = s
        appeared = dirs != self.dirs
        self.dirs = dirs
        return changed, appeared


def refresh_study(study: Study, watch: FolderWatch) -> tuple[Study, list[str]]:
    """``study`` brought up to date with ``watch``'s folders: (the new Study, run folders read again).

    Returns ``study`` itself when nothing changed.
    """
    changed, appeared = watch.changes()
    if not changed and not appeared:
        return study, []
    known = {run.run_dir: run for run in study.runs.values() if run.run_dir not in changed}
    reread = {d: load_run(d) for d in changed if os.path.isfile(os.path.join(d, "config.json"))}
    runs = read_runs(watch.dirs, reuse={**known, **reread})
    return build_study(runs, previous=study), changed


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running this code (a Jupyter kernel's), or None (a plain script, a test)."""
    # Only the loop running this very code: a Jupyter kernel runs cells and widget callbacks inside
    # its loop. A loop that merely runs in this thread elsewhere (playwright's sync API keeps one
    # between calls) would never get to run a callback scheduled on it while this code waits.
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Debounce:
    """Run ``action`` once, ``seconds`` after the last :meth:`__call__` (at once where no loop runs)."""

    def __init__(self, action: Callable[[], None], seconds: float):
        self.action, self.seconds, self.handle = action, seconds, None

    def __call__(self) -> None:
        loop = running_loop()
        if loop is None:
            self.action()
            return
        if self.handle is not None:
            self.handle.cancel()
        self.handle = loop.call_later(self.seconds, self.action)


class Poller:
    """Call ``tick()`` every ``seconds`` on the running asyncio loop until :meth:`stop`.

    ``start`` raises RuntimeError outside an event loop (a plain script): call ``tick`` yourself there.
    An exception in ``tick`` stops the poller and is handed to ``on_error``.
    """

    def __init__(self, tick: Callable[[], None], seconds: float, on_error: Callable[[BaseException], None] = print):
        if not seconds > 0:
            raise ValueError(f"seconds={seconds!r} is not allowed: must be > 0")
        self.tick, self.seconds, self.on_error = tick, float(seconds), on_error
        self.task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        if self.running:
            return
        loop = running_loop()
        if loop is None:
            raise RuntimeError("live refresh needs a running event loop (a Jupyter kernel); call refresh() yourself")
        self.task = loop.create_task(self._loop())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            try:
                self.tick()
            except Exception as err:  # shown by the dashboard, not lost in a task nobody awaits
                self.on_error(err)
                return
