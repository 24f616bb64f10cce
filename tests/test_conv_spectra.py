"""Conv operator spectra against the dense operator matrix, built by applying the conv to every basis input."""
import math

import pytest
import torch
import torch.nn.functional as F

from nslab.conv_spectra import (ConvGeometry, conv_geometry, conv_operator_frobenius, conv_operator_norm,
                                conv_operator_norms, conv_operator_stats, conv_singular_values, lanczos_top)
from nslab.models import build_model, init_orthogonal_, scaled_parameters


def dense_operator(k: torch.Tensor, n: int, stride: int, padding: int, dilation: int, groups: int,
                   mode: str) -> torch.Tensor:
    """The matrix (out*ho*wo, in*n*n) of the conv: column j is the conv of the j-th basis input."""
    cin = k.shape[1] * groups
    basis = torch.eye(cin * n * n, dtype=k.dtype).view(-1, cin, n, n)
    if mode == "circular":
        out = F.conv2d(F.pad(basis, (padding,) * 4, mode="circular"), k, None, stride, 0, dilation, groups)
    else:
        out = F.conv2d(basis, k, None, stride, padding, dilation, groups)
    return out.reshape(basis.shape[0], -1).T


def kernel(out, cin, ksize, seed=0):
    return torch.randn(out, cin, ksize, ksize, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# n, (out, in), kernel, stride, dilation, groups: n = 4..8, 1x1 and 3x3, stride 1 and 2
CASES = [(n, ch, ks, 1, 1, 1) for n in (4, 5, 6, 7, 8) for ch in ((3, 5), (6, 2), (4, 4)) for ks in (1, 3)]
CASES += [(n, ch, ks, 2, 1, 1) for n in (4, 6, 8) for ch in ((3, 5), (6, 2), (4, 4)) for ks in (1, 3)]
CASES += [(8, (4, 6), 3, 1, 2, 1), (8, (4, 6), 3, 2, 2, 1), (6, (4, 6), 3, 1, 1, 2), (8, (6, 4), 3, 2, 1, 2),
          (2, (3, 3), 3, 1, 1, 1),  # a 3x3 kernel on a 2x2 input: taps wrap around and add up
          (4, (3, 3), 3, 1, 2, 1)]  # dilation 2 on 4x4: taps 0 and 4 land on the same input


@pytest.mark.parametrize("n, ch, ks, stride, dilation, groups", CASES)
def test_circular_spectrum_equals_dense_operator(n, ch, ks, stride, dilation, groups):
    out, cin = ch
    k = kernel(out, cin // groups, ks, seed=n * 100 + ks)
    pad = dilation * (ks - 1) // 2
    a = dense_operator(k, n, stride, pad, dilation, groups, "circular")
    ref = torch.linalg.svdvals(a)
    for method in ("svd", "gram"):
        got = conv_singular_values(k, n, stride, pad, dilation, groups, "circular", method)
        assert got.shape == ref.shape  # the whole spectrum: min(out*ho*wo, in*n*n) values
        assert torch.all(got[:-1] >= got[1:])
        torch.testing.assert_close(got, ref, rtol=0, atol=(1e-12 if method == "svd" else 1e-7) * float(ref[0]))
    fro = conv_operator_frobenius(k, n, stride, pad, dilation, groups, "circular")
    assert fro == pytest.approx(float(torch.linalg.matrix_norm(a)), rel=1e-12)
    top = conv_operator_norm(k, n, stride, pad, dilation, groups, "circular")
    assert float(top) == pytest.approx(float(ref[0]), rel=1e-9)


def test_frobenius_is_n2_times_kernel_norm_for_stride_1():
    """||A||_F^2 = n*n*||K||_F^2 for circular stride 1 (and (n/s)^2 ||K||_F^2 for stride s)."""
    k = kernel(8, 5, 3)
    for n, s in ((8, 1), (7, 1), (8, 2)):
        fro = conv_operator_frobenius(k, n, stride=s, padding=1)
        assert fro**2 == pytest.approx((n // s) ** 2 * float((k**2).sum()), rel=1e-12)


@pytest.mark.parametrize("n, ch, ks, stride", [(4, (3, 5), 3, 1), (6, (6, 2), 3, 1), (8, (4, 4), 3, 1),
                                               (8, (4, 6), 3, 2), (6, (5, 3), 3, 2), (8, (4, 3), 1, 2),
                                               (7, (4, 3), 1, 1)])
def test_zero_padding_bound_holds_value_by_value(n, ch, ks, stride):
    k = kernel(*ch, ks, seed=7)
    pad = (ks - 1) // 2
    a = dense_operator(k, n, stride, pad, 1, 1, "zeros")
    ref = torch.linalg.svdvals(a)
    bound = conv_singular_values(k, n, stride, pad, 1, 1, "zeros")
    assert torch.all(ref <= bound[: ref.numel()] + 1e-12 * float(ref[0]))
    if ks == 1:  # no tap reads padding: zero padding is the circular operator
        torch.testing.assert_close(bound, ref, rtol=0, atol=1e-12 * float(ref[0]))
    assert conv_operator_frobenius(k, n, stride, pad, 1, 1, "zeros") == pytest.approx(
        float(torch.linalg.matrix_norm(a)), rel=1e-12)


def test_zero_padding_differs_from_circular_and_the_bound_is_tight_at_init():
    """At n = 8 with an orthogonal init, ||A_zeros|| lies between circular-at-n and the bound (measured)."""
    k = torch.empty(16, 16, 3, 3, dtype=torch.float64)
    torch.nn.init.orthogonal_(k, generator=torch.Generator().manual_seed(0))
    zero = float(torch.linalg.matrix_norm(dense_operator(k, 8, 1, 1, 1, 1, "zeros"), 2))
    circ = float(conv_operator_norm(k, 8, padding=1, padding_mode="circular"))
    bound = float(conv_operator_norm(k, 8, padding=1, padding_mode="zeros"))
    assert zero <= bound * (1 + 1e-12)
    assert abs(zero - circ) / zero < 0.2 and (bound - zero) / zero < 0.2


def test_lanczos_top_is_exact_on_orthogonal_init_blocks():
    """Flat spectra (orthogonal init) are the hard case for power iteration; 32 Lanczos steps suffice."""
    k = torch.empty(64, 64, 3, 3)
    torch.nn.init.orthogonal_(k, generator=torch.Generator().manual_seed(1))
    exact = conv_singular_values(k.double(), 8, padding=1)[0]
    est = conv_operator_norm(k, 8, padding=1)
    assert est.dtype == torch.float32 and est.dim() == 0
    assert abs(float(est) - float(exact)) / float(exact) < 1e-5
    blocks = torch.randn(5, 40, 70, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    ref = torch.linalg.svdvals(blocks)[:, 0]
    got = lanczos_top(blocks, 32, torch.Generator().manual_seed(0))
    assert torch.all(got <= ref * (1 + 1e-12))  # Ritz values never exceed sigma_1
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)


def test_operator_stats_for_a_model_match_dense_operators():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
                                torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
                                torch.nn.Conv2d(6, 5, 1, bias=False)).double()
    geo = conv_geometry(model, 6)
    assert [g.input_size for g in geo.values()] == [(6, 6), (6, 6), (3, 3)]
    weights = dict(model.named_parameters())
    stats = conv_operator_stats(weights, geo)
    for name, w in weights.items():
        g = geo[name]
        a = dense_operator(w.detach(), g.input_size[0], g.stride[0], g.padding[0], 1, 1, "circular")
        ref = torch.linalg.svdvals(a)
        assert stats[name]["op_sigma_max"] == pytest.approx(float(ref[0]), rel=1e-6)
        assert stats[name]["op_stable_rank"] == pytest.approx(float((ref**2).sum() / ref[0] ** 2), rel=1e-5)


def test_lanczos_stops_where_the_krylov_space_is_exhausted():
    """A 1x1 orthogonal conv has flat blocks: continuing past the breakdown read rounding noise (2.7e-5 too high)."""
    k = torch.empty(128, 64, 1, 1)
    torch.nn.init.orthogonal_(k, generator=torch.Generator().manual_seed(3))
    k *= math.sqrt(2)
    exact = float(conv_operator_norm(k, 8, stride=2, steps=None))
    assert exact == pytest.approx(math.sqrt(2), rel=1e-6)
    assert float(conv_operator_norm(k, 8, stride=2)) == pytest.approx(exact, rel=1e-6)


def test_resnet18_geometry_and_operator_over_reshape_at_init():
    model = build_model("resnet18")
    names = ("layer3.1.conv2.weight", "layer3.0.downsample.0.weight", "layer3.0.conv1.weight")
    weights = {n: p for n, p in model.named_parameters() if n in names}
    init_orthogonal_(list(weights.items()), torch.Generator().manual_seed(1))
    model.train()
    bn_before = model.bn1.running_mean.clone()
    geo = conv_geometry(model, 32)
    assert model.training and model.layer1[0].training  # restored
    assert torch.equal(model.bn1.running_mean, bn_before)  # eval mode: statistics untouched
    convs = [n for n, p in model.named_parameters() if p.dim() == 4]
    assert list(geo) == convs and len(geo) == 20
    assert geo["conv1.weight"] == ConvGeometry((32, 32), (1, 1), (1, 1), (1, 1), 1, "zeros")
    assert geo["layer2.0.conv1.weight"].input_size == (32, 32) and geo["layer2.0.conv1.weight"].stride == (2, 2)
    assert geo["layer2.0.downsample.0.weight"] == ConvGeometry((32, 32), (2, 2), (0, 0), (1, 1), 1, "zeros")
    assert geo["layer4.1.conv2.weight"].input_size == (4, 4)
    exact = conv_operator_norms(weights, geo, steps=None)
    for name, w in weights.items():
        # ||W_reshape||_2 <= ||A||_2 (one input patch) <= sqrt(taps sharing an input phase) ||W_reshape||_2:
        # the blocks are W times a phase matrix; 9 for stride 1, 4 for a stride-2 3x3, 1 for 1x1 convs
        s = geo[name].stride[0]
        bound = math.sqrt(math.ceil(w.shape[2] / s) * math.ceil(w.shape[3] / s))
        ratio = float(exact[name]) / float(torch.linalg.matrix_norm(w.detach().flatten(1), 2))
        assert 1 - 1e-5 <= ratio <= bound * (1 + 1e-5)
    # at init the reshape's sigma_max is sqrt(256/2304) = 1/3; the 3x3 operator's is 1.9 times that (measured)
    assert 1.8 < float(exact["layer3.1.conv2.weight"]) * 3 < 2.0


def test_channels_last_and_float32_agree_with_float64():
    k = kernel(8, 6, 3, seed=3)
    ref = conv_singular_values(k, 8, 2, 1)
    got = conv_singular_values(k.float().to(memory_format=torch.channels_last), 8, 2, 1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5 * float(ref[0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight=torch.zeros(4, 4)), "weight=(4, 4)"),
    (dict(input_size=0), "input_size=0"),
    (dict(stride=0), "stride=0"),
    (dict(padding=-1), "padding=-1"),
    (dict(groups=3), "groups=3"),
    (dict(padding_mode="reflect"), "padding_mode='reflect'"),
    (dict(method="eig"), "method='eig'"),
    (dict(input_size=7, stride=2), "divisible by the stride"),
    (dict(input_size=1, padding=0), "too small"),
])
def test_bad_input_is_refused_with_the_parameter_named(kwargs, message):
    args = dict(weight=torch.zeros(4, 2, 3, 3), input_size=8, stride=1, padding=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        conv_singular_values(**args)


def test_geometry_refuses_a_conv_seen_at_two_sizes():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    class Twice(torch.nn.Module):
        def forward(self, x):
            return conv(F.avg_pool2d(conv(x), 2))

    model = Twice()
    model.conv = conv
    with pytest.raises(ValueError, match="applied to inputs of sizes"):
        conv_geometry(model, 8)
    assert conv._forward_pre_hooks == {}  # hooks removed even on error


@pytest.mark.slow
def test_op_probe_cost_benchmark_smoke(tmp_path):
    """About 10 s of CPU: a ResNet18 with its orthogonal init, one conv layer, alpha of a tiny MLP."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = tmp_path / "op.json"
    res = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "op_probe_cost.py"), "--model", "resnet18",
                          "--only", "layer1.0.conv1", "--repeats", "1", "--zeros-iters", "3", "--alpha", "mlp2x64",
                          "--json", str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    result = json.load(open(out))
    (row,) = result["layers"]
    assert row["layer"] == "layer1.0.conv1.weight" and 1 <= row["ratio_circular"] <= 3
    assert row["op_zeros"] <= row["op_zeros_bound"] * (1 + 1e-6)
    assert result["cost"]["lanczos_max_rel_err"] < 1e-5 and result["cost"]["layers"] == 1
    assert [r["layer"] for r in result["alpha"]] == ["1.weight", "3.weight"]  # Flatten, Linear, ReLU, Linear
