"""Training end to end on synthetic data: the run folder, resume, divergence, determinism, errors."""
import json
import os

import pandas as pd
import pytest
import torch

import nslab
from nslab import training
from nslab.config import METHODS
from nslab.records import EPOCH_COLUMNS, LAYER_COLUMNS, SPECTRA_COLUMNS, load_run


def _tables(run_dir):
    run = load_run(run_dir)
    return run.epochs.drop(columns="seconds"), run.layers, run.spectra


def test_run_folder_schema(tiny):
    cfg = tiny(method="spectral", epochs=3, spectra_every=2, checkpoint_every=2)
    run = nslab.train(cfg, log=lambda s: None)
    files = sorted(f for f in os.listdir(cfg.run_dir) if not f.startswith("."))
    assert files == ["checkpoints", "config.json", "epochs.csv", "layers.csv", "spectra.parquet", "status.json"]
    assert run.status == {"status": "completed", "message": "3 epochs", "epoch": 3}
    assert list(run.epochs.columns) == EPOCH_COLUMNS and list(run.epochs.epoch) == [1, 2, 3]
    assert list(run.layers.columns) == LAYER_COLUMNS
    assert sorted(run.layers.epoch.unique()) == [0, 1, 2, 3] and run.layers.layer.nunique() == 2
    assert list(run.spectra.columns) == SPECTRA_COLUMNS
    assert sorted(run.spectra.epoch.unique()) == [0, 2, 3]  # epoch 0, every 2nd, and the last
    assert sorted(os.listdir(os.path.join(cfg.run_dir, "checkpoints"))) == ["epoch_0002.pt", "epoch_0003.pt"]
    config = json.load(open(os.path.join(cfg.run_dir, "config.json")))
    for key in ("torch_version", "nslab_version", "git_revision", "device_name", "rank_tolerance", "width"):
        assert key in config
    # spectra agree with the per-layer sigma_max column
    last = run.spectra[(run.spectra.epoch == 3) & (run.spectra["index"] == 0)].set_index("layer").sigma
    rows = run.layers[run.layers.epoch == 3].set_index("layer").sigma_max
    pd.testing.assert_series_equal(last.sort_index(), rows.sort_index(), check_names=False, rtol=1e-6)
    assert not [f for f in os.listdir(cfg.run_dir) if f.endswith(".tmp")]


def test_frobenius_run_holds_norms_at_target(tiny):
    run = nslab.train(tiny(method="frobenius"), log=lambda s: None)
    layers = run.layers
    assert ((layers.frobenius - layers.target).abs() / layers.target).max() < 1e-5
    assert layers.power_iter_rel_err.isna().all()


def test_spectral_run_records_targets_and_estimate_error(tiny):
    run = nslab.train(tiny(method="spectral", targets="per_layer"), log=lambda s: None)
    first = run.layers[run.layers.epoch == 0]
    assert list(first.target.round(6)) == [round((16 / 3072) ** 0.5, 6), round((100 / 16) ** 0.5, 6)]
    # The block (16 of 16 vectors: the whole row space) makes the estimate exact but for rounding.
    assert (run.layers.power_iter_rel_err < 1e-4).all()
    # sigma_max is the exact spectral norm of the weights the checkpoint holds.
    state = torch.load(os.path.join(run.run_dir, "checkpoints", "epoch_0003.pt"), weights_only=True)["model"]
    last = run.layers[run.layers.epoch == 3].set_index("layer")
    for name in ("1.weight", "3.weight"):
        exact = float(torch.linalg.matrix_norm(state[name].double(), 2))
        assert last.sigma_max[name] == pytest.approx(exact, rel=1e-6)
    same = nslab.train(tiny(method="spectral", targets="first_layer", name="fl"), log=lambda s: None)
    assert same.layers.target.nunique() == 1 and same.layers.target.iloc[0] == pytest.approx((16 / 3072) ** 0.5)


def test_none_run_has_no_target_and_frobenius_runs_a_norm_target(tiny):
    run = nslab.train(tiny(method="none", epochs=1), log=lambda s: None)
    assert run.config["target_norm"] is None
    layers = run.layers
    assert layers.target.isna().all() and layers.n_above_target.isna().all() and layers.excess.isna().all()
    assert layers.power_iter_rel_err.isna().all() and layers.sigma_max.gt(0).all()
    fro = nslab.train(tiny(method="frobenius", epochs=1, name="fro"), log=lambda s: None)
    assert fro.config["target_norm"] == "frobenius" and fro.layers.n_above_target.isna().all()


@pytest.mark.parametrize("overrides", [
    dict(model="resnet34", method="frobenius", channels_last=True),
    dict(model="resnet18", method="spectral", scale_rule="seed"),
    dict(compile=True, method="spectral"),
], ids=["resnet34-channels_last", "resnet18-seed-rule", "compile"])
def test_settings_that_run_on_the_cpu_train_for_real(tiny, overrides, monkeypatch):
    from nslab import probing

    # The convs' operator probes (about 20 s a probe for ResNet34 on 2 cores) are tested in test_conv_runs.py.
    monkeypatch.setattr(probing, "conv_operator_stats", lambda convs, geometry: {})
    cfg = tiny(epochs=1, train_subset=32, test_subset=16, batch_size=16, **overrides)
    run = nslab.train(cfg, log=lambda s: None)
    assert run.status["status"] == "completed" and len(run.epochs) == 1
    layers = set(run.layers.layer)
    if overrides.get("scale_rule") == "seed":  # the seed's rule: no downsample convs, no BatchNorm
        assert layers and not any("downsample" in n or "bn" in n for n in layers)
        assert "layer2.0.conv1.weight" in layers
    if overrides.get("model") == "resnet34":
        assert len(layers) == 37  # 36 convs (3 of them downsample) and the head


def test_deterministic_on_cpu(tiny):
    a = nslab.train(tiny(method="spectral", name="a"), log=lambda s: None)
    b = nslab.train(tiny(method="spectral", name="b"), log=lambda s: None)
    for ta, tb in zip(_tables(a.run_dir), _tables(b.run_dir)):
        pd.testing.assert_frame_equal(ta, tb)


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_interruption_equals_uninterrupted_run(tiny, monkeypatch, method):
    whole = nslab.train(tiny(method=method, epochs=4, checkpoint_every=2, name="whole"), log=lambda s: None)

    real_epoch = training.train_one_epoch
    calls = {"n": 0}

    def crash_in_epoch_4(session, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated interruption")
        return real_epoch(session, **kw)

    cfg = tiny(method=method, epochs=4, checkpoint_every=2, name="resumed")
    monkeypatch.setattr(training, "train_one_epoch", crash_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        nslab.train(cfg, log=lambda s: None)
    stopped = load_run(cfg.run_dir)
    assert stopped.status == {"status": "interrupted", "message": "interrupted after epoch 3; run again to resume",
                              "epoch": 3}
    assert list(stopped.epochs.epoch) == [1, 2, 3]
    monkeypatch.setattr(training, "train_one_epoch", real_epoch)
    lines = []
    resumed = nslab.train(cfg, log=lines.append)
    assert "resuming from the checkpoint of epoch 2" in "\n".join(lines)
    assert resumed.status["status"] == "completed"
    for ta, tb in zip(_tables(whole.run_dir), _tables(resumed.run_dir)):
        pd.testing.assert_frame_equal(ta, tb)


def test_completed_run_is_not_trained_again(tiny):
    cfg = tiny(epochs=1)
    nslab.train(cfg, log=lambda s: None)
    before = os.path.getmtime(os.path.join(cfg.run_dir, "epochs.csv"))
    lines = []
    nslab.train(cfg, log=lines.append)
    assert lines[0].startswith("run folder: ") and "already completed" in lines[1]
    assert os.path.getmtime(os.path.join(cfg.run_dir, "epochs.csv")) == before


def test_other_settings_in_the_same_folder_are_refused_and_nothing_is_lost(tiny):
    cfg = tiny(epochs=1, name="keep")
    nslab.train(cfg, log=lambda s: None)
    snapshot = {f: open(os.path.join(cfg.run_dir, f), "rb").read() for f in ("epochs.csv", "layers.csv", "status.json")}
    with pytest.raises(ValueError, match="holds a run with other settings \\(width: 16 there, 32 here\\)"):
        nslab.train(tiny(epochs=1, name="keep", width=32), log=lambda s: None)
    assert snapshot == {f: open(os.path.join(cfg.run_dir, f), "rb").read() for f in snapshot}


def test_bad_subset_fails_before_anything_is_written(tiny):
    cfg = tiny(train_subset=10_000)
    with pytest.raises(ValueError, match="train_subset=10000 is not allowed"):
        nslab.train(cfg, log=lambda s: None)
    assert not os.path.exists(cfg.run_dir)


def test_bf16_on_cpu_is_refused(tiny):
    with pytest.raises(ValueError, match="bf16=True is not allowed with device='cpu'"):
        tiny(bf16=True)
    if not torch.cuda.is_available():  # 'auto' resolves to the CPU here: refused before any training
        with pytest.raises(ValueError, match="bf16=True is not allowed on device 'cpu'"):
            nslab.train(tiny(bf16=True, device="auto"), log=lambda s: None)


def test_restart_without_checkpoint_starts_afresh(tiny, monkeypatch):
    cfg = tiny(epochs=3, checkpoint_every=5)
    real_epoch, calls = training.train_one_epoch, {"n": 0}

    def crash(limit):
        def epoch(session, **kw):
            calls["n"] += 1
            if calls["n"] > limit:
                raise RuntimeError("simulated crash")
            return real_epoch(session, **kw)
        return epoch

    monkeypatch.setattr(training, "train_one_epoch", crash(2))
    with pytest.raises(RuntimeError):
        nslab.train(cfg, log=lambda s: None)
    assert list(load_run(cfg.run_dir).epochs.epoch) == [1, 2]
    calls["n"] = 0
    monkeypatch.setattr(training, "train_one_epoch", crash(0))
    with pytest.raises(RuntimeError):
        nslab.train(cfg, log=lambda s: None)
    run = load_run(cfg.run_dir)
    assert run.epochs.empty and list(run.layers.epoch.unique()) == [0], "no rows of the earlier attempt are kept"


def test_diverged_run_is_not_trained_again(tiny):
    cfg = tiny(method="none", lr=1e30, epochs=5)
    nslab.train(cfg, log=lambda s: None)
    lines = []
    assert nslab.train(cfg, log=lines.append).status["status"] == "diverged"
    assert "already diverged" in lines[1]


def test_a_run_folder_in_use_is_refused(tiny):
    import fcntl

    cfg = tiny(epochs=1)
    os.makedirs(cfg.run_dir)
    with open(os.path.join(cfg.run_dir, ".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="is in use by another process"):
            nslab.train(cfg, log=lambda s: None)


def test_resume_on_another_device_type_is_refused(tiny):
    cfg = tiny(epochs=1)
    nslab.train(cfg, log=lambda s: None)
    path = os.path.join(cfg.run_dir, "config.json")
    config = json.load(open(path))
    config["device_resolved"] = "cuda:0"
    json.dump(config, open(path, "w"))
    os.remove(os.path.join(cfg.run_dir, "status.json"))  # also: a folder without status.json is read leniently
    with pytest.raises(ValueError, match="was trained on 'cuda' and cannot resume on 'cpu'"):
        nslab.train(cfg, log=lambda s: None)


def test_non_finite_loss_stops_as_diverged_and_keeps_tables(tiny):
    lines = []
    run = nslab.train(tiny(method="none", lr=1e30, epochs=5), log=lines.append)
    assert run.status["status"] == "diverged"
    epoch = run.status["epoch"]
    assert 1 <= epoch < 5 and f"non-finite loss at epoch {epoch}" in run.status["message"]
    assert list(run.epochs.epoch) == list(range(1, epoch + 1))
    assert sorted(run.layers.epoch.unique()) == list(range(epoch))


def test_progress_lines_read_well(tiny):
    lines = []
    run = nslab.train(tiny(epochs=2, name="lines"), log=lines.append)
    # The run folder first (before the data loads), then what is loading, then one line per epoch.
    assert lines[0] == f"run folder: {os.path.abspath(run.run_dir)}"
    assert lines[1].startswith("loading CIFAR-100 from ") and "building mlp2x16 with method none on cpu" in lines[1]
    epochs = [line for line in lines if line.startswith("epoch ")]
    row = run.epochs.iloc[1]
    assert epochs[1] == (f"epoch   2/2  lr 1.0e-03  train loss {row.train_loss:.4f} acc {100 * row.train_acc:5.2f}%  "
                         f"test loss {row.test_loss:.4f} acc {100 * row.test_acc:5.2f}%  {row.seconds:.1f}s")


def test_weight_decay_is_adamw_on_the_weights(tiny):
    """nslab's optimizer with weight_decay equals torch.optim.AdamW (decay on weights of 2+ dims) to 1e-6."""
    cfg = tiny(weight_decay=0.1, lr=0.01)
    session = training.build_session(cfg)
    model, ref = session.model, __import__("copy").deepcopy(session.model)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 100, (8,), generator=g)
        for m, opt in ((model, session.optimizer), (ref, opt_ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert (a - b).abs().max() < 1e-6
    assert isinstance(session.optimizer, torch.optim.AdamW)
    assert isinstance(training.build_session(tiny()).optimizer, torch.optim.Adam)  # weight_decay=0: the seed's Adam


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("none", "frobenius")])
def test_every_spectral_method_records_targets_and_how_far_above_them(tiny, method):
    run = nslab.train(tiny(method=method, epochs=2, name=method), log=lambda s: None)
    assert run.config["target_norm"] == "spectral"
    layers = run.layers
    assert layers.n_above_target.notna().all() and layers.excess.notna().all()
    # n_above_target and excess agree with the recorded spectra (the full singular values)
    for (epoch, layer), rows in run.spectra.groupby(["epoch", "layer"]):
        row = layers[(layers.epoch == epoch) & (layers.layer == layer)].iloc[0]
        assert row.n_above_target == int((rows.sigma > row.target * (1 + 1e-3)).sum())
        assert row.excess == pytest.approx(float((rows.sigma - row.target).clip(lower=0).sum() / row.target))
    if method in ("spectral_clip", "orthogonal"):  # they bound the whole spectrum at every step
        assert (layers.sigma_max <= layers.target * (1 + 2e-3)).all()
    if method == "spectral_norm_param":  # t W / sigma_hat: off the target by exactly its estimate's error
        ratio = layers.sigma_max / layers.target
        assert ((ratio - 1 / (1 - layers.power_iter_rel_err)).abs() < 1e-4).all()
