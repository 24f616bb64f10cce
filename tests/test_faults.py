"""End to end, unsupervised: kill -9 a run at 10 seeded random moments, resume each time, and require
tables equal to an uninterrupted run's.

The runs are forked from this process (torch already imported, one thread as everywhere in the tests),
so a restart costs milliseconds, not an interpreter start; ``nslab run`` in a subprocess is the same code.
"""
import glob
import os
import random
import signal
import multiprocessing
import sys
import time

import pandas as pd
import pytest

from nslab.records import load_run, read_status

ARGS = ["--depth", "3", "--width", "128", "--method", "spectral", "--epochs", "25", "--batch_size", "16",
        "--spectra_every", "1", "--checkpoint_every", "1", "--device", "cpu"]


def command(data_dir, out, name):
    return ["run", *ARGS, "--data_dir", data_dir, "--out_dir", out, "--name", name]


def _child(argv):
    from nslab.cli import main

    sys.stdout = sys.stderr = open(os.devnull, "w")
    os._exit(main(argv))


def start(argv):
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv,))
    proc.start()
    return proc


def tables(run_dir):
    run = load_run(run_dir)
    return run.epochs.drop(columns="seconds"), run.layers, run.spectra


def _wait_for_training(run_dir, proc, timeout=120):
    """Until this process has written status.json (it holds the lock and starts training)."""
    path, start = os.path.join(run_dir, "status.json"), time.time()
    while time.time() - start < timeout and proc.is_alive():
        if os.path.exists(path) and os.path.getmtime(path) >= start:
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_at_ten_random_moments_then_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    out = str(tmp_path)
    whole = start(command(data_dir, out, "whole"))
    whole.join(300)
    assert whole.exitcode == 0
    epoch_s = float(load_run(os.path.join(out, "whole")).epochs.seconds.mean())
    rng = random.Random(20261128)
    run_dir = os.path.join(out, "cut")
    kills, mid_write = 0, 0
    for _ in range(10):
        proc = start(command(data_dir, out, "cut"))
        _wait_for_training(run_dir, proc)
        # Within the next 2 epochs: 10 kills cannot finish 25 epochs, and every phase of an epoch is hit
        # (batches, the tables, the probes, the checkpoint).
        time.sleep(rng.uniform(0, 2 * epoch_s))
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.join()
        # A temporary file left behind means the kill landed inside a table or checkpoint write.
        mid_write += bool(glob.glob(os.path.join(run_dir, ".*.tmp")) + glob.glob(os.path.join(run_dir, "checkpoints", ".*.tmp")))
        if read_status(run_dir).get("status") == "completed":
            break
    final = start(command(data_dir, out, "cut"))
    final.join(300)
    assert final.exitcode == 0
    assert read_status(run_dir)["status"] == "completed"
    assert not glob.glob(os.path.join(run_dir, "**", ".*.tmp"), recursive=True)
    for a, b in zip(tables(os.path.join(out, "whole")), tables(run_dir)):
        pd.testing.assert_frame_equal(a, b)
    print(f"{kills} kill -9, {mid_write} of them inside a write; {epoch_s:.2f} s per epoch")
    assert kills == 10  # every moment falls inside the run
