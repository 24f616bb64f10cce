"""Models: shapes, and the init norms the blog states, checked with torch.linalg."""
import math

import pytest
import torch

from nslab.models import build_model, init_orthogonal_, matrix_shape, mlp, scaled_parameters


def test_mlp_shapes_follow_depth_and_width():
    net = mlp(5, 2000)
    shapes = [tuple(p.shape) for _, p in scaled_parameters(net)]
    assert shapes == [(2000, 3072), (2000, 2000), (2000, 2000), (2000, 2000), (100, 2000)]
    assert all(m.bias is None for m in net if isinstance(m, torch.nn.Linear))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert [tuple(p.shape) for _, p in scaled_parameters(mlp(1, 7))] == [(100, 3072)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_cifar_resnet_stem_and_head(name):
    net = build_model(name)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.out_channels == 64
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net.fc.out_features == 100
    net.eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


def test_scale_rules():
    net = build_model("resnet18")
    everything = {n for n, _ in scaled_parameters(net, "all")}
    seed = {n for n, _ in scaled_parameters(net, "seed")}
    assert "layer2.0.downsample.0.weight" in everything and "layer2.0.downsample.0.weight" not in seed
    assert "fc.weight" in seed and "conv1.weight" in seed
    assert not any("bn" in n or "bias" in n for n in everything | seed)
    with pytest.raises(ValueError, match="scale_rule='some' is not allowed"):
        scaled_parameters(net, "some")


@pytest.mark.parametrize("shape", [(64, 300), (300, 64), (100, 100), (32, 16, 3, 3), (8, 64, 3, 3)])
def test_init_sets_spectral_and_frobenius_norms(shape):
    w = torch.nn.Parameter(torch.empty(shape, dtype=torch.float64))
    init_orthogonal_([("w", w)], torch.Generator().manual_seed(0))
    d_out, d_in = matrix_shape(w)
    m = w.detach().reshape(d_out, -1)
    assert torch.linalg.matrix_norm(m, 2).item() == pytest.approx(math.sqrt(d_out / d_in), rel=1e-10)
    assert torch.linalg.matrix_norm(m, "fro").item() == pytest.approx(
        math.sqrt(min(d_out, d_in) * d_out / d_in), rel=1e-10)
