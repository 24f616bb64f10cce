"""Several runs at once: load a sweep, index its spectra, group seeds, summarise.

A *source* is a run folder (it holds ``config.json``), a sweep folder (its subfolders
are run folders; other files such as the executed notebooks or a summary CSV are
ignored), or a list of either. :func:`load_study` reads every run once and builds
the long tables that figures and dashboards draw from; everything here returns
DataFrames or arrays and draws nothing. The blog comparison is in :mod:`nslab.fidelity`.

Conventions: accuracies in run tables are fractions; everything meant for people
(:func:`summary_table`, the figures, the reports) shows percent, as the blog does.
The generalisation gap is train minus test, for accuracy and for loss.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd

from .config import RunConfig, arch_name, field_names
from . import records
from .records import Run, load_run

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

# RunConfig fields that do not make a configuration different: seeds are averaged over,
# and where a run was stored or computed does not change what was trained.
NOT_CONFIGURATION = field_names("configuration", False)
# Fields a group label always shows (as the architecture and method); others only where groups differ.
_LABEL_FIELDS = tuple(f for f in field_names("named") if f not in NOT_CONFIGURATION)
# The rank panels, in order; ``alpha`` (heavy-tail exponent, spectra epochs only) joins them where recorded.
RANK_COLUMNS = ("stable_rank", "effective_rank", "numerical_rank")
OPTIONAL_RANK_COLUMNS = ("alpha",)


# --- Finding and loading runs -----------------------------------------------------------
def is_run_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def find_run_dirs(source: Source) -> list[str]:
    """Run folders named by ``source`` (a run folder, a sweep folder, or a list of either), in order."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if is_run_dir(path):
            return [path]
        if os.path.exists(path) and not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is a file: give a run folder, a sweep folder or a list of them")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} does not exist: give a run folder, a sweep folder or a list of them")
        found = sorted(os.path.join(path, d) for d in os.listdir(path) if is_run_dir(os.path.join(path, d)))
        if not found:
            raise FileNotFoundError(f"{path!r} is neither a run folder (no config.json) nor a sweep folder "
                                    f"(no subfolder holds a config.json)")
        return found
    dirs = [d for item in source for d in find_run_dirs(item)]
    if not dirs:
        raise ValueError("no run folders given: the list is empty")
    return dirs


def configuration(config: dict) -> dict:
    """The fields that define a configuration: RunConfig's fields minus seed, name and places."""
    keys = [f.name for f in fields(RunConfig) if f.name not in NOT_CONFIGURATION]
    return {k: _hashable(config.get(k)) for k in keys if k in config}


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def differing_fields(configs: Iterable[dict], keep: Iterable[str] = ()) -> list[str]:
    """RunConfig fields (in declaration order) whose values differ between ``configs``.

    Places (``location`` fields: name, out_dir) never count; ``keep``: fields to leave out too.
    """
    configs = list(configs)
    skip = set(field_names("location")) | set(keep)
    return [f.name for f in fields(RunConfig) if f.name not in skip
            and len({_hashable(c.get(f.name)) for c in configs}) > 1]


def group_labels(configs: dict[str, dict]) -> dict[str, str]:
    """Run name -> configuration label, e.g. ``mlp5x2000-spectral`` plus ``targets=first_layer``
    for every other field whose value differs between the configurations present."""
    confs = {name: configuration(c) for name, c in configs.items()}
    varying = differing_fields(confs.values(), keep=_LABEL_FIELDS)
    labels = {}
    for name, c in confs.items():
        extra = " ".join(f"{k}={_fmt(c.get(k))}" for k in varying)
        labels[name] = f"{arch_name(configs[name])}-{c.get('method')}" + (f" {extra}" if extra else "")
    return labels


def _fmt(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def target_norm(config: dict) -> str | None:
    """What the ``target`` column of a run's layers.csv means: ``"spectral"``, ``"frobenius"`` or None.

    config.json says so in ``target_norm``; runs written before it existed had spectral targets
    exactly when their method was ``spectral``.
    """
    if "target_norm" in config:
        return config["target_norm"] or None
    return "spectral" if config.get("method") == "spectral" else None


def has_values(table: pd.DataFrame, column: str) -> bool:
    """True where ``table`` has ``column`` and at least one value in it (new probe columns are NaN on old runs)."""
    return column in table and bool(table[column].notna().any())


class SpectraIndex:
    """Sorted singular values keyed by ``(run, layer, epoch)``, built once so a lookup is a dict access.

    ``get`` returns a 1-d float array, descending (index i = 0, 1, ...), or an empty array
    where that run has no spectrum of that layer at that epoch. ``reuse``: an older index whose
    entries are kept for runs whose Run object is the same (a live refresh re-indexes changed runs only).
    """

    def __init__(self, runs: dict[str, Run], reuse: "SpectraIndex | None" = None):
        self._runs: dict[str, tuple[Run, dict]] = {}
        self.epochs: dict[str, list[int]] = {}
        for name, run in runs.items():
            old = reuse._runs.get(name) if reuse else None
            data = old[1] if old and old[0] is run else self._index(run.spectra)
            self._runs[name] = (run, data)
            self.epochs[name] = sorted({e for _, e in data})

    @staticmethod
    def _index(s: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
        if s.empty:
            return {}
        sigma, order = s["sigma"].to_numpy(float), s["index"].to_numpy()
        return {(str(layer), int(epoch)): sigma[rows[np.argsort(order[rows], kind="stable")]]
                for (layer, epoch), rows in s.groupby(["layer", "epoch"], sort=False).indices.items()}

    def get(self, run: str, layer: str, epoch: int) -> np.ndarray:
        entry = self._runs.get(run)
        return entry[1].get((layer, int(epoch)), np.empty(0)) if entry else np.empty(0)

    def all_epochs(self, runs: Iterable[str] | None = None) -> list[int]:
        """Every epoch with a spectrum in any of ``runs`` (all runs by default), ascending."""
        names = self.epochs if runs is None else runs
        return sorted({e for n in names for e in self.epochs.get(n, [])})

    def matrix(self, run: str, layer: str) -> tuple[list[int], np.ndarray]:
        """(epochs, sigma) of one run's layer: sigma has shape (n_values, n_epochs), NaN where shorter."""
        epochs = [e for e in self.epochs.get(run, []) if self.get(run, layer, e).size]
        cols = [self.get(run, layer, e) for e in epochs]
        out = np.full((max((len(c) for c in cols), default=0), len(cols)), np.nan)
        for j, c in enumerate(cols):
            out[:len(c), j] = c
        return epochs, out


@dataclass
class Study:
    """Runs read once, with long tables (a ``run`` and a ``group`` column added) and a spectra index."""

    runs: dict[str, Run]
    groups: dict[str, str]  # run name -> configuration label
    epochs: pd.DataFrame
    layers: pd.DataFrame
    spectra: SpectraIndex
    layer_names: list[str] = field(default_factory=list)
    _by_run_layer: dict = field(default_factory=dict, repr=False)  # (run, layer) -> that layer's rows
    _by_run: dict = field(default_factory=dict, repr=False)  # run -> its epochs rows

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    def layer_rows(self, run: str, layer: str) -> pd.DataFrame:
        """``layers.csv`` rows of one run and layer, by epoch (empty if the run lacks that layer)."""
        return self._by_run_layer.get((run, layer), self.layers.iloc[:0])

    def epoch_rows(self, run: str) -> pd.DataFrame:
        return self._by_run.get(run, self.epochs.iloc[:0])

    def method(self, run: str) -> str:
        return self.runs[run].config.get("method", "none")

    def status(self, run: str) -> str:
        return str(self.runs[run].status.get("status", "unknown"))

    def target_norm(self, run: str) -> str | None:
        """:func:`target_norm` of the run's config; where config.json does not say, a layers.csv with
        ``n_above_target`` values has spectral targets (the probe is measured against those only)."""
        run_ = self.runs[run]
        if "target_norm" not in run_.config and has_values(run_.layers, "n_above_target"):
            return "spectral"
        return target_norm(run_.config)

    def target(self, run: str, layer: str, epoch: int | None = None) -> float:
        """The layer's spectral-norm target (NaN where the run's targets are not spectral norms)."""
        if self.target_norm(run) != "spectral":
            return float("nan")
        rows = self.layer_rows(run, layer)
        if epoch is not None and (rows.epoch == epoch).any():
            rows = rows[rows.epoch == epoch]
        return float(rows.target.iloc[-1]) if len(rows) else float("nan")

    def target_series(self, run: str, layer: str) -> tuple[pd.Series, pd.Series]:
        """(epoch, spectral target) of one run's layer over training; empty without spectral targets."""
        rows = self.layer_rows(run, layer)
        if self.target_norm(run) != "spectral" or not len(rows):
            return rows.epoch.iloc[:0], rows.epoch.iloc[:0]
        return rows.epoch, rows.target


def load_study(source: Source) -> Study:
    """Read every run named by ``source`` into a :class:`Study`."""
    return build_study(read_runs(find_run_dirs(source)))


def read_runs(run_dirs: Iterable[str], reuse: dict[str, Run] | None = None) -> dict[str, Run]:
    """Run name -> Run for each folder; ``reuse``: run folder -> Run already read (kept as is)."""
    runs: dict[str, Run] = {}
    for run_dir in run_dirs:
        run = (reuse or {}).get(run_dir) or load_run(run_dir)
        name = run.name
        if name in runs:  # same folder name in two sweeps: qualify with the sweep's name
            name = f"{os.path.basename(os.path.dirname(os.path.abspath(run_dir)))}/{name}"
        runs[name] = run
    return runs


def build_study(runs: dict[str, Run], previous: Study | None = None) -> Study:
    """A Study of runs already read; ``previous``: a Study whose spectra index entries may be reused."""
    groups = group_labels({n: r.config for n, r in runs.items()})
    epochs = _long(runs, groups, "epochs")
    if len(epochs):
        epochs["gap_acc"] = epochs.train_acc - epochs.test_acc
        epochs["gap_loss"] = epochs.train_loss - epochs.test_loss
    layers = _long(runs, groups, "layers")
    study = Study(runs, groups, epochs, layers, SpectraIndex(runs, previous.spectra if previous else None),
                  list(pd.unique(layers.layer)) if len(layers) else [])
    study._by_run_layer = {(r, str(l)): rows.reset_index(drop=True)
                           for (r, l), rows in layers.groupby(["run", "layer"], sort=False)} if len(layers) else {}
    study._by_run = {r: rows.reset_index(drop=True) for r, rows in epochs.groupby("run", sort=False)} if len(epochs) else {}
    return study


def _long(runs: dict[str, Run], groups: dict[str, str], table: str) -> pd.DataFrame:
    """One table of every run's rows, with ``run`` and ``group``; empty (with the table's columns) before
    any run has a row, so that views of a sweep's first minute find the columns they read."""
    frames = [getattr(r, table).assign(run=n, group=groups[n]) for n, r in runs.items() if len(getattr(r, table))]
    if frames:
        return pd.concat(frames, ignore_index=True)
    columns = {"epochs": records.EPOCH_COLUMNS, "layers": records.LAYER_COLUMNS}.get(table, [])
    return pd.DataFrame(columns=[*columns, "run", "group"])


# --- Reshaping ------------------------------------------------------------------------
def layer_spread(layers: pd.DataFrame, column: str = "sigma_max") -> pd.DataFrame:
    """Per run and epoch: mean, std (ddof=0, as numpy), min and max of ``column`` across layers."""
    keys = ["run", "epoch"] if "run" in layers else ["epoch"]
    g = layers.groupby(keys, sort=True)[column]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "min": g.min(), "max": g.max(), "n_layers": g.size()})
    return out.reset_index()


def group_curves(table: pd.DataFrame, column: str, band: str = "minmax") -> pd.DataFrame:
    """Per configuration group and epoch: the mean of ``column`` over seeds and a band.

    ``band="minmax"``: lo/hi are the min and max over seeds; ``"std"``: mean -/+ one std (ddof=0).
    ``n`` counts the seeds that reached that epoch.
    """
    if band not in ("minmax", "std"):
        raise ValueError(f"band={band!r} is not allowed: choose one of ['minmax', 'std']")
    g = table.groupby(["group", "epoch"], sort=True)[column]
    out = pd.DataFrame({"mean": g.mean(), "n": g.size()})
    if band == "minmax":
        out["lo"], out["hi"] = g.min(), g.max()
    else:
        sd = g.std(ddof=0)
        out["lo"], out["hi"] = out["mean"] - sd, out["mean"] + sd
    return out.reset_index()


def smooth(values, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average with weight ``weight`` in [0, 1) on the past,
    bias-corrected so the curve starts at the first value (pandas ``ewm(alpha=1 - weight, adjust=True)``).
    NaNs are skipped, not propagated; ``weight=0`` returns the values unchanged."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing={weight!r} is not allowed: a weight in [0, 1)")
    values = pd.Series(np.asarray(values, dtype=float))
    if weight == 0 or values.empty:
        return values.to_numpy()
    out = values.ewm(alpha=1 - weight, adjust=True, ignore_na=True).mean().to_numpy(copy=True)
    out[values.isna().to_numpy()] = np.nan
    return out


def final_rows(study: Study) -> pd.DataFrame:
    """Each run's last epoch row (runs with no finished epoch are left out): records.final_rows."""
    return records.final_rows(study.epochs)


SUMMARY_METRICS = ("train_acc", "test_acc", "train_loss", "test_loss", "gap_acc", "seconds")


def summary_table(study: Study) -> pd.DataFrame:
    """One row per run: configuration, seed, status, epochs, final metrics (accuracy in percent) and time.

    ``clean_test_acc``/``clean_test_loss`` (the un-augmented test set) appear where a run recorded them.
    """
    last = final_rows(study)
    spread = layer_spread(study.layers) if len(study.layers) else pd.DataFrame(columns=["run", "epoch", "mean"])
    clean = has_values(study.epochs, "clean_test_acc")
    rows = []
    for name, run in study.runs.items():
        cfg = run.config
        # Metric columns exist before any run has an epoch (a sweep's first minute): NaN until then.
        row = {"run": name, "group": study.groups[name], "arch": arch_name(cfg), "method": cfg.get("method"),
               "seed": cfg.get("seed"), "status": study.status(name), "epochs_done": 0,
               "epochs_planned": cfg.get("epochs"), **dict.fromkeys(SUMMARY_METRICS, np.nan)}
        if name in last.index:
            r = last.loc[name]
            row.update(epochs_done=int(r.epoch), train_acc=100 * r.train_acc, test_acc=100 * r.test_acc,
                       train_loss=r.train_loss, test_loss=r.test_loss, gap_acc=100 * r.gap_acc,
                       seconds=float(study.epoch_rows(name)["seconds"].sum()))
            if clean:
                row.update(clean_test_acc=100 * r.get("clean_test_acc", np.nan),
                           clean_test_loss=r.get("clean_test_loss", np.nan))
        s = spread[spread.run == name]
        if len(s):
            row["mean_sigma_max_last"] = float(s["mean"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)
