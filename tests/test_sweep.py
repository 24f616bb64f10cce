"""Sweeps: grid files expand and validate before anything runs; papermill runs a tiny sweep that
skips completed runs, resumes an interrupted one and isolates a failing one."""
import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from nslab import training
from nslab.cli import main
from nslab.grid import GridError, expand, load_grid
from nslab.presets import PRESETS
from nslab.locks import exclusive
from nslab.records import load_run, write_json
from nslab.sweep.local import worker_env
from nslab.sweep.plan import Job
from nslab.sweep.progress import progress_line
from nslab.sweep.task import RunTask, execute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    fast = load_grid(os.path.join(root, "paper-mlp-fast.yaml"))
    assert [(c.depth, c.width, c.method) for c in fast.configs] == [
        (d, w, m) for d, w in ((5, 2000), (7, 4000)) for m in ("none", "frobenius", "spectral")]
    assert all(c.warm_start and c.power_iters == 2 and c.epochs == 200 and c.targets == "first_layer"
               for c in fast.configs)
    for name in os.listdir(root):  # every shipped grid loads
        load_grid(os.path.join(root, name))


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
    # An empty file (or one naming no configuration) would run RunConfig's 200-epoch default.
    ("", "top level: expected a mapping with keys"),
    ("# nothing yet\n", "got an empty file"),
    ("sweep: x\ndescription: later", "the grid names no configuration: give base, vary or runs"),
    # YAML keeps the last of two equal keys silently: refused, naming the key and both lines.
    ("base: {width: 16}\nvary: {seed: [1]}\nbase: {width: 32}", "found the key 'base' twice (first on line 1)"),
    ("base: {width: 16, depth: 2, width: 32}", "found the key 'width' twice"),
    ("vary: {method: [none]}\nslurm: {time: soon}", "slurm.time='soon' is not allowed: a SLURM time limit"),
    ("vary: {method: [none]}\nslurm: {partitoin: gpu}", "slurm: unknown key 'partitoin'"),
    ("vary: {method: [none]}\nslurm: {extra: {partition: gpu}}", "nslab sets --partition itself"),
    ("vary: {method: [none]}\nslurm: {cpus_per_run: 0}", "slurm.cpus_per_run=0 is not allowed: must be between 1"),
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


def test_the_grid_slurm_block_under_the_command_line(tmp_path):
    from nslab.sweep.cli import _options

    grid = load_grid(_write(tmp_path, "vary: {method: [none]}\nslurm: {partition: gpu, time: '1-00:00:00', "
                                      "cpus_per_run: 8, extra: {account: lab, qos: high}}"))
    args = argparse.Namespace(engine="slurm", workers=None, no_wait=None, partition=None, mem="16G", time="90",
                              extra=["qos=low", "constraint=a100"], address=None, cpus_per_run=None, gpus_per_run="2")
    options = _options(args, grid)
    assert (options.partition, options.time, options.cpus_per_run, options.gpus_per_run, options.mem) == (
        "gpu", "90", 8, 2, "16G")
    assert dict(options.extra) == {"account": "lab", "qos": "low", "constraint": "a100"}


def test_slurm_time_limits_in_minutes():
    """submitit counts a job's time in minutes (and times its requeue decisions by it)."""
    from nslab.sweep.options import NO_LIMIT_MIN, minutes

    assert [minutes(t) for t in ("90", "90:30", "2:00:00", "2:00:01", "1-0", "1-02:30", "1-02:30:00", "0:20")] == [
        90, 91, 120, 121, 1440, 1590, 1590, 1]
    assert minutes("UNLIMITED") == minutes("infinite") == NO_LIMIT_MIN


@pytest.mark.parametrize("argv, message", [
    (["--engine", "dask"], "--engine='dask' is not allowed: choose one of ['local', 'slurm', 'ray']"),
    (["--address", "auto"], "--address is an option of --engine ray, not of --engine local"),
    (["--engine", "ray", "--partition", "gpu"], "--partition is an option of --engine slurm, not of --engine ray"),
    (["--no-wait"], "--no-wait is an option of --engine slurm, not of --engine local"),
    (["--engine", "slurm", "--workers", "2"], "--workers is an option of --engine local"),
    (["--engine", "slurm", "--time", "tomorrow"], "--time='tomorrow' is not allowed: a SLURM time limit"),
    (["--engine", "slurm", "--mem", "lots"], "--mem='lots' is not allowed: memory per run in SLURM's format"),
    (["--engine", "slurm", "--cpus-per-run", "0"], "--cpus-per-run='0' is not allowed: must be between 1 and"),
    (["--engine", "ray", "--gpus-per-run", "-1"], "--gpus-per-run='-1' is not allowed: expected a whole number"),
    (["--engine", "slurm", "--slurm-extra", "account"], "--slurm-extra='account' is not allowed: expected KEY=VALUE"),
    (["--engine", "slurm", "--slurm-extra", "time=5"], "--slurm-extra: time is not allowed here: nslab sets --time"),
    (["--workers", "two"], "--workers='two' is not allowed"),
    (["--progress-every", "0"], "--progress-every='0' is not allowed: a number of seconds > 0"),
    (["--notebook", "missing.ipynb"], "--notebook='missing.ipynb' is not allowed: no such file"),
])
def test_bad_engine_options_are_refused_in_one_line(tmp_path, capsys, argv, message):
    path = _write(tmp_path, f"base: {json.dumps(TINY)}")
    assert main(["sweep", path, "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_planted_links_are_refused_and_left_alone(tmp_path, capsys, data_dir):
    """.sweep.lock and a run's papermill.log pointing at someone's file: refused, the file untouched."""
    path = _write(tmp_path, f"base: {json.dumps({**TINY, 'data_dir': data_dir})}")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sweep.lock").symlink_to(precious)
    assert main(["sweep", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}/.sweep.lock is a symbolic link: nslab does not write through links " \
                  f"(remove it, or use another folder)\n"
    (out / ".sweep.lock").unlink()
    run_dir = out / load_grid(path).configs[0].name
    run_dir.mkdir()
    (run_dir / "papermill.log").symlink_to(precious)
    assert main(["sweep", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir}/papermill.log is a symbolic link") and err.count("\n") == 1
    assert precious.read_text() == "keep me\n" and not (run_dir / "config.json").exists()
    # A link planted after planning: the worker refuses it too, and the run fails with that one line.
    task = RunTask("unused.ipynb", str(run_dir), {"name": "x"}, str(tmp_path))
    assert execute(task) == (f"PermissionError: {run_dir}/papermill.log is a symbolic link: nslab does not write "
                             f"through links (remove it, or use another folder)")
    assert precious.read_text() == "keep me\n"


def test_a_sweep_folder_in_use_is_refused(tmp_path, capsys):
    path = _write(tmp_path, f"base: {json.dumps(TINY)}")
    with exclusive(str(tmp_path / "out"), ".sweep.lock", what="sweep folder"):
        assert main(["sweep", path, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: sweep folder {str(tmp_path / 'out')!r} is in use by another process\n"


def test_killing_the_sweep_kills_its_workers_and_kernels(tmp_path, data_dir):
    """kill -9 of the sweep's main process: its worker and the notebook kernel are gone within seconds,
    and the sweep folder's and the run folder's locks are free again."""
    path = _write(tmp_path, f"base: {json.dumps({**TINY, 'data_dir': data_dir, 'epochs': 2000})}")
    out = tmp_path / "out"
    run_dir = str(out / load_grid(path).configs[0].name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    sweep = subprocess.Popen([sys.executable, "-m", "nslab", "sweep", path, "--out", str(out)], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(run_dir, "epochs.csv")):  # the kernel is training
            assert sweep.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        family = _descendants(sweep.pid)
        assert len(family) >= 2, family  # the worker and its kernel (at least)
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in family if _alive(pid)], "processes outlived the sweep"
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    with exclusive(str(out), ".sweep.lock", what="sweep folder"), exclusive(run_dir):
        pass


def test_a_kernel_ends_with_the_worker_that_started_it(tmp_path):
    """A worker killed under a subreaper (as a SLURM job step or a Ray raylet would be): its kernel,
    started in its own session, is re-parented to the subreaper, not to pid 1, and must still end at once."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    pid_file = tmp_path / "kernel.pid"
    kernel = ("import os, sys, time; from nslab.notebook import die_with_sweep_worker; "
              f"armed = die_with_sweep_worker(); open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{armed}}'); "
              "time.sleep(120)")
    worker = ("import os, subprocess, sys, time; os.environ['NSLAB_SWEEP_PARENT'] = str(os.getpid()); "
              f"subprocess.Popen([sys.executable, '-c', {kernel!r}], start_new_session=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", worker], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or " " not in pid_file.read_text():
            assert time.monotonic() < deadline, "the kernel did not start"
            time.sleep(0.05)
        kernel_pid, armed = pid_file.read_text().split()
        assert armed == "True"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 3
        while _alive(int(kernel_pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(int(kernel_pid)), "the kernel outlived its worker"
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid_file.exists() and " " in pid_file.read_text():
            orphan = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # re-parented to this process: reap it
                os.waitpid(orphan, 0)


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_are_pinned_to_gpus_or_share_the_cpu(monkeypatch, tiny):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    job = Job(tiny(device="auto"))
    assert worker_env(job, 3, 4, ["0", "1"])["CUDA_VISIBLE_DEVICES"] == "1" and job.where == "GPU 1"
    env = worker_env(Job(tiny()), 0, 2, [])
    assert "CUDA_VISIBLE_DEVICES" not in env and int(env["OMP_NUM_THREADS"]) >= 1
    assert "OMP_NUM_THREADS" not in worker_env(Job(tiny()), 0, 1, [])


def test_progress_line_and_its_eta(tiny):
    jobs = [Job(tiny(method=m), state=s) for m, s in (("none", "completed"), ("spectral", "running"),
                                                      ("frobenius", "pending"))]
    assert progress_line("t", jobs) == ("sweep t: 1 done, 1 running (mlp2x16-spectral-s1 epoch 0/3), 0 failed, "
                                        "1 pending, ETA unknown")  # no epoch timed yet
    # The running run: 2 of 3 epochs at 3 s and 5 s; the pending one (3 epochs) is assumed as fast: 4 s each.
    os.makedirs(jobs[1].run_dir)
    pd.DataFrame({"epoch": [1, 2], "seconds": [3.0, 5.0]}).to_csv(os.path.join(jobs[1].run_dir, "epochs.csv"))
    assert progress_line("t", jobs).endswith("(mlp2x16-spectral-s1 epoch 2/3), 0 failed, 1 pending, ETA 0m16s")
    jobs[2].state = "running"  # two at once: half the time
    assert progress_line("t", jobs).endswith(", 0 failed, 0 pending, ETA 0m08s")
    jobs[2].state = "queued"
    assert ", 1 queued, 0 failed, 0 pending, ETA 0m16s" in progress_line("t", jobs)


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
    # Stopped by Ctrl-C, its folder says "interrupted": resumed like a failed run.
    write_json(os.path.join(spectral.run_dir, "status.json"), {"status": "interrupted", "message": "", "epoch": 1})

    assert main(["sweep", grid_path, "--out", str(out), "--workers", "2", "--progress-every", "1"]) == 1
    printed = capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv").set_index("run")
    assert list(summary.index) == ["mlp2x16-none-s1", "mlp2x16-spectral-s1", "broken", "diverges"]
    assert list(summary.status) == ["completed", "completed", "failed", "diverged"]
    assert list(summary.action) == ["run", "resume", "run", "run"]
    assert list(summary.epochs_done) == [2, 2, 0, 1]
    for run in ("mlp2x16-none-s1", "mlp2x16-spectral-s1"):  # accuracy in percent, from the run's last epoch
        last = pd.read_csv(out / run / "epochs.csv").iloc[-1]
        assert summary.loc[run, "test_acc"] == pytest.approx(100 * last.test_acc)
    assert summary.seconds.iloc[:2].gt(0).all()
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
    assert status["finished"] and status["counts"] == {"pending": 0, "queued": 0, "running": 0, "completed": 2,
                                                       "failed": 1, "diverged": 1, "interrupted": 0}
    assert status["engine"] == "local" and status["eta_s"] == 0
    assert summary.loc["broken", "message"].endswith(f"(log: {out / 'broken' / 'papermill.log'})")

    assert main(["status", str(out)]) == 0  # where the sweep stands, read back from its folder
    printed = capsys.readouterr().out
    assert "(--engine local; no sweep is watching it)" in printed
    assert "sweep tiny: 2 done, 0 running, 2 failed, 0 pending, ETA 0m00s" in printed and "train_subset=100000" in printed
    assert main(["status", str(tmp_path)]) == 2
    assert "is not a sweep folder: it has no readable sweep_status.json" in capsys.readouterr().err

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
