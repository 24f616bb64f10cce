"""nslab.analysis against values computed by hand on run folders written by hand, plus one real tiny run."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from nslab import analysis, train
from nslab.records import write_json, write_table


def write_run(root, name, config, epochs, layers, spectra=None, status="completed"):
    """A run folder from plain rows: epochs [(epoch, train_acc, test_acc, train_loss, test_loss)],
    layers [(epoch, layer, sigma_max, target)], spectra [(epoch, layer, index, sigma)]."""
    d = os.path.join(root, name)
    write_json(os.path.join(d, "config.json"), {"name": "", "seed": 1, "method": "none", "model": "mlp",
                                                "depth": 5, "width": 2000, "epochs": 200, **config})
    write_json(os.path.join(d, "status.json"), {"status": status, "message": "", "epoch": epochs[-1][0] if epochs else 0})
    write_table(os.path.join(d, "epochs.csv"), pd.DataFrame(
        [{"epoch": e, "lr": 1e-3, "train_loss": trl, "train_acc": tra, "test_loss": tel, "test_acc": tea, "seconds": 2.0}
         for e, tra, tea, trl, tel in epochs]))
    write_table(os.path.join(d, "layers.csv"), pd.DataFrame(
        [{"epoch": e, "layer": l, "shape": "2x2", "sigma_max": s, "frobenius": s, "stable_rank": 1.0, "effective_rank": 1.0,
          "numerical_rank": 1, "target": t, "power_iter_rel_err": float("nan")} for e, l, s, t in layers]))
    if spectra:
        write_table(os.path.join(d, "spectra.parquet"), pd.DataFrame(spectra, columns=["epoch", "layer", "index", "sigma"]))
    return d


def _layers(values: dict[int, list[float]], target=float("nan")):
    return [(e, f"{i}.weight", s, target) for e, row in values.items() for i, s in enumerate(row)]


@pytest.fixture
def sweep(tmp_path):
    """Three seeds of mlp5x2000-spectral (4 epochs), one mlp5x2000-none run, and litter a sweep folder holds."""
    root = str(tmp_path / "sweep")
    accs = {1: 0.10, 2: 0.20, 3: 0.60}  # final test accuracies of the three seeds
    for seed, acc in accs.items():
        write_run(root, f"spec-s{seed}", {"method": "spectral", "seed": seed},
                  epochs=[(e, 0.5, acc if e == 4 else 0.05, 1.0, 2.0 + seed) for e in range(1, 5)],
                  layers=_layers({0: [1, 1], 1: [1, 3], 2: [2, 4], 3: [1, 5], 4: [2, 6]}, target=0.8),
                  # rows deliberately out of order: the index must sort them by 'index'
                  spectra=[(4, "0.weight", 1, 0.5), (4, "0.weight", 0, 2.0), (0, "0.weight", 0, 1.0), (0, "0.weight", 1, 1.0)])
    write_run(root, "none-s1", {"method": "none"}, epochs=[(e, 0.9, 0.3, 0.1, 4.0) for e in range(1, 201)],
              layers=_layers({200: [30.0, 40.0]}))
    os.makedirs(os.path.join(root, "not-a-run"))
    open(os.path.join(root, "summary.csv"), "w").write("run,status\n")
    return root


def test_find_run_dirs_accepts_sweeps_runs_and_lists(sweep):
    found = analysis.find_run_dirs(sweep)
    assert [os.path.basename(d) for d in found] == ["none-s1", "spec-s1", "spec-s2", "spec-s3"]
    assert analysis.find_run_dirs(found[0]) == [found[0]]
    assert analysis.find_run_dirs(found[:2]) == found[:2]
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        analysis.find_run_dirs(os.path.join(sweep, "not-a-run"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analysis.find_run_dirs(os.path.join(sweep, "missing"))


def test_groups_collapse_seeds_and_name_differing_fields():
    base = {"model": "mlp", "depth": 5, "width": 2000, "method": "spectral", "lr": 0.001, "out_dir": "a"}
    labels = analysis.group_labels({"a": {**base, "seed": 1}, "b": {**base, "seed": 2, "out_dir": "b"},
                                    "c": {**base, "lr": 0.01}, "d": {"model": "resnet34", "method": "none", "lr": 0.001}})
    assert labels["a"] == labels["b"] == "mlp5x2000-spectral lr=0.001"
    assert labels["c"] == "mlp5x2000-spectral lr=0.01"
    assert labels["d"] == "resnet34-none lr=0.001"


def test_layer_spread_by_hand():
    layers = pd.DataFrame({"run": "r", "epoch": [1, 1, 1, 2, 2, 2], "sigma_max": [1.0, 2.0, 4.0, 3.0, 3.0, 3.0]})
    s = analysis.layer_spread(layers).set_index("epoch")
    assert s.loc[1, "mean"] == pytest.approx(7 / 3)
    assert s.loc[1, "std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3))
    assert (s.loc[1, "min"], s.loc[1, "max"], s.loc[2, "std"], s.loc[1, "n_layers"]) == (1.0, 4.0, 0.0, 3)


def test_group_curves_mean_and_bands_over_seeds(sweep):
    study = analysis.load_study(sweep)
    mm = analysis.group_curves(study.epochs, "test_acc").set_index(["group", "epoch"])
    row = mm.loc[("mlp5x2000-spectral", 4)]
    assert (row["mean"], row.lo, row.hi, row.n) == (pytest.approx(0.3), 0.1, 0.6, 3)
    sd = analysis.group_curves(study.epochs, "test_acc", band="std").set_index(["group", "epoch"]).loc[("mlp5x2000-spectral", 4)]
    assert sd.hi - sd["mean"] == pytest.approx(math.sqrt((0.2 ** 2 + 0.1 ** 2 + 0.3 ** 2) / 3))
    with pytest.raises(ValueError, match="band='iqr'"):
        analysis.group_curves(study.epochs, "test_acc", band="iqr")


def test_spectra_index_sorts_by_index_and_misses_cleanly(sweep):
    study = analysis.load_study(sweep)
    assert study.spectra.get("spec-s1", "0.weight", 4).tolist() == [2.0, 0.5]
    assert study.spectra.get("spec-s1", "1.weight", 4).size == 0
    assert study.spectra.get("none-s1", "0.weight", 200).size == 0
    assert study.spectra.all_epochs() == [0, 4]
    assert study.target("spec-s1", "0.weight", 4) == 0.8 and math.isnan(study.target("none-s1", "0.weight"))


def test_summary_table_in_percent(sweep):
    s = analysis.summary_table(analysis.load_study(sweep)).set_index("run")
    assert s.loc["spec-s3", "test_acc"] == pytest.approx(60.0)
    assert s.loc["spec-s3", "gap_acc"] == pytest.approx(50.0 - 60.0)
    assert s.loc["spec-s3", "seconds"] == pytest.approx(8.0)
    assert s.loc["spec-s1", "mean_sigma_max_last"] == pytest.approx(4.0)
    assert s.loc["none-s1", "epochs_done"] == 200


def test_compare_with_blog_by_hand(sweep):
    out = analysis.compare_with_blog(analysis.load_study(sweep))
    assert len(out) == 12  # every configuration here is one of the blog's
    assert list(out.arch[:3]) == ["mlp5x2000"] * 3 and list(out.method[:3]) == ["none", "frobenius", "spectral"]
    spec = out[(out.arch == "mlp5x2000") & (out.method == "spectral")].iloc[0]
    assert (spec.n_runs, spec.epochs) == (3, 4)
    assert spec.test_acc == pytest.approx(30.0)
    assert spec.d_test_acc == pytest.approx(30.0 - 23.21)
    assert spec.test_loss == pytest.approx(4.0)  # mean of 3, 4, 5
    assert spec.d_test_loss == pytest.approx(4.0 - 3.53)
    assert spec.length.startswith("SHORT: 4 of 200 epochs")
    none = out[(out.arch == "mlp5x2000") & (out.method == "none")].iloc[0]
    assert none.length == "full (200 epochs)" and none.d_test_acc == pytest.approx(30.0 - 25.12)
    assert (out[out.arch == "resnet50"].length == "not run").all()


def test_compare_with_blog_keeps_configurations_the_blog_did_not_run(tmp_path):
    write_run(str(tmp_path), "small", {"depth": 3, "width": 512}, epochs=[(1, 0.5, 0.25, 1.0, 2.0)], layers=_layers({1: [1.0]}))
    out = analysis.compare_with_blog(analysis.load_study(str(tmp_path)))
    assert len(out) == 13
    extra = out.iloc[-1]
    assert (extra.arch, extra.test_acc) == ("mlp3x512", 25.0) and np.isnan(extra.blog_test_acc)


def test_spectral_claims_by_hand(sweep):
    claims = analysis.spectral_claims(analysis.load_study(sweep), arch="mlp5x2000").set_index("method")
    spec = claims.loc["spectral"]
    # last epoch 4: layers [2, 6] -> mean 4; last half = epochs 3 and 4: stds (ddof 0) 2 and 2
    assert (spec.n_runs, spec.mean_sigma_max_last, spec.std_sigma_max_last_half) == (3, 4.0, 2.0)
    assert (spec.blog_mean_sigma_max_last, spec.d_mean_sigma_max_last) == (0.8, pytest.approx(3.2))
    assert spec.d_std_sigma_max_last_half == pytest.approx(2.0 - 0.02)
    assert claims.loc["none", "mean_sigma_max_last"] == 35.0 and claims.loc["none", "length"] == "full (200 epochs)"
    assert analysis.spectral_claims(analysis.load_study(sweep), arch="resnet50").empty


def test_length_warning(sweep):
    study = analysis.load_study(sweep)
    assert "3 of 4 runs are shorter than the blog's 200 epochs" in analysis.length_warning(study)
    assert analysis.length_warning(analysis.load_study(os.path.join(sweep, "none-s1"))) == "All 1 runs reached 200 epochs."


def test_blog_numbers_are_the_notes_table():
    b = analysis.BLOG_FINAL.set_index(["arch", "method"])
    assert len(b) == 12
    assert tuple(b.loc[("mlp7x4000", "spectral")]) == (36.25, 2.63)
    assert tuple(b.loc[("resnet34", "frobenius")]) == (75.24, 1.46)
    assert "Hess" in analysis.BLOG_SOURCE


def test_real_tiny_runs_load(tiny):
    for method in ("none", "spectral"):
        train(tiny(method=method), log=lambda _: None)
    study = analysis.load_study(tiny().out_dir)
    assert study.names == ["mlp2x16-none-s1", "mlp2x16-spectral-s1"]
    assert study.spectra.all_epochs() == [0, 1, 2, 3]
    assert study.layer_names == ["1.weight", "3.weight"]
    sv = study.spectra.get("mlp2x16-spectral-s1", "1.weight", 3)
    assert len(sv) == 16 and np.all(np.diff(sv) <= 0)
    assert sv[0] == pytest.approx(study.layer_rows("mlp2x16-spectral-s1", "1.weight").sigma_max.iloc[-1], rel=1e-5)
    assert set(analysis.summary_table(study).status) == {"completed"}
