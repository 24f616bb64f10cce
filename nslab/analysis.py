"""Several runs at once: load a sweep, index its spectra, group seeds, compare with the blog.

A *source* is a run folder (it holds ``config.json``), a sweep folder (its subfolders
are run folders; other files such as the executed notebooks or a summary CSV are
ignored), or a list of either. :func:`load_study` reads every run once and builds
the long tables that figures and dashboards draw from; everything here returns
DataFrames or arrays and draws nothing.

Conventions: accuracies in run tables are fractions; tables meant for people
(:func:`summary_table`, :func:`compare_with_blog`) show percent, as the blog does.
The generalisation gap is train minus test, for accuracy and for loss.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd

from .config import RunConfig, arch_name, field_names
from .records import Run, load_run

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

# RunConfig fields that do not make a configuration different: seeds are averaged over,
# and where a run was stored or computed does not change what was trained.
NOT_CONFIGURATION = field_names("configuration", False)
# Fields a group label always shows (as the architecture and method); others only where groups differ.
_LABEL_FIELDS = tuple(f for f in field_names("named") if f not in NOT_CONFIGURATION)
RANK_COLUMNS = ("stable_rank", "effective_rank", "numerical_rank")

# --- The blog's numbers ----------------------------------------------------------------
BLOG_SOURCE = ("P. Hess and A. Hutchison, \"Exploring Frobenius and Spectral Normalization in MLPs and "
               "Residual Networks\", MIT deep learning blog, December 2023: final results at epoch 200 on the "
               "CIFAR-100 test set, and the spectral-norm statistics quoted for the 5x2000 MLP "
               "(as transcribed in shared/seed/NOTES.md).")
BLOG_EPOCHS = 200
BLOG_FINAL = pd.DataFrame(
    [("mlp5x2000", "none", 25.12, 10.86), ("mlp5x2000", "frobenius", 28.23, 4.47), ("mlp5x2000", "spectral", 23.21, 3.53),
     ("mlp7x4000", "none", 23.95, 11.00), ("mlp7x4000", "frobenius", 26.62, 6.10), ("mlp7x4000", "spectral", 36.25, 2.63),
     ("resnet34", "none", 70.10, 2.03), ("resnet34", "frobenius", 75.24, 1.46), ("resnet34", "spectral", 71.79, 1.78),
     ("resnet50", "none", 73.45, 1.72), ("resnet50", "frobenius", 75.72, 1.40), ("resnet50", "spectral", 73.29, 1.63)],
    columns=["arch", "method", "test_acc", "test_loss"])  # test_acc in percent
# Mean sigma_max across layers at the last epoch; std of sigma_max across layers over the last 100 epochs.
BLOG_SPECTRAL = pd.DataFrame(
    [("mlp5x2000", "none", 35.4, 18.4), ("mlp5x2000", "frobenius", 7.8, 3.7), ("mlp5x2000", "spectral", 0.8, 0.02)],
    columns=["arch", "method", "mean_sigma_max_last", "std_sigma_max_last_half"])


# --- Finding and loading runs -----------------------------------------------------------
def is_run_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def find_run_dirs(source: Source) -> list[str]:
    """Run folders named by ``source`` (a run folder, a sweep folder, or a list of either), in order."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if is_run_dir(path):
            return [path]
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


def group_labels(configs: dict[str, dict]) -> dict[str, str]:
    """Run name -> configuration label, e.g. ``mlp5x2000-spectral`` plus ``targets=first_layer``
    for every other field whose value differs between the configurations present."""
    confs = {name: configuration(c) for name, c in configs.items()}
    keys = sorted({k for c in confs.values() for k in c})
    varying = [k for k in keys if k not in _LABEL_FIELDS and len({c.get(k) for c in confs.values()}) > 1]
    labels = {}
    for name, c in confs.items():
        extra = " ".join(f"{k}={_fmt(c.get(k))}" for k in varying)
        labels[name] = f"{arch_name(configs[name])}-{c.get('method')}" + (f" {extra}" if extra else "")
    return labels


def _fmt(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


class SpectraIndex:
    """Sorted singular values keyed by ``(run, layer, epoch)``, built once so a lookup is a dict access.

    ``get`` returns a 1-d float array, descending (index i = 0, 1, ...), or an empty array
    where that run has no spectrum of that layer at that epoch.
    """

    def __init__(self, runs: dict[str, Run]):
        self._data: dict[tuple[str, str, int], np.ndarray] = {}
        self.epochs: dict[str, list[int]] = {}
        for name, run in runs.items():
            s = run.spectra
            if s.empty:
                self.epochs[name] = []
                continue
            sigma, order = s["sigma"].to_numpy(float), s["index"].to_numpy()
            for (layer, epoch), rows in s.groupby(["layer", "epoch"], sort=False).indices.items():
                self._data[(name, str(layer), int(epoch))] = sigma[rows[np.argsort(order[rows], kind="stable")]]
            self.epochs[name] = sorted({int(e) for e in s["epoch"].unique()})

    def get(self, run: str, layer: str, epoch: int) -> np.ndarray:
        return self._data.get((run, layer, int(epoch)), np.empty(0))

    def all_epochs(self, runs: Iterable[str] | None = None) -> list[int]:
        """Every epoch with a spectrum in any of ``runs`` (all runs by default), ascending."""
        names = self.epochs if runs is None else runs
        return sorted({e for n in names for e in self.epochs.get(n, [])})


@dataclass
class Study:
    """Runs read once, with long tables (a ``run`` and a ``group`` column added) and a spectra index."""

    runs: dict[str, Run]
    groups: dict[str, str]  # run name -> configuration label
    epochs: pd.DataFrame
    layers: pd.DataFrame
    spectra: SpectraIndex
    layer_names: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    _by_run_layer: dict = field(default_factory=dict, repr=False)  # (run, layer) -> that layer's rows
    _by_run: dict = field(default_factory=dict, repr=False)  # run -> its epochs rows

    def layer_rows(self, run: str, layer: str) -> pd.DataFrame:
        """``layers.csv`` rows of one run and layer, by epoch (empty if the run lacks that layer)."""
        return self._by_run_layer.get((run, layer), self.layers.iloc[:0])

    def epoch_rows(self, run: str) -> pd.DataFrame:
        return self._by_run.get(run, self.epochs.iloc[:0])

    def method(self, run: str) -> str:
        return self.runs[run].config.get("method", "none")

    def target(self, run: str, layer: str, epoch: int | None = None) -> float:
        """The layer's spectral target (NaN unless the run used spectral scaling)."""
        if self.method(run) != "spectral":
            return float("nan")
        rows = self.layer_rows(run, layer)
        if epoch is not None and (rows.epoch == epoch).any():
            rows = rows[rows.epoch == epoch]
        return float(rows.target.iloc[-1]) if len(rows) else float("nan")


def load_study(source: Source) -> Study:
    """Read every run named by ``source`` into a :class:`Study`."""
    runs: dict[str, Run] = {}
    for run_dir in find_run_dirs(source):
        run = load_run(run_dir)
        name = run.name
        if name in runs:  # same folder name in two sweeps: qualify with the sweep's name
            name = f"{os.path.basename(os.path.dirname(os.path.abspath(run_dir)))}/{name}"
        runs[name] = run
    groups = group_labels({n: r.config for n, r in runs.items()})
    epochs = _long(runs, groups, "epochs")
    if len(epochs):
        epochs["gap_acc"] = epochs.train_acc - epochs.test_acc
        epochs["gap_loss"] = epochs.train_loss - epochs.test_loss
    layers = _long(runs, groups, "layers")
    study = Study(runs, groups, epochs, layers, SpectraIndex(runs), list(pd.unique(layers.layer)) if len(layers) else [])
    study._by_run_layer = {(r, str(l)): rows.reset_index(drop=True)
                           for (r, l), rows in layers.groupby(["run", "layer"], sort=False)} if len(layers) else {}
    study._by_run = {r: rows.reset_index(drop=True) for r, rows in epochs.groupby("run", sort=False)} if len(epochs) else {}
    return study


def _long(runs: dict[str, Run], groups: dict[str, str], table: str) -> pd.DataFrame:
    frames = [getattr(r, table).assign(run=n, group=groups[n]) for n, r in runs.items() if len(getattr(r, table))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "group"])


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


def final_rows(study: Study) -> pd.DataFrame:
    """Each run's last epoch row (runs with no finished epoch are left out)."""
    if not len(study.epochs):
        return study.epochs
    return study.epochs.sort_values("epoch").groupby("run", sort=False).tail(1).set_index("run")


def length_note(epochs_done: int, planned: int = BLOG_EPOCHS) -> str:
    """``"full (200 epochs)"`` or a label that says the run is shorter than the blog's study."""
    if epochs_done >= planned:
        return f"full ({planned} epochs)"
    return f"SHORT: {epochs_done} of {planned} epochs, not comparable to the blog's epoch-{planned} numbers"


def length_warning(study: Study, planned: int = BLOG_EPOCHS) -> str:
    """One sentence (markdown) saying which runs are shorter than the blog's study, if any."""
    s = summary_table(study)
    short = s[s.epochs_done < planned]
    if not len(short):
        return f"All {len(s)} runs reached {planned} epochs."
    lengths = ", ".join(str(int(e)) for e in sorted(set(short.epochs_done)))
    return (f"**{len(short)} of {len(s)} runs are shorter than the blog's {planned} epochs** (they stopped after "
            f"{lengths} epochs): their rows are labelled SHORT and are not a reproduction of the blog's numbers.")


def summary_table(study: Study) -> pd.DataFrame:
    """One row per run: configuration, seed, status, epochs, final metrics (percent) and time."""
    last = final_rows(study)
    spread = layer_spread(study.layers) if len(study.layers) else pd.DataFrame(columns=["run", "epoch", "mean"])
    rows = []
    for name, run in study.runs.items():
        cfg = run.config
        row = {"run": name, "group": study.groups[name], "arch": arch_name(cfg), "method": cfg.get("method"),
               "seed": cfg.get("seed"), "status": run.status.get("status"), "epochs_done": 0,
               "epochs_planned": cfg.get("epochs")}
        if name in last.index:
            r = last.loc[name]
            row.update(epochs_done=int(r.epoch), train_acc=100 * r.train_acc, test_acc=100 * r.test_acc,
                       train_loss=r.train_loss, test_loss=r.test_loss, gap_acc=100 * r.gap_acc,
                       seconds=float(study.epoch_rows(name)["seconds"].sum()))
        s = spread[spread.run == name]
        if len(s):
            row["mean_sigma_max_last"] = float(s["mean"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


# --- The blog comparison ------------------------------------------------------------------
def compare_with_blog(study: Study) -> pd.DataFrame:
    """The blog's 12 final numbers beside the study's, per configuration (mean over seeds), with differences.

    Every blog row appears (``n_runs`` 0 where the study has no such run); configurations of the
    study that the blog did not run appear with empty blog columns. ``length`` says when runs are
    shorter than the blog's 200 epochs. Accuracies in percent; ``d_`` columns are study minus blog.
    """
    s = summary_table(study)
    s = s[s.epochs_done > 0]
    g = s.groupby(["arch", "method", "group"], sort=False).agg(
        n_runs=("run", "size"), epochs=("epochs_done", "min"), test_acc=("test_acc", "mean"),
        test_acc_std=("test_acc", lambda x: float(np.std(x))), test_loss=("test_loss", "mean")).reset_index()
    blog = BLOG_FINAL.rename(columns={"test_acc": "blog_test_acc", "test_loss": "blog_test_loss"})
    # The blog's rows in the blog's order, then the study's configurations the blog did not run.
    extra = g.merge(blog[["arch", "method"]], on=["arch", "method"], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
    out = pd.concat([blog.merge(g, on=["arch", "method"], how="left"), extra], ignore_index=True)
    out["n_runs"] = out.n_runs.fillna(0).astype(int)
    out["d_test_acc"] = out.test_acc - out.blog_test_acc
    out["d_test_loss"] = out.test_loss - out.blog_test_loss
    out["length"] = [length_note(int(e)) if n else "not run" for e, n in zip(out.epochs.fillna(0), out.n_runs)]
    cols = ["arch", "method", "group", "n_runs", "epochs", "test_acc", "test_acc_std", "blog_test_acc", "d_test_acc",
            "test_loss", "blog_test_loss", "d_test_loss", "length"]
    return out[cols]


def spectral_claims(study: Study, arch: str | None = None) -> pd.DataFrame:
    """The blog's spectral statistics computed on the study, per configuration, beside the blog's.

    * ``mean_sigma_max_last``: mean over layers of sigma_max at the run's last epoch;
    * ``std_sigma_max_last_half``: std (ddof=0) of sigma_max across layers at each epoch, averaged
      over the epochs of the second half of training (epochs > last/2; the blog's "last 100 epochs").
    Both are averaged over seeds. Blog columns are filled for the configurations the blog reports
    (the 5x2000 MLP). ``arch`` keeps only that architecture.
    """
    rows = []
    for name, run in study.runs.items():
        if arch and arch_name(run.config) != arch:
            continue
        layers = study.layers[(study.layers.run == name) & (study.layers.epoch > 0)]
        if not len(layers):
            continue
        spread = layer_spread(layers)
        last = int(spread.epoch.max())
        rows.append({"arch": arch_name(run.config), "method": run.config.get("method"), "group": study.groups[name],
                     "epochs": last, "mean_sigma_max_last": float(spread["mean"].iloc[-1]),
                     "std_sigma_max_last_half": float(spread.loc[spread.epoch > last / 2, "std"].mean())})
    cols = ["arch", "method", "group", "n_runs", "epochs", "mean_sigma_max_last", "blog_mean_sigma_max_last",
            "d_mean_sigma_max_last", "std_sigma_max_last_half", "blog_std_sigma_max_last_half",
            "d_std_sigma_max_last_half", "length"]
    if not rows:
        return pd.DataFrame(columns=cols)
    per_run = pd.DataFrame(rows)
    g = per_run.groupby(["arch", "method", "group"], sort=False).agg(
        n_runs=("group", "size"), epochs=("epochs", "min"), mean_sigma_max_last=("mean_sigma_max_last", "mean"),
        std_sigma_max_last_half=("std_sigma_max_last_half", "mean")).reset_index()
    blog = BLOG_SPECTRAL.rename(columns={c: f"blog_{c}" for c in ("mean_sigma_max_last", "std_sigma_max_last_half")})
    out = g.merge(blog, on=["arch", "method"], how="left")
    for c in ("mean_sigma_max_last", "std_sigma_max_last_half"):
        out[f"d_{c}"] = out[c] - out[f"blog_{c}"]
    out["length"] = [length_note(int(e)) for e in out.epochs]
    return out[cols]
