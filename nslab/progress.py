"""Progress for people: tqdm bars (epochs with an ETA, batches within the epoch) where someone watches.

Bars appear in a terminal and in a notebook opened in JupyterLab (``tqdm.auto`` picks the widget
there). Logs and batch runs get only the one plain line per epoch that ``train`` prints anyway: bars
are off where stderr is not a terminal outside a kernel, and wherever ``NSLAB_PROGRESS=lines`` (the
sweep sets it for its papermill workers, where a widget would be saved frozen at 0 %).
"""
from __future__ import annotations

import os
import sys


def bars_wanted() -> bool:
    """True where a person is likely watching: a terminal, or an IPython kernel not run by a sweep."""
    mode = os.environ.get("NSLAB_PROGRESS", "auto").lower()
    if mode in ("lines", "0", "off", "false", "no"):
        return False
    if mode in ("bars", "1", "on", "true", "yes"):
        return True
    if "ipykernel" in sys.modules:
        return True
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class Progress:
    """An epoch bar (with ETA) and a batch bar that restarts each epoch; does nothing when disabled."""

    def __init__(self, epochs: int, done: int, batches: int, enabled: bool | None = None, desc: str = ""):
        self.enabled = bars_wanted() if enabled is None else enabled
        self._epochs = self._batches = None
        self.batches_per_epoch = batches
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._epochs = tqdm(total=epochs, initial=done, desc=desc or "epochs", unit="epoch", dynamic_ncols=True,
                            position=0, leave=True)

    def start_epoch(self, epoch: int) -> None:
        if not self.enabled:
            return
        if self._batches is not None:
            self._batches.close()
        self._batches = self._tqdm(total=self.batches_per_epoch, desc=f"epoch {epoch}", unit="batch",
                                   dynamic_ncols=True, position=1, leave=False, mininterval=0.5)

    def batch(self) -> None:
        if self._batches is not None:
            self._batches.update()

    def end_epoch(self, summary: str = "") -> None:
        if self._epochs is not None:
            self._epochs.update()
            if summary:
                self._epochs.set_postfix_str(summary, refresh=True)

    def write(self, line: str) -> None:
        """A log line that does not break the bars (tqdm.write), or a plain print when they are off."""
        if self.enabled:
            self._tqdm.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        for bar in (self._batches, self._epochs):
            if bar is not None:
                bar.close()
        self._batches = self._epochs = None
