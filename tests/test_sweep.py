"""Sweeps: grid files expand and validate before anything runs; papermill runs a tiny sweep that
skips completed runs, resumes an interrupted one and isolates a failing one."""
import json
import os

import pandas as pd
import pytest

from nslab import training
from nslab.cli import main
from nslab.grid import GridError, expand, load_grid
from nslab.presets import PRESETS
from nslab.records import load_run
from nslab.sweep import Job, _worker_env, progress_line

TINY = {"model": "mlp", "depth": 2, "width": 16, "epochs": 2, "batch_size": 64, "train_subset": 200,
        "test_subset": 100, "device": "cpu", "spectra_every": 1, "checkpoint_every": 1}


def _write(tmp_path, text: str, name: str = "grid.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- grid files -------------------------------------------------------------------------
def test_vary_is_a_product_over_base_and_preset():
    grid = expand({"sweep": "s", "base": {"preset": "quick", "epochs": 2},
                   "vary": {"method": ["none", "spectral"], "seed": [1, 2]}})
    assert [c.name for c in grid.configs] == ["mlp3x512-none-s1", "mlp3x512-none-s2",
                                              "mlp3x512-spectral-s1", "mlp3x512-spectral-s2"]
    quick = PRESETS["quick"]
    assert {(c.epochs, c.width, c.train_subset) for c in grid.configs} == {(2, 512, quick["train_subset"])}  # preset < base
    assert quick["epochs"] != 2
    assert grid.varied_fields() == ["method", "seed"]


def test_names_show_varied_fields_and_templates_and_explicit_runs():
    grid = expand({"base": TINY, "vary": {"lr": [0.1, 0.01], "milestones": [[1], [1, 2]]}}, "g.yaml")
    assert [c.name for c in grid.configs] == ["mlp2x16-none-s1-lr=0.1-milestones=1", "mlp2x16-none-s1-lr=0.1-milestones=1,2",
                                              "mlp2x16-none-s1-lr=0.01-milestones=1", "mlp2x16-none-s1-lr=0.01-milestones=1,2"]
    assert grid.configs[1].milestones == (1, 2) and grid.name == "g"
    grid = expand({"base": {**TINY, "name": "{model}-b{batch_size}"}, "runs": [{"batch_size": 32}, {"batch_size": 64}]})
    assert [c.name for c in grid.configs] == ["mlp-b32", "mlp-b64"]
    grid = expand({"runs": [{"preset": "resnet34-none"}, {"preset": "mlp5x2000-spectral", "seed": 2}]})
    assert [c.name for c in grid.configs] == ["resnet34-none-s1", "mlp5x2000-spectral-s2"]
    assert grid.configs[1].power_iters == 500  # the paper preset's seed-faithful settings


def test_the_repository_grids_expand():
    root = os.path.join(os.path.dirname(__file__), "..", "grids")
    quick, paper, seeds = (load_grid(os.path.join(root, f"{n}.yaml")) for n in ("quick", "paper", "paper-seeds"))
    assert [c.method for c in quick.configs] == ["none", "frobenius", "spectral"] and quick.name == "quick"
    assert len(paper.configs) == 12 and {c.epochs for c in paper.configs} == {200}
    assert {(c.model, c.depth if c.model == "mlp" else 0) for c in paper.configs} == {
        ("mlp", 5), ("mlp", 7), ("resnet34", 0), ("resnet50", 0)}
    assert len(seeds.configs) == 36 and {c.seed for c in seeds.configs} == {1, 2, 3}


@pytest.mark.parametrize("text, message", [
    ("vari: {seed: [1]}", "top level: unknown key 'vari' (did you mean 'vary'?)"),
    ("base: {wdith: 3}", "base: unknown key 'wdith' (did you mean 'width'?)"),
    ("vary: {method: [none, l2]}", "vary.method[1]: method='l2' is not allowed: choose one of"),
    ("base: {width: abc}", "base: width='abc' is not allowed: expected an integer"),
    ("vary: {seed: 1}", "vary.seed: expected a non-empty list of values, got 1"),
    ("vary: {lr: [0.1, 0.1]}", "run name 'mlp5x2000-none-s1' is also the name of"),
    ("base: {preset: nope}", "base: preset='nope' is not allowed"),
    ("base: {out_dir: x}", "base.out_dir: out_dir is the sweep's folder"),
    ("runs: [{seed: 2}]\nvary: {seed: [1]}", "runs[0].seed: seed is also in vary"),
    ("base: {name: '{nope}-x'}", "name='{nope}-x' is not a usable template"),
    ("base: [1, 2", "not valid YAML"),
])
def test_bad_grid_files_fail_before_anything_runs(tmp_path, capsys, text, message):
    path = _write(tmp_path, text, "bad.yaml")
    out = tmp_path / "out"
    assert main(["sweep", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and message in err
    assert not out.exists()


def test_missing_grid_file_and_dry_run(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read the grid file" in capsys.readouterr().err
    path = _write(tmp_path, f"base: {json.dumps(TINY)}\nvary: {{method: [none, spectral]}}")
    assert main(["sweep", path, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "mlp2x16-none-s1" in printed and "mlp2x16-spectral-s1" in printed and not (tmp_path / "out").exists()


def test_workers_are_pinned_to_gpus_or_share_the_cpu(monkeypatch, tiny):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    job = Job(tiny(device="auto"))
    assert _worker_env(job, 3, 4, ["0", "1"])["CUDA_VISIBLE_DEVICES"] == "1" and job.gpu == "1"
    env = _worker_env(Job(tiny()), 0, 2, [])
    assert "CUDA_VISIBLE_DEVICES" not in env and int(env["OMP_NUM_THREADS"]) >= 1
    assert "OMP_NUM_THREADS" not in _worker_env(Job(tiny()), 0, 1, [])


def test_progress_line(tiny, tmp_path):
    jobs = [Job(tiny(method=m), state=s) for m, s in (("none", "completed"), ("spectral", "running"),
                                                      ("frobenius", "pending"))]
    assert progress_line("t", jobs) == "sweep t: 1 done, 1 running (mlp2x16-spectral-s1 epoch 0/3), 0 failed, 1 pending"


# -- a real sweep through papermill ------------------------------------------------------------
def test_sweep_skips_resumes_and_isolates_a_failure(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("NSLAB_DATA_DIR", data_dir)  # the grid names no data_dir: the kernels must see this
    grid_path = _write(tmp_path, "sweep: tiny\n" f"base: {json.dumps(TINY)}\n"
                       "runs:\n  - {method: none}\n  - {method: spectral}\n"
                       "  - {method: frobenius, train_subset: 100000, name: broken}\n"
                       "  - {method: none, lr: 1.0e+30, name: diverges}\n")
    out = tmp_path / "tiny"

    # An interrupted run: the spectral configuration crashed in epoch 2, after epoch 1's checkpoint.
    spectral = load_grid(grid_path).configs[1].replace(out_dir=str(out))
    real_epoch = training.train_one_epoch

    def crash_in_epoch_2(session, **kw):
        if session.scheduler.last_epoch == 1:
            raise RuntimeError("injected crash")
        return real_epoch(session, **kw)

    monkeypatch.setattr(training, "train_one_epoch", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="injected crash"):
        training.train(spectral, log=lambda _: None)
    monkeypatch.setattr(training, "train_one_epoch", real_epoch)
    before = load_run(spectral.run_dir)
    assert before.status["status"] == "failed" and list(before.epochs.epoch) == [1]

    assert main(["sweep", grid_path, "--out", str(out), "--workers", "2", "--progress-every", "1"]) == 1
    printed = capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv").set_index("run")
    assert list(summary.index) == ["mlp2x16-none-s1", "mlp2x16-spectral-s1", "broken", "diverges"]
    assert list(summary.status) == ["completed", "completed", "failed", "diverged"]
    assert list(summary.action) == ["run", "resume", "run", "run"]
    assert list(summary.epochs_done) == [2, 2, 0, 1]
    assert summary.test_acc.iloc[:2].between(0, 1).all() and summary.seconds.iloc[:2].gt(0).all()
    assert "train_subset=100000 is not allowed" in summary.loc["broken", "message"]
    assert "non-finite loss at epoch 1" in summary.loc["diverges", "message"]
    assert "sweep tiny: " in printed and "mlp2x16-none-s1: completed" in printed and "broken: failed" in printed

    resumed = load_run(spectral.run_dir)
    assert list(resumed.epochs.epoch) == [1, 2]
    pd.testing.assert_frame_equal(resumed.epochs.iloc[:1], before.epochs)  # epoch 1 was not trained again
    assert "resuming from the checkpoint of epoch 1" in (out / "mlp2x16-spectral-s1" / "papermill.log").read_text()
    for run in summary.index:  # the executed notebook beside the tables, the failed one too
        assert (out / run / "notebook.ipynb").exists() and not (out / run / ".notebook.running.ipynb").exists()
    assert "injected crash" not in (out / "broken" / "notebook.ipynb").read_text()
    assert "ValueError" in (out / "broken" / "notebook.ipynb").read_text()
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["finished"] and status["counts"] == {"pending": 0, "running": 0, "completed": 2, "failed": 1,
                                                       "diverged": 1}

    # Again: completed and diverged runs are skipped (their files untouched); the failing run is tried again.
    done = [out / r / f for r in ("mlp2x16-none-s1", "mlp2x16-spectral-s1", "diverges")
            for f in ("notebook.ipynb", "epochs.csv", "status.json", "config.json")]
    mtimes = [p.stat().st_mtime_ns for p in done]
    assert main(["sweep", grid_path, "--out", str(out), "--workers", "2"]) == 1
    printed = capsys.readouterr().out
    again = pd.read_csv(out / "summary.csv").set_index("run")
    assert list(again.action) == ["skip", "skip", "run", "skip"]
    assert list(again.status) == ["completed", "completed", "failed", "diverged"]
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    assert "mlp2x16-none-s1: completed earlier, skipped" in printed
    assert list(again.test_acc.iloc[:2]) == list(summary.test_acc.iloc[:2])


def test_a_run_folder_with_other_settings_is_refused(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    path = _write(tmp_path, f"base: {json.dumps({**TINY, 'data_dir': data_dir})}")
    config = load_grid(path).configs[0]
    os.makedirs(out / config.name)
    (out / config.name / "config.json").write_text(json.dumps({**config.to_dict(), "width": 99}))
    assert main(["sweep", path, "--out", str(out)]) == 2
    assert "holds a run with other settings (width: 99 there, 16 here)" in capsys.readouterr().err
    with pytest.raises(GridError):
        load_grid(_write(tmp_path, "sweep: ../x"))
