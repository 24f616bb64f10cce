"""Run folders written by hand (no training), for the views' tests: plain rows in, the records' files out."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from nslab.presets import preset
from nslab.records import EPOCH_COLUMNS, LAYER_COLUMNS, read_json, write_json, write_table

# The blog's recipe as the seed code ran it: a run written with no overrides is comparable to the blog.
PAPER_CONFIG = {**preset("mlp5x2000-none").to_dict(), "name": ""}


def write_run(root, name, config, epochs, layers, spectra=None, status="completed", extra_layer_columns=None,
              extra_epoch_columns=None):
    """A run folder from plain rows: epochs [(epoch, train_acc, test_acc, train_loss, test_loss)],
    layers [(epoch, layer, sigma_max, target)], spectra [(epoch, layer, index, sigma)].

    ``config``: fields over the paper preset's (PAPER_CONFIG). ``extra_layer_columns`` /
    ``extra_epoch_columns``: column -> values, one per row (new probes). Columns a run does not
    fill are NaN, as in the records' contract.
    """
    d = os.path.join(root, name)
    write_json(os.path.join(d, "config.json"), {**PAPER_CONFIG, **config})
    write_json(os.path.join(d, "status.json"), {"status": status, "message": "", "epoch": epochs[-1][0] if epochs else 0})
    e = pd.DataFrame([{"epoch": ep, "lr": 1e-3, "train_loss": trl, "train_acc": tra, "test_loss": tel, "test_acc": tea,
                       "seconds": 2.0} for ep, tra, tea, trl, tel in epochs], columns=EPOCH_COLUMNS)
    for column, values in (extra_epoch_columns or {}).items():
        e[column] = values
    write_table(os.path.join(d, "epochs.csv"), e)
    rows = pd.DataFrame([{"epoch": ep, "layer": l, "shape": "2x2", "sigma_max": s, "frobenius": s, "stable_rank": 1.0,
                          "effective_rank": 1.0, "numerical_rank": 1, "target": t} for ep, l, s, t in layers],
                        columns=LAYER_COLUMNS)
    for column, values in (extra_layer_columns or {}).items():
        rows[column] = values
    write_table(os.path.join(d, "layers.csv"), rows)
    if spectra:
        write_table(os.path.join(d, "spectra.parquet"), pd.DataFrame(spectra, columns=["epoch", "layer", "index", "sigma"]))
    return d


def layer_rows(values: dict[int, list[float]], target=float("nan")):
    """{epoch: [sigma_max of layer 0, layer 1, ...]} -> layers rows named 0.weight, 1.weight, ..."""
    return [(e, f"{i}.weight", s, target) for e, row in values.items() for i, s in enumerate(row)]


def fake_sweep(root: str, n_runs: int = 12, epochs: int = 200, spectra_every: int = 10,
               sizes=(2000, 2000, 2000, 2000, 100)) -> str:
    """Run folders shaped like the blog's 5x2000 MLP study (random numbers, no training)."""
    rng = np.random.default_rng(0)
    for i in range(n_runs):
        method, seed = ("none", "frobenius", "spectral")[i % 3], i // 3 + 1
        d = os.path.join(root, f"mlp5x2000-{method}-s{seed}")
        write_json(os.path.join(d, "config.json"), {"model": "mlp", "depth": 5, "width": 2000, "method": method,
                                                    "seed": seed, "epochs": epochs})
        write_json(os.path.join(d, "status.json"), {"status": "completed", "message": "", "epoch": epochs})
        e = np.arange(1, epochs + 1)
        write_table(os.path.join(d, "epochs.csv"), pd.DataFrame(
            {"epoch": e, "lr": 1e-3, "train_loss": 4 / e ** .3, "train_acc": 1 - 1 / e ** .2, "test_loss": 4.5 / e ** .2,
             "test_acc": .3 - .3 / e ** .5, "seconds": 1.0}))
        ep = np.repeat(np.arange(epochs + 1), len(sizes))
        layer = np.tile([f"{2 * j}.weight" for j in range(len(sizes))], epochs + 1)
        write_table(os.path.join(d, "layers.csv"), pd.DataFrame(
            {"epoch": ep, "layer": layer, "shape": "", "sigma_max": 1 + ep / 50 + rng.random(len(ep)), "frobenius": 10.0,
             "stable_rank": 5.0, "effective_rank": 50.0, "numerical_rank": 100,
             "target": 1.0 if method == "spectral" else np.nan, "power_iter_rel_err": np.nan}))
        spec = [pd.DataFrame({"epoch": k, "layer": f"{2 * j}.weight", "index": np.arange(n),
                              "sigma": np.sort(rng.random(n))[::-1] * (1 + k / 50)})
                for k in sorted(set(range(0, epochs + 1, spectra_every)) | {epochs}) for j, n in enumerate(sizes)]
        write_table(os.path.join(d, "spectra.parquet"), pd.concat(spec, ignore_index=True))
    return root


def append_epoch(run_dir: str, status: str = "running", test_acc: float = 0.5) -> int:
    """One more epoch in a run folder, as a running training writes it (files replaced atomically).

    The new epoch repeats the last one's rows with ``test_acc`` and sigma_max 7.0; returns its number."""
    e = pd.read_csv(os.path.join(run_dir, "epochs.csv"))
    new = e.tail(1).assign(epoch=int(e.epoch.max()) + 1, test_acc=test_acc)
    write_table(os.path.join(run_dir, "epochs.csv"), pd.concat([e, new], ignore_index=True))
    layers = pd.read_csv(os.path.join(run_dir, "layers.csv"))
    last = layers[layers.epoch == layers.epoch.max()].assign(epoch=int(new.epoch.iloc[0]), sigma_max=7.0)
    write_table(os.path.join(run_dir, "layers.csv"), pd.concat([layers, last], ignore_index=True))
    write_json(os.path.join(run_dir, "status.json"), {**read_json(os.path.join(run_dir, "status.json")), "status": status})
    return int(new.epoch.iloc[0])
