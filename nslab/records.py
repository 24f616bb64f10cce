"""The run folder: written as the run goes, every file atomically, and read back.

``outputs/<run name>/`` holds

* ``config.json``: the resolved configuration plus provenance (versions, git revision, device);
* ``epochs.csv``: ``epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds``;
* ``layers.csv``: ``epoch, layer, shape, sigma_max, frobenius, stable_rank,
  effective_rank, numerical_rank, target, power_iter_rel_err`` (epoch 0 = before training);
* ``spectra.parquet``: ``epoch, layer, index, sigma`` (long format);
* ``op_spectra.parquet``: the same for conv layers as operators, where ``op_spectra_every`` asks;
* ``checkpoints/epoch_NNNN.pt``;
* ``status.json``: ``{"status": running|completed|failed|diverged|interrupted, "message": ..., "epoch": ...}``
  (``epoch``: the last epoch whose rows are recorded).

Each file is written to a temporary file in the same folder and renamed over the
old one, so a crash leaves either the old or the new table, never half of one.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

# clean_test_*: the un-augmented test set, recorded where augment_test is on (NaN otherwise).
EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "clean_test_loss",
                 "clean_test_acc", "seconds"]
# target: the method's per-layer target (a spectral norm where config.json's target_norm is
# "spectral", a Frobenius norm where it is "frobenius"); n_above_target and excess are measured
# against a spectral target (NaN without one); op_*: conv layers as operators (NaN for others);
# alpha: heavy-tail exponent, at spectra epochs only.
LAYER_COLUMNS = ["epoch", "layer", "shape", "sigma_max", "frobenius", "stable_rank", "effective_rank",
                 "numerical_rank", "target", "power_iter_rel_err", "n_above_target", "excess",
                 "op_sigma_max", "op_stable_rank", "alpha"]
SPECTRA_COLUMNS = ["epoch", "layer", "index", "sigma"]
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 lets the umask decide, as for any ordinary file (mkstemp would force 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def write_table(path: str, df: pd.DataFrame) -> None:
    """CSV or parquet by extension, atomically."""
    with atomic_path(path) as tmp:
        if path.endswith(".parquet"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def read_status(run_dir: str) -> dict:
    """``status.json`` of a run folder as a dict; ``{}`` where it is missing or unreadable.

    nslab writes it atomically, so it is never half-written; a foreign or damaged file reads as no status.
    """
    try:
        status = read_json(os.path.join(run_dir, "status.json"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _known(row: dict, columns: list[str], table: str) -> None:
    """A value under a key the table has no column for would be dropped silently by pandas: refuse it."""
    unknown = [k for k in row if k not in columns]
    if unknown:
        raise ValueError(f"{table} has no column {unknown}: add it to records.py's column list "
                         f"({columns})")


@dataclass
class RunRecorder:
    """Accumulates a run's tables in memory and rewrites each file atomically when it grows."""

    run_dir: str
    epochs: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    spectra: list[pd.DataFrame] = field(default_factory=list)
    op_spectra: list[pd.DataFrame] = field(default_factory=list)

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def write_config(self, config: dict) -> None:
        write_json(self.path("config.json"), config)

    def set_status(self, status: str, message: str = "", epoch: int | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is not allowed: choose one of {list(STATUSES)}")
        write_json(self.path("status.json"), {"status": status, "message": message, "epoch": epoch})

    def add_epoch(self, row: dict) -> None:
        _known(row, EPOCH_COLUMNS, "epochs.csv")
        self.epochs.append(row)
        write_table(self.path("epochs.csv"), pd.DataFrame(self.epochs, columns=EPOCH_COLUMNS))

    def add_layers(self, rows: list[dict], spectra: pd.DataFrame | None = None,
                   op_spectra: pd.DataFrame | None = None) -> None:
        for row in rows:
            _known(row, LAYER_COLUMNS, "layers.csv")
        self.layers.extend(rows)
        write_table(self.path("layers.csv"), pd.DataFrame(self.layers, columns=LAYER_COLUMNS))
        for table, name, new in ((self.spectra, "spectra.parquet", spectra),
                                 (self.op_spectra, "op_spectra.parquet", op_spectra)):
            if new is not None:
                table.append(new)
                write_table(self.path(name), pd.concat(table, ignore_index=True))

    def add_probe(self, probe) -> None:
        """The tables of one probe epoch (nslab.probing.Probe)."""
        self.add_layers(probe.rows, probe.spectra, probe.op_spectra)

    def clear(self) -> None:
        """Start the tables afresh (a restart with no checkpoint to resume from)."""
        self.epochs, self.layers, self.spectra, self.op_spectra = [], [], [], []
        write_table(self.path("epochs.csv"), pd.DataFrame(columns=EPOCH_COLUMNS))
        write_table(self.path("layers.csv"), pd.DataFrame(columns=LAYER_COLUMNS))
        for name in ("spectra.parquet", "op_spectra.parquet"):
            if os.path.exists(self.path(name)):
                os.remove(self.path(name))

    def resume_from(self, run: "Run", epoch: int) -> None:
        """Take the tables of ``run`` (this folder read back), keeping rows up to ``epoch`` (the checkpoint's)."""
        self.epochs = run.epochs[run.epochs.epoch <= epoch].to_dict("records")
        self.layers = run.layers[run.layers.epoch <= epoch].to_dict("records")
        kept = run.spectra[run.spectra.epoch <= epoch]
        self.spectra = [kept] if len(kept) else []
        kept = run.op_spectra[run.op_spectra.epoch <= epoch]
        self.op_spectra = [kept] if len(kept) else []


def final_rows(epochs: pd.DataFrame, by: str = "run") -> pd.DataFrame:
    """Each run's last epoch row (the largest ``epoch``), indexed by ``by``; runs without rows are absent.

    ``epochs``: epochs.csv rows of one or more runs with a ``by`` column naming the run. The one place
    that reads final results: the sweep's summary and the analysis tables both call it.
    """
    if not len(epochs):
        return epochs.set_index(by) if by in epochs else epochs
    return epochs.sort_values("epoch", kind="stable").groupby(by, sort=False).tail(1).set_index(by)


@dataclass
class Run:
    """A run folder read back: its config, tables and status."""

    run_dir: str
    config: dict
    status: dict
    epochs: pd.DataFrame
    layers: pd.DataFrame
    spectra: pd.DataFrame
    op_spectra: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SPECTRA_COLUMNS))

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.run_dir))


def _read_or_empty(path: str, columns: list[str], reader: Callable) -> pd.DataFrame:
    if not os.path.exists(path):
        return pd.DataFrame(columns=columns)
    return reader(path)


def load_run(run_dir: str) -> Run:
    """Read a run folder; tables that do not exist yet come back empty with their columns."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir!r} is not a run folder: it has no config.json")
    status_path = os.path.join(run_dir, "status.json")
    status = read_json(status_path) if os.path.exists(status_path) else {"status": "unknown", "message": ""}
    return Run(
        run_dir=run_dir,
        config=read_json(config_path),
        status=status,
        epochs=_read_or_empty(os.path.join(run_dir, "epochs.csv"), EPOCH_COLUMNS, pd.read_csv),
        layers=_read_or_empty(os.path.join(run_dir, "layers.csv"), LAYER_COLUMNS, pd.read_csv),
        spectra=_read_or_empty(os.path.join(run_dir, "spectra.parquet"), SPECTRA_COLUMNS, pd.read_parquet),
        op_spectra=_read_or_empty(os.path.join(run_dir, "op_spectra.parquet"), SPECTRA_COLUMNS, pd.read_parquet),
    )
