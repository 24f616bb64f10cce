"""nslab.analysis and nslab.fidelity against values computed by hand on run folders written by hand, plus one real tiny run."""
from __future__ import annotations

import math
import os
import re

import numpy as np
import pandas as pd
import pytest

from fake_runs import PAPER_CONFIG, write_run
from fake_runs import layer_rows as _layers
from nslab import analysis, fidelity, train


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
    out = fidelity.compare_with_blog(analysis.load_study(sweep))
    assert len(out) == 12  # every configuration here is one of the blog's
    assert list(out.arch[:3]) == ["mlp5x2000"] * 3 and list(out.method[:3]) == ["none", "frobenius", "spectral"]
    spec = out[(out.arch == "mlp5x2000") & (out.method == "spectral")].iloc[0]
    assert (spec.n_runs, spec.epochs) == (3, 4)
    assert spec.test_acc == pytest.approx(30.0)
    assert spec.test_acc_std == pytest.approx(np.std([10.0, 20.0, 60.0]))
    assert spec.d_test_acc == pytest.approx(30.0 - 23.21)
    assert spec.test_loss == pytest.approx(4.0)  # mean of 3, 4, 5
    assert spec.d_test_loss == pytest.approx(4.0 - 3.53)
    assert spec.recipe == "differs: 4 epochs vs 200"
    none = out[(out.arch == "mlp5x2000") & (out.method == "none")].iloc[0]
    assert none.recipe == "comparable" and none.d_test_acc == pytest.approx(30.0 - 25.12)
    assert np.isnan(none.test_acc_std)  # one seed: no std to show
    assert (out[out.arch == "resnet50"].recipe == "not run").all()
    assert "clean_test_acc" not in out  # no run recorded a clean test set


def test_compare_with_blog_keeps_configurations_the_blog_did_not_run(tmp_path):
    write_run(str(tmp_path), "small", {"depth": 3, "width": 512}, epochs=[(1, 0.5, 0.25, 1.0, 2.0)], layers=_layers({1: [1.0]}))
    out = fidelity.compare_with_blog(analysis.load_study(str(tmp_path)))
    assert len(out) == 13
    extra = out.iloc[-1]
    assert (extra.arch, extra.test_acc) == ("mlp3x512", 25.0) and np.isnan(extra.blog_test_acc)
    assert extra.recipe.startswith("differs: architecture mlp3x512")


def test_a_full_length_run_with_another_recipe_is_not_comparable(tmp_path):
    """The issue's case: 200 epochs but other milestones, subsets, estimator and width were labelled "full"."""
    write_run(str(tmp_path), "r", {"method": "spectral", "milestones": [8, 16], "test_subset": 5000, "warm_start": True,
                                   "power_iters": 2, "targets": "first_layer"},
              epochs=[(200, 0.5, 0.25, 1.0, 2.0)], layers=_layers({200: [1.0]}, target=0.8))
    row = fidelity.compare_with_blog(analysis.load_study(str(tmp_path))).set_index(["arch", "method"]).loc[
        ("mlp5x2000", "spectral")]
    assert row.recipe == "differs: milestones 8,16 vs 60,120; test subset 5,000; fast estimator"


def test_recipe_differences_name_every_field_that_changes_the_numbers():
    assert fidelity.recipe_differences({**PAPER_CONFIG, "method": "spectral"}) == []
    # the compressed study
    study = {**PAPER_CONFIG, "method": "spectral", "width": 512, "epochs": 24, "milestones": [8, 16], "test_subset": 5000,
             "warm_start": True, "power_iters": 2}
    assert fidelity.recipe_differences(study) == [
        "architecture mlp5x512 (the blog ran mlp5x2000, mlp7x4000, resnet34, resnet50)", "24 epochs vs 200",
        "milestones 8,16 vs 60,120", "test subset 5,000", "fast estimator"]
    quick = {**PAPER_CONFIG, "method": "spectral", "augment_test": False, "matmul_precision": "highest", "bf16": True,
             "targets": "per_layer", "warm_start": False, "power_iters": 100, "batch_size": 256, "lr": 0.01, "gamma": 0.5,
             "train_subset": 10000}
    assert fidelity.recipe_differences(quick) == [
        "batch 256 vs 512", "lr 0.01 vs 0.001", "gamma 0.5 vs 0.1", "train subset 10,000",
        "clean test set (the seed code augmented it)", "matmul precision highest vs medium", "bf16 autocast",
        "per-layer targets vs first-layer", "100 power iterations vs 500"]
    # estimator and targets matter only where the targets are spectral norms (config.json's target_norm)
    assert fidelity.recipe_differences({**PAPER_CONFIG, "method": "frobenius", "warm_start": True}) == []
    assert fidelity.recipe_differences({**PAPER_CONFIG, "method": "spectral", "target_norm": None, "warm_start": True}) == []
    assert fidelity.recipe_differences({**PAPER_CONFIG, "method": "spectral_cap", "target_norm": "spectral",
                                        "warm_start": True}) == ["method spectral_cap (not in the blog)", "fast estimator"]
    # the seed's scale rule only changes ResNets (an MLP has no BatchNorm, biases or downsample convs)
    assert fidelity.recipe_differences({**PAPER_CONFIG, "scale_rule": "all"}) == []
    assert fidelity.recipe_differences({**PAPER_CONFIG, "model": "resnet34", "scale_rule": "all"}) == ["scale rule all vs seed"]
    assert fidelity.recipe_differences(PAPER_CONFIG, epochs_done=24) == ["24 epochs vs 200"]  # stopped or running
    assert fidelity.comparability([(PAPER_CONFIG, 200), ({**PAPER_CONFIG, "epochs": 24}, 24)]) == "differs: 24 epochs vs 200"


def test_first_layer_targets_at_a_width_the_blog_did_not_use_are_warned(tmp_path):
    t = math.sqrt(512 / 3072)
    write_run(str(tmp_path), "w512", {"method": "spectral", "width": 512}, epochs=[(1, 0.5, 0.01, 4.6, 4.6)],
              layers=_layers({0: [t] * 5, 1: [t] * 5}, target=t))
    write_run(str(tmp_path), "blog", {"method": "spectral"}, epochs=[(1, 0.5, 0.2, 3.0, 3.0)],
              layers=_layers({0: [0.807] * 5}, target=0.807))
    write_run(str(tmp_path), "per-layer", {"method": "spectral", "width": 512, "targets": "per_layer"},
              epochs=[(1, 0.5, 0.2, 3.0, 3.0)], layers=_layers({0: [t, 1, 1, 1, 0.44]}, target=t))
    warnings = fidelity.first_layer_target_warnings(analysis.load_study(str(tmp_path)))
    assert len(warnings) == 1 and warnings[0].startswith("w512: first-layer targets at mlp5x512")
    assert "0.408" in warnings[0] and "0.807" in warnings[0] and f"{t ** 5:.3g}" in warnings[0]


def test_clean_test_columns_are_shown_where_recorded(tmp_path):
    write_run(str(tmp_path), "aug", {"method": "none"}, epochs=[(1, 0.5, 0.255, 3.0, 3.5), (2, 0.5, 0.255, 3.0, 3.5)],
              layers=_layers({2: [1.0]}), extra_epoch_columns={"clean_test_acc": [0.2, 0.229], "clean_test_loss": [3.8, 3.7]})
    study = analysis.load_study(str(tmp_path))
    s = analysis.summary_table(study).iloc[0]
    assert (s.test_acc, s.clean_test_acc, s.clean_test_loss) == (pytest.approx(25.5), pytest.approx(22.9), 3.7)
    row = fidelity.compare_with_blog(study).set_index(["arch", "method"]).loc[("mlp5x2000", "none")]
    assert (row.test_acc, row.clean_test_acc) == (pytest.approx(25.5), pytest.approx(22.9))


def test_spectral_claims_by_hand(sweep):
    claims = fidelity.spectral_claims(analysis.load_study(sweep), arch="mlp5x2000").set_index("method")
    spec = claims.loc["spectral"]
    # last epoch 4: layers [2, 6] -> mean 4; last half = epochs 3 and 4: stds (ddof 0) 2 and 2
    assert (spec.n_runs, spec.mean_sigma_max_last, spec.std_sigma_max_last_half) == (3, 4.0, 2.0)
    assert (spec.blog_mean_sigma_max_last, spec.d_mean_sigma_max_last) == (0.8, pytest.approx(3.2))
    assert spec.d_std_sigma_max_last_half == pytest.approx(2.0 - 0.02)
    assert claims.loc["none", "mean_sigma_max_last"] == 35.0 and claims.loc["none", "recipe"] == "comparable"
    assert fidelity.spectral_claims(analysis.load_study(sweep), arch="resnet50").empty


def test_recipe_warning(sweep):
    study = analysis.load_study(sweep)
    text = fidelity.recipe_warning(study)
    assert text.startswith("**3 of 4 runs differ from the blog's recipe**") and "`mlp5x2000-spectral`: 4 epochs vs 200" in text
    one = analysis.load_study(os.path.join(sweep, "none-s1"))
    assert fidelity.recipe_warning(one) == "All 1 runs follow the blog's recipe: their numbers are comparable."


def _notes_md():
    """shared/seed/NOTES.md beside the checkout (or beside the folder holding it, for a worktree), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (os.path.join(here, *[".."] * k) for k in range(2, 5)):
        path = os.path.normpath(os.path.join(up, "shared", "seed", "NOTES.md"))
        if os.path.isfile(path):
            return path
    return None


def test_blog_numbers_are_the_notes_table():
    """The transcribed numbers against the table and the sentences of NOTES.md, parsed afresh."""
    path = _notes_md()
    if path is None:
        pytest.skip("shared/seed/NOTES.md is not beside this checkout: nothing to check the blog's numbers against")
    text = open(path, encoding="utf-8").read()
    archs = {"MLP depth 5, width 2000": "mlp5x2000", "MLP depth 7, width 4000": "mlp7x4000", "ResNet34": "resnet34",
             "ResNet50": "resnet50"}
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in archs:
            for method, cell in zip(("none", "frobenius", "spectral"), cells[1:4]):
                acc, loss = (float(v) for v in cell.split("/"))
                table[(archs[cells[0]], method)] = (acc, loss)
    assert len(table) == 12, f"could not read the 12 results from {path}"
    mine = {(r.arch, r.method): (r.test_acc, r.test_loss) for r in fidelity.BLOG_FINAL.itertuples()}
    assert mine == table
    # "... is 0.8 (spectral), 7.8 (Frobenius), 35.4 (none); the std ... is about 0.02, 3.7 and 18.4."
    means = re.search(r"(\d+(?:\.\d+)?) \(spectral\),\s+(\d+(?:\.\d+)?) \(Frobenius\),\s+(\d+(?:\.\d+)?) \(none\)", text)
    stds = re.search(r"about (\d+(?:\.\d+)?), (\d+(?:\.\d+)?) and (\d+(?:\.\d+)?)", text)
    assert means and stds, f"the spectral claims' sentence in {path} changed"
    spectral = fidelity.BLOG_SPECTRAL.set_index("method")
    for k, method in enumerate(("spectral", "frobenius", "none")):
        assert spectral.loc[method, "mean_sigma_max_last"] == float(means.group(k + 1))
        assert spectral.loc[method, "std_sigma_max_last_half"] == float(stds.group(k + 1))
    assert fidelity.BLOG_FIRST_LAYER_TARGET == pytest.approx(0.807, abs=5e-4)  # "0.807 for the 5x2000 MLP"
    assert "0.807 for the 5x2000 MLP" in text


def test_smooth_is_tensorboards_debiased_ema():
    rng = np.random.default_rng(0)
    y = rng.random(50)
    w = 0.6
    last, num, expected = 0.0, 0.0, []
    for i, v in enumerate(y):  # TensorBoard's smoothing, debiased, written out
        last = last * w + (1 - w) * v
        num = 1 - w ** (i + 1)
        expected.append(last / num)
    assert analysis.smooth(y, w) == pytest.approx(expected)
    assert analysis.smooth(y, 0.0).tolist() == y.tolist()
    assert analysis.smooth(np.full(7, 3.0), 0.9) == pytest.approx(np.full(7, 3.0))
    with_nan = analysis.smooth([1.0, np.nan, 3.0], 0.5)
    assert np.isnan(with_nan[1]) and with_nan[0] == 1.0
    with pytest.raises(ValueError, match="smoothing=1"):
        analysis.smooth(y, 1)


def test_target_norm_from_config_or_method():
    assert analysis.target_norm({"method": "spectral"}) == "spectral"  # runs written before target_norm
    assert analysis.target_norm({"method": "frobenius"}) is None
    assert analysis.target_norm({"method": "spectral", "target_norm": "frobenius"}) == "frobenius"
    assert analysis.target_norm({"method": "spectral_clip", "target_norm": "spectral"}) == "spectral"
    assert analysis.target_norm({"method": "none", "target_norm": None}) is None


def test_target_norm_from_the_records_where_config_json_is_silent(tmp_path):
    base = {k: v for k, v in PAPER_CONFIG.items() if k != "target_norm"}
    write_run(str(tmp_path), "cap", {**base, "method": "spectral_cap"}, epochs=[(1, 0.1, 0.1, 4.0, 4.0)],
              layers=_layers({1: [1.0]}, target=0.5), extra_layer_columns={"n_above_target": [3]})
    write_run(str(tmp_path), "frob", {**base, "method": "frobenius"}, epochs=[(1, 0.1, 0.1, 4.0, 4.0)],
              layers=_layers({1: [1.0]}, target=9.0))
    study = analysis.load_study(str(tmp_path))
    assert study.target_norm("cap") == "spectral" and study.target("cap", "0.weight") == 0.5
    assert study.target_norm("frob") is None and math.isnan(study.target("frob", "0.weight"))


def test_differing_fields_and_spectra_matrix(sweep):
    assert analysis.differing_fields([{"seed": 1, "lr": 1e-3, "out_dir": "a"}, {"seed": 2, "lr": 1e-3, "out_dir": "b"}]) == ["seed"]
    study = analysis.load_study(sweep)
    epochs, sigma = study.spectra.matrix("spec-s1", "0.weight")
    assert epochs == [0, 4] and sigma.tolist() == [[1.0, 2.0], [1.0, 0.5]]


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
