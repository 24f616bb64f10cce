"""Run folders you can trust: hostile files, races, gaps, other data, corrupt checkpoints, clear refusals."""
import glob
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

import nslab
from nslab import training
from nslab.checkpoint import ForeignCheckpoint, checkpoint_path
from nslab.cli import main
from nslab.data import write_synthetic
from nslab.records import load_run, read_status

QUIET = dict(log=lambda _: None)


def interrupted_run(tiny, epochs=4, crash_at=4, **overrides):
    """A run stopped by Ctrl-C during epoch `crash_at` (checkpoints every 2 epochs)."""
    cfg = tiny(method="spectral", epochs=epochs, checkpoint_every=2, **overrides)
    real, calls = training.train_one_epoch, {"n": 0}

    def crash(session, **kw):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(session, **kw)

    training.train_one_epoch = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            nslab.train(cfg, **QUIET)
    finally:
        training.train_one_epoch = real
    return cfg


def tables(run_dir):
    run = load_run(run_dir)
    return run.epochs.drop(columns="seconds"), run.layers, run.spectra


class Evil:
    """A pickle that would run a command when loaded with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_checkpoint_runs_nothing_and_is_named(tiny, tmp_path):
    cfg = interrupted_run(tiny)
    marker = tmp_path / "pwned"
    bad = checkpoint_path(cfg.run_dir, 4)
    torch.save({"epoch": 4, "model": Evil(str(marker))}, bad)  # the latest checkpoint of a 'running' run
    with pytest.raises(ForeignCheckpoint, match=f"checkpoint {bad} holds objects nslab never writes"):
        nslab.train(cfg, **QUIET)
    with open(bad, "wb") as f:  # a plain pickle, not even torch's format: unreadable, so set aside like damage
        pickle.dump(Evil(str(marker)), f)
    with pytest.warns(UserWarning, match=f"checkpoint {bad} is not readable"):
        run = nslab.train(cfg, **QUIET)
    assert run.status["status"] == "completed" and os.path.exists(bad + ".corrupt")
    assert not marker.exists()


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tiny, tmp_path):
    cfg = tiny(epochs=1)
    os.makedirs(cfg.run_dir)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    os.symlink(precious, os.path.join(cfg.run_dir, ".lock"))
    with pytest.raises(PermissionError, match=r"\.lock is a symbolic link"):
        nslab.train(cfg, **QUIET)
    assert precious.read_text() == "keep me"


def test_settings_are_decided_under_the_lock(tiny, monkeypatch):
    """Another process completes a run with another lr between the first look and the lock: refused."""
    cfg = tiny(epochs=1, name="raced")
    other = tiny(epochs=1, name="raced", lr=0.05)
    real_build = training.build_session

    def build_while_another_run_finishes(config):
        monkeypatch.setattr(training, "build_session", real_build)
        nslab.train(other, **QUIET)  # wins the race
        return real_build(config)

    monkeypatch.setattr(training, "build_session", build_while_another_run_finishes)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.05 there, 0.001 here"):
        nslab.train(cfg, **QUIET)
    assert load_run(other.run_dir).config["lr"] == 0.05 and read_status(other.run_dir)["status"] == "completed"


@pytest.mark.parametrize("damage, message", [
    ("epochs.csv", r"epochs.csv lacks epoch\(s\) 1, 2"),
    ("row", r"epochs.csv lacks epoch\(s\) 1\b"),
    ("layers.csv", "layers.csv has no rows"),
    ("spectra.parquet", r"spectra.parquet lacks epoch\(s\) 0, 1, 2"),
])
def test_resume_refuses_tables_with_gaps_and_names_them(tiny, damage, message):
    cfg = interrupted_run(tiny)
    path = os.path.join(cfg.run_dir, "epochs.csv" if damage == "row" else damage)
    if damage == "row":
        df = pd.read_csv(path)
        df[df.epoch != 1].to_csv(path, index=False)
    else:
        os.remove(path)
    before = {f: open(os.path.join(cfg.run_dir, f), "rb").read() for f in os.listdir(cfg.run_dir)
              if os.path.isfile(os.path.join(cfg.run_dir, f))}
    with pytest.raises(ValueError, match=message):
        nslab.train(cfg, **QUIET)
    after = {f: open(os.path.join(cfg.run_dir, f), "rb").read() for f in before}
    assert before == after  # nothing rewritten


def test_resume_on_other_data_is_refused(tiny, tmp_path):
    cfg = interrupted_run(tiny)
    fingerprint = load_run(cfg.run_dir).config["data_fingerprint"]
    assert fingerprint["train"].startswith("256:") and fingerprint["source"].endswith("cifar100_uint8.npz")
    other = tmp_path / "other"
    write_synthetic(str(other / "cifar100_uint8.npz"), n_train=256, n_test=128, seed=7)
    with pytest.raises(ValueError, match="was trained on other data: its train split was 256:"):
        nslab.train(cfg.replace(data_dir=str(other)), **QUIET)


def test_a_corrupt_latest_checkpoint_falls_back_and_is_kept_aside(tiny):
    whole = nslab.train(tiny(method="spectral", epochs=4, checkpoint_every=2, name="whole"), **QUIET)
    cfg = tiny(method="spectral", epochs=4, checkpoint_every=2, name="cut")
    nslab.train(cfg, **QUIET)
    # Make it an interrupted run whose newest checkpoint (epoch 4) was truncated by a crash mid-copy.
    latest = checkpoint_path(cfg.run_dir, 4)
    data = open(latest, "rb").read()
    open(latest, "wb").write(data[: len(data) // 3])
    status = json.load(open(os.path.join(cfg.run_dir, "status.json")))
    json.dump({**status, "status": "interrupted"}, open(os.path.join(cfg.run_dir, "status.json"), "w"))
    lines = []
    with pytest.warns(UserWarning, match=f"checkpoint {latest} is truncated or corrupt"):
        resumed = nslab.train(cfg, log=lines.append)
    assert any("resuming from the checkpoint of epoch 2" in line for line in lines)
    assert os.path.exists(latest + ".corrupt") and os.path.exists(latest)  # kept aside; a new epoch-4 one written
    assert resumed.status["status"] == "completed"
    for a, b in zip(tables(whole.run_dir), tables(resumed.run_dir)):
        pd.testing.assert_frame_equal(a, b)


def test_status_follows_every_epoch_and_orphans_are_removed(tiny):
    cfg = tiny(epochs=3, name="st")
    os.makedirs(os.path.join(cfg.run_dir, "checkpoints"))
    orphans = [os.path.join(cfg.run_dir, ".epochs.csv.dead.tmp"), os.path.join(cfg.run_dir, "checkpoints", ".x.tmp")]
    for path in orphans:
        open(path, "w").close()
    seen = []

    def log(line):
        if line.startswith("epoch "):
            seen.append(read_status(cfg.run_dir))

    nslab.train(cfg, log=log)
    assert [s["epoch"] for s in seen] == [0, 1, 2]  # at each epoch's line, the previous epoch is recorded
    assert seen[1]["message"] == "epoch 1 of 3 done"
    assert not any(os.path.exists(p) for p in orphans)


def test_a_full_disk_message_survives_on_stderr(tiny, monkeypatch, capsys):
    cfg = tiny(epochs=2, name="full")
    from nslab import records

    real = records.RunRecorder.add_epoch

    def full(self, row):
        if row["epoch"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(records.RunRecorder, "add_epoch", full)
    with pytest.raises(OSError):
        nslab.train(cfg, **QUIET)
    assert "failed: OSError: [Errno 28] No space left on device" in capsys.readouterr().err
    assert read_status(cfg.run_dir)["status"] == "failed"


def test_raising_epochs_extends_a_completed_run(tiny):
    whole = nslab.train(tiny(method="spectral", epochs=4, checkpoint_every=2, spectra_every=2, name="w"), **QUIET)
    short = nslab.train(tiny(method="spectral", epochs=2, checkpoint_every=2, spectra_every=2, name="x"), **QUIET)
    lines = []
    longer = nslab.train(tiny(method="spectral", epochs=4, checkpoint_every=2, spectra_every=2, name="x"),
                         log=lines.append)
    assert any("extending from 2 to 4 epochs" in line for line in lines)
    assert longer.status["status"] == "completed" and longer.config["epochs"] == 4
    for a, b in zip(tables(whole.run_dir), tables(short.run_dir)):
        pd.testing.assert_frame_equal(a, b)  # the same training: checkpoints every 2 epochs, spectra at 2 and 4
    with pytest.raises(ValueError, match="other settings .*only epochs may be raised"):
        nslab.train(tiny(method="spectral", epochs=3, checkpoint_every=2, spectra_every=2, name="x", lr=0.01), **QUIET)


def test_augmented_test_set_also_records_the_clean_one(tiny):
    run = nslab.train(tiny(epochs=2, augment_test=True, name="aug"), **QUIET)
    assert run.epochs.clean_test_acc.notna().all() and run.epochs.clean_test_loss.notna().all()
    assert (run.epochs.clean_test_loss != run.epochs.test_loss).all()
    plain = nslab.train(tiny(epochs=1, name="plain"), **QUIET)
    assert plain.epochs.clean_test_loss.isna().all()


@pytest.mark.parametrize("argv, message", [
    (["--train_subset", "100000"], "train_subset=100000 is not allowed: the data has 256"),
    (["--seed", str(2**70)], "seed=1180591620717411303424 is not allowed: must be at most"),
    (["--width", "10000000"], "width=10000000 is not allowed: must be at most 65536"),
    (["--name", "x" * 300], "is not allowed: a folder name has at most 255 bytes"),
    (["--name", "a\nb"], "control characters"),
    (["--lr", "nan"], "lr=nan is not allowed: must be a finite number"),
    (["--power_tol", "inf"], "power_tol=inf is not allowed: must be a finite number"),
    (["--data_dir", "/nonexistent/nslab-data"], "no CIFAR-100 in data_dir='/nonexistent/nslab-data'"),
])
def test_the_command_line_refuses_with_one_line_and_exit_2(argv, message, data_dir, tmp_path, capsys, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    base = ["run", "--depth", "2", "--width", "16", "--epochs", "1", "--device", "cpu", "--data_dir", data_dir,
            "--out_dir", str(tmp_path)]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not os.listdir(tmp_path)  # nothing written


def test_other_settings_and_a_folder_in_use_exit_2(data_dir, tmp_path, capsys):
    import fcntl

    base = ["run", "--depth", "2", "--width", "16", "--epochs", "1", "--device", "cpu", "--data_dir", data_dir,
            "--out_dir", str(tmp_path), "--name", "r"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--lr", "0.1"]) == 2
    assert capsys.readouterr().err.startswith("error: run folder")
    with open(tmp_path / "r" / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(base + ["--epochs", "2"]) == 2
        assert "is in use by another process" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda", "--name", "c"]) == 2
        assert "device='cuda' is not allowed here" in capsys.readouterr().err


@pytest.mark.parametrize("labels, message", [
    (np.zeros(4, np.float32), "holds float32 labels"),
    (np.zeros((4, 2), np.uint8), "labels in a 1-d array"),
    (np.full(4, 100, np.int64), "outside 0..99"),
])
def test_bad_labels_are_refused_before_training(tmp_path, labels, message):
    path = tmp_path / "cifar100_uint8.npz"
    np.savez(path, x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=labels,
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=message):
        nslab.train(nslab.RunConfig(depth=2, width=8, epochs=1, data_dir=str(tmp_path), out_dir=str(tmp_path / "o"),
                                    device="cpu"), **QUIET)
    assert not os.path.exists(tmp_path / "o")
    np.savez(path, x_train=np.zeros((0, 32, 32, 3), np.uint8), y_train=np.zeros(0, np.uint8),
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="the train split is empty"):
        nslab.train(nslab.RunConfig(depth=2, width=8, epochs=1, data_dir=str(tmp_path), out_dir=str(tmp_path / "o"),
                                    device="cpu"), **QUIET)


def test_checkpoints_hold_only_what_weights_only_loads(tiny):
    cfg = tiny(method="spectral_topk", epochs=1, name="safe")
    nslab.train(cfg, **QUIET)
    for path in glob.glob(os.path.join(cfg.run_dir, "checkpoints", "*.pt")):
        torch.load(path, weights_only=True)  # raises on anything but tensors and plain containers
