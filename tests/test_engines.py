"""The sweep on real engines started here: a one-node SLURM cluster (slurmctld, slurmd, munge on
127.0.0.1) and a Ray head (``ray start`` on 127.0.0.1), both inside a network namespace that records
any packet sent towards another address. Each engine runs the same tiny grid as the local engine
(plus a long run that is cancelled mid-way and a failing run) and must give the same tables, run
for run; a rerun submits nothing. Skipped, with the reason, where an engine cannot start here
(.ci/engines-setup.sh installs them).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess

import pandas as pd
import pytest
import yaml
from engine_clusters import (LOOPBACK_PROXIES, Unavailable, epochs_done, finish, isolated_network, nslab,
                             outside_peers, ray_head, run_released, slurm_cluster, squeue_state, wait_for)

from nslab.records import load_run
from nslab.sweep.ray_engine import TELEMETRY_OFF

TINY = {"model": "mlp", "depth": 2, "width": 16, "epochs": 2, "batch_size": 64, "train_subset": 200,
        "test_subset": 100, "device": "cpu", "spectra_every": 1, "checkpoint_every": 1}
TINY_RUNS = ["mlp2x16-none-s1", "mlp2x16-frobenius-s1", "mlp2x16-spectral-s1"]
LONG_EPOCHS = 60
pytestmark = pytest.mark.engines
ran = []  # engines whose flow ran: the network check below is only meaningful after one


def _grid(folder, data_dir: str, long: bool = True, broken: bool = True, name: str = "grid.yaml") -> str:
    """The three methods on a tiny MLP (the quick grid's shape); a long run first (cancelled mid-way by
    the tests) and a run that fails in the notebook (its training subset exceeds the data)."""
    runs = ([{"method": "spectral", "epochs": LONG_EPOCHS, "name": "long"}] if long else [])
    runs += [{"method": m} for m in ("none", "frobenius", "spectral")]
    runs += [{"method": "none", "train_subset": 100000, "name": "broken"}] if broken else []
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        yaml.safe_dump({"sweep": "engines", "base": {**TINY, "data_dir": data_dir}, "runs": runs}, f)
    return path


def _env(**extra) -> dict:
    """One thread per run everywhere (the engines set OMP_NUM_THREADS from --cpus-per-run = 1)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **LOOPBACK_PROXIES, **extra}


def _summary(out) -> pd.DataFrame:
    return pd.read_csv(os.path.join(out, "summary.csv")).set_index("run")


def assert_same_tables(expected_dir: str, actual_dir: str) -> None:
    """epochs.csv (but its timings), layers.csv and spectra.parquet equal, value for value."""
    a, b = load_run(expected_dir), load_run(actual_dir)
    pd.testing.assert_frame_equal(a.epochs.drop(columns="seconds"), b.epochs.drop(columns="seconds"), check_exact=True)
    pd.testing.assert_frame_equal(a.layers, b.layers, check_exact=True)
    pd.testing.assert_frame_equal(a.spectra, b.spectra, check_exact=True)


def _check_resumed(run_dir: str, before: pd.DataFrame) -> None:
    """Trained to the end, resumed from a checkpoint, and the epochs trained before the interruption are
    those of the finished run, value for value (a resumed run equals an uninterrupted one).

    Which checkpoint each execution resumed from is not read from papermill.log: a kernel killed
    within ipykernel's output flush interval never sends its last lines."""
    after = load_run(run_dir).epochs
    assert list(after.epoch) == list(range(1, LONG_EPOCHS + 1)) and 1 <= len(before) < LONG_EPOCHS
    pd.testing.assert_frame_equal(after[after.epoch <= len(before)].drop(columns="seconds").reset_index(drop=True),
                                  before.drop(columns="seconds").reset_index(drop=True), check_exact=True)
    assert "resuming from the checkpoint of epoch" in open(os.path.join(run_dir, "papermill.log")).read()


def _check_outcome(out, printed: str) -> None:
    summary = _summary(out)
    assert list(summary.status) == ["completed"] * 4 + ["failed"], printed
    message = summary.loc["broken", "message"]
    assert "train_subset=100000 is not allowed" in message and f"(log: {out}/broken/" in message


@pytest.fixture(scope="module")
def network():
    """This module's tests, and everything they start, in a namespace that records outside contacts."""
    context = isolated_network()
    try:
        trap = context.__enter__()
    except Unavailable as err:
        yield None, str(err)
        return
    try:
        yield trap, ""
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def reference(network, tmp_path_factory, data_dir):
    """The tiny grid through the local engine: the tables every other engine must reproduce."""
    folder = tmp_path_factory.mktemp("local")
    code, printed = finish(nslab(["sweep", _grid(folder, data_dir, long=False, broken=False), "--out",
                                  str(folder / "sweep"), "--workers", "2"], _env()))  # one thread each (_env)
    assert code == 0, printed
    return {run: str(folder / "sweep" / run) for run in TINY_RUNS}


def _hold(context):
    """Enter an engine's context (yielding what it yields), or skip with the reason it cannot start here."""
    try:
        value = context.__enter__()
    except Unavailable as err:
        pytest.skip(str(err))
    try:
        yield value
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def slurm(network):
    yield from _hold(slurm_cluster())


# Ray >= 2.5x authenticates with a token; the tests' own, so nothing depends on ~/.ray/auth_token.
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def ray_address(network):
    for address, _ in _hold(ray_head(_env(**TELEMETRY_OFF, **RAY_AUTH))):
        yield address


def test_slurm_engine(slurm, reference, tmp_path, data_dir):
    env, out = _env(SLURM_CONF=slurm), tmp_path / "sweep"
    grid = _grid(tmp_path, data_dir)
    sweep = ["sweep", grid, "--out", str(out), "--engine", "slurm", "--cpus-per-run", "1", "--progress-every", "5"]

    # Submitted, and the command returns: one job per run, recorded in the sweep folder.
    code, printed = finish(nslab(sweep + ["--no-wait"], env))
    assert code == 0 and printed.count("submitted as SLURM job") == 5, printed
    book = json.loads((out / ".slurm" / "jobs.json").read_text())
    assert set(book) == {"long", *TINY_RUNS, "broken"}
    code, printed = finish(nslab(["status", str(out)], env))
    assert code == 0 and "no sweep is watching it" in printed and re.search(r"\d+ (running|queued)", printed), printed
    code, printed = finish(nslab(["sweep", grid, "--out", str(out)], env))  # the local engine meanwhile: refused
    assert code == 2 and "are queued or running as SLURM jobs: " in printed and "long (job " in printed, printed

    # The long run cancelled mid-way with scancel.
    long_job = str(book["long"]["job_id"])
    wait_for(lambda: epochs_done(out / "long") >= 2, 180, "the long run's second epoch")
    subprocess.run(["scancel", long_job], env=env, check=True)
    wait_for(lambda: squeue_state(long_job, slurm) == "CANCELLED", 60, "SLURM to cancel the long run")
    # The kernel, in its own session, is out of reach of scancel's signals; it ends with its job's worker.
    wait_for(lambda: run_released(out / "long"), 10, "the cancelled run's kernel to end")
    before = load_run(str(out / "long")).epochs

    # Again, waiting: jobs still queued or running are watched, not submitted again; the cancelled run
    # is submitted again and resumes from its checkpoint; the failing run fails alone, with its log.
    watching = nslab(sweep, env)
    try:
        # Preempted meanwhile (SLURM signals the job first): submitit requeues it under the same job id and
        # the run resumes again; the waiting sweep goes on watching.
        resubmitted = wait_for(lambda: json.loads((out / ".slurm" / "jobs.json").read_text())["long"]["job_id"]
                               != long_job, 60, "the long run's new job")
        new_job = json.loads((out / ".slurm" / "jobs.json").read_text())["long"]["job_id"]
        wait_for(lambda: epochs_done(out / "long") >= len(before) + 2, 180, "the resumed run's progress")
        subprocess.run(["scancel", "--signal=USR2", new_job], env=env, check=True)
        code, printed = finish(watching, 400)
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.wait()
    assert resubmitted and code == 1, printed
    _check_outcome(out, printed)
    again = json.loads((out / ".slurm" / "jobs.json").read_text())
    assert all(again[run]["job_id"] == book[run]["job_id"] for run in TINY_RUNS), (book, again)
    assert again["long"]["job_id"] == new_job != long_job
    _check_resumed(str(out / "long"), before)
    log = (out / "long" / "papermill.log").read_text()  # submitted, resubmitted after scancel, requeued
    assert log.count("sweep: executing") == 3, "the requeued job did not run the notebook again"

    # Nothing left to run: a rerun (without the failing run) submits nothing.
    code, printed = finish(nslab(["sweep", _grid(tmp_path, data_dir, broken=False, name="done.yaml"), "--out",
                                  str(out), "--engine", "slurm"], env))
    assert code == 0 and "submitted" not in printed and printed.count("completed earlier, skipped") == 4, printed
    assert json.loads((out / ".slurm" / "jobs.json").read_text()) == again
    for run in TINY_RUNS:
        assert_same_tables(reference[run], str(out / run))
    ran.append("slurm")


def test_ray_engine(ray_address, reference, tmp_path, data_dir):
    env, out = _env(**TELEMETRY_OFF, **RAY_AUTH), tmp_path / "sweep"
    grid = _grid(tmp_path, data_dir)

    # Ctrl-C once the long run is mid-way: the sweep stops every run it has in flight.
    sweep = nslab(["sweep", grid, "--out", str(out), "--engine", "ray", "--address", "auto", "--progress-every", "5"],
                  {**env, "RAY_ADDRESS": ray_address})
    try:
        wait_for(lambda: epochs_done(out / "long") >= 2, 240, "the long run's second epoch")
        sweep.send_signal(signal.SIGINT)
        code, printed = finish(sweep, 120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert f"Ray cluster at {ray_address}" in printed and "sweep engines: interrupted" in printed, printed
    assert _summary(out).loc["long", "status"] == "interrupted"
    wait_for(lambda: run_released(out / "long"), 10, "the interrupted run's kernel to end")
    before = load_run(str(out / "long")).epochs

    # Again: the interrupted runs resume, the failing one fails alone.
    code, printed = finish(nslab(["sweep", grid, "--out", str(out), "--engine", "ray", "--address", ray_address], env),
                           400)
    assert code == 1, printed
    _check_outcome(out, printed)
    _check_resumed(str(out / "long"), before)

    code, printed = finish(nslab(["sweep", _grid(tmp_path, data_dir, broken=False, name="done.yaml"), "--out",
                                  str(out), "--engine", "ray", "--address", ray_address], env))
    assert code == 0 and "submitted" not in printed and printed.count("completed earlier, skipped") == 4, printed
    for run in TINY_RUNS:
        assert_same_tables(reference[run], str(out / run))
    ran.append("ray")


def test_no_process_contacted_an_outside_address(network):
    """Everything this module started (clusters, sweeps, runs, kernels) stayed on loopback."""
    trap, reason = network
    if trap is None:
        pytest.skip(f"no network namespace here: {reason}")
    if not ran:
        pytest.skip("no engine ran here, so nothing to check")
    assert trap.contacts() == [], f"{ran}: packets sent towards outside addresses"
    assert outside_peers() == [], f"{ran}: TCP connections to non-loopback addresses"
