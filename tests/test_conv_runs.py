"""Convolutions as operators in real runs: probes beside the reshape, the operator correction, resume."""
import math

import pytest
import torch

import nslab
from nslab.conv_spectra import conv_geometry, conv_singular_values
from nslab.models import build_model, init_orthogonal_, scaled_parameters
from nslab.scaling import NormScaler


def test_a_resnet18_run_records_operator_norms_beside_the_reshape(tiny):
    cfg = tiny(model="resnet18", method="spectral", conv_norm="operator", epochs=2, train_subset=32,
               test_subset=16, batch_size=16, op_spectra_every=2, spectra_every=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the operator probes are large batched SVDs and FFTs (tests default to 1 thread)
    try:
        run = nslab.train(cfg, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    layers = run.layers
    conv = layers[layers["shape"].str.count("x") == 3]
    head = layers[layers.layer == "fc.weight"]
    assert len(conv) == 3 * 20 and conv.op_sigma_max.notna().all() and conv.op_stable_rank.notna().all()
    assert head.op_sigma_max.isna().all()  # a Linear layer is its own operator: the column is for convs
    # At init (orthogonal reshape) a stride-1 3x3 conv's operator norm is ~1.9x its reshape's (measured).
    init = conv[conv.epoch == 0].set_index("layer")
    ratio = init.op_sigma_max / init.sigma_max
    assert 1.8 < ratio["layer1.0.conv1.weight"] < 2.0 and ratio["conv1.weight"] == pytest.approx(3.0, rel=1e-4)
    assert ratio["layer2.0.downsample.0.weight"] == pytest.approx(1.0, rel=1e-4)  # 1x1: the operator is the matrix
    # The full operator spectrum (op_spectra_every) tops out at op_sigma_max (Lanczos, 32 steps).
    ops = run.op_spectra
    assert sorted(ops.epoch.unique()) == [0, 2]
    top = ops[ops["index"] == 0].set_index(["epoch", "layer"]).sigma
    fro2 = (ops.sigma ** 2).groupby([ops.epoch, ops.layer]).sum()
    for (epoch, layer), sigma in top.items():
        row = conv[(conv.epoch == epoch) & (conv.layer == layer)].iloc[0]
        assert row.op_sigma_max == pytest.approx(sigma, rel=1e-4)
        assert row.op_stable_rank == pytest.approx(fro2[epoch, layer] / sigma**2, rel=1e-6)
    # Between spectra epochs op_sigma_max comes from Lanczos: above 1.8x the reshape's for stride-1 3x3 convs.
    mid = conv[conv.epoch == 1].set_index("layer")
    assert (mid.op_sigma_max / mid.sigma_max)["layer1.0.conv1.weight"] > 1.5
    # Operator-corrected convs: estimate error measured against the operator norm, no matrix n_above_target.
    assert conv.power_iter_rel_err.notna().all() and conv.n_above_target.isna().all()
    assert head.n_above_target.notna().all()
    # alpha only on spectra epochs (NaN on a flat init spectrum: the orthogonal init has one value)
    assert layers[layers.epoch == 1].alpha.isna().all() and layers[layers.epoch == 2].alpha.notna().any()


def test_operator_correction_reaches_the_target_as_steps_repeat():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False))
    params = scaled_parameters(model)
    scaler = NormScaler(params, method="spectral", conv_norm="operator", model=model, image_size=8, targets="channels")
    geometry = conv_geometry(model, 8)
    for _ in range(40):
        scaler.step()
    for (name, w), t in zip(params, scaler.targets):
        exact = float(conv_singular_values(w.detach(), **geometry[name].kwargs())[0])
        assert abs(exact - t) <= 1e-3 * t


def test_operator_state_round_trip_reproduces_the_next_step_exactly():
    torch.manual_seed(1)
    model = build_model("resnet18")
    init_orthogonal_(scaled_parameters(model), torch.Generator().manual_seed(1))
    twin = build_model("resnet18")
    twin.load_state_dict(model.state_dict())
    a = NormScaler(scaled_parameters(model), method="spectral_cap", conv_norm="operator", model=model)
    a.step()
    b = NormScaler(scaled_parameters(twin), method="spectral_cap", conv_norm="operator", model=twin, seed=7)
    twin.load_state_dict(model.state_dict())
    b.load_state_dict(a.state_dict())
    for s, m in ((a, model), (b, twin)):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1.5)  # above every target: the one-sided step acts
        s.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_operator_norm_only_where_it_is_defined():
    with pytest.raises(ValueError, match="conv_norm='operator' is not allowed with method='spectral_clip'"):
        nslab.RunConfig(method="spectral_clip", conv_norm="operator")
    with pytest.raises(ValueError, match="conv_norm='operator' is not allowed with warm_start=False"):
        nslab.RunConfig(method="spectral", conv_norm="operator", warm_start=False)
    with pytest.raises(ValueError, match="conv_norm='rotated' is not allowed"):
        nslab.RunConfig(conv_norm="rotated")
    assert math.isclose(nslab.RunConfig(method="spectral_cap", conv_norm="operator").power_iters, 2)
