"""The conv operator in the spatial domain: adjoint, kernel gradient, top triple and the operator correction,
against dense operator matrices and the exact Fourier spectrum."""
import pytest
import torch

from nslab.conv_operator import ConvTopTriple, conv_adjoint, conv_apply, kernel_gradient, operator_correction_
from nslab.conv_spectra import ConvGeometry, conv_operator_norm, conv_singular_values

GEOMETRIES = [  # (out, in, kernel, ConvGeometry)
    (4, 6, 3, ConvGeometry((6, 6), (1, 1), (1, 1))),
    (6, 4, 3, ConvGeometry((8, 8), (2, 2), (1, 1))),  # torchvision's stride-2 3x3
    (6, 4, 1, ConvGeometry((8, 8), (2, 2), (0, 0))),  # torchvision's 1x1 downsample
    (4, 6, 3, ConvGeometry((8, 8), (1, 1), (2, 2), (2, 2))),  # dilation 2
    (6, 4, 3, ConvGeometry((4, 4), (1, 1), (1, 1), (1, 1), 2)),  # groups 2
    (4, 6, 3, ConvGeometry((6, 6), (1, 1), (2, 2))),  # not "same": circular pads (2, 0), only a phase
]


def weight(out, cin, k, groups=1, seed=0, dtype=torch.float64):
    return torch.randn(out, cin // groups, k, k, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dense(w, geo, mode):
    cin = w.shape[1] * geo.groups
    basis = torch.eye(cin * geo.input_size[0] * geo.input_size[1], dtype=w.dtype).view(-1, cin, *geo.input_size)
    return conv_apply(w, basis, geo, mode).reshape(basis.shape[0], -1).T


@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("out, cin, k, geo", GEOMETRIES)
def test_adjoint_and_kernel_gradient(out, cin, k, geo, mode):
    w = weight(out, cin, k, geo.groups)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, cin, *geo.input_size, generator=gen, dtype=torch.float64)
    y = conv_apply(w, x, geo, mode)
    r = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    assert float((y * r).sum()) == pytest.approx(float((x * conv_adjoint(w, r, geo, mode)).sum()), rel=1e-12)
    u, v = r[0], x[0]
    g = kernel_gradient(w, u, v, geo, mode)
    other = weight(out, cin, k, geo.groups, seed=5)
    assert float((g * other).sum()) == pytest.approx(float((u * conv_apply(other, v[None], geo, mode)[0]).sum()),
                                                     rel=1e-12)
    if mode == "zeros":  # the module's own operator
        conv = torch.nn.Conv2d(cin, out, k, geo.stride, geo.padding, geo.dilation, geo.groups, bias=False).double()
        conv.weight.data.copy_(w)
        torch.testing.assert_close(conv(x), y)
    else:  # the spatial circular operator is the one whose spectrum conv_spectra computes
        torch.testing.assert_close(torch.linalg.svdvals(dense(w, geo, mode)),
                                   conv_singular_values(w, **geo.kwargs()), rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("out, cin, k, geo", GEOMETRIES[:3])
def test_top_triple_matches_the_dense_operator(out, cin, k, geo, mode):
    w = weight(out, cin, k, geo.groups, seed=2)
    ref = torch.linalg.svdvals(dense(w, geo, mode))
    est = ConvTopTriple(w, geo, mode, block_size=8, warmup_iters=60, seed=0)
    sigma, u, v = est.estimate()
    assert float(sigma) == pytest.approx(float(ref[0]), rel=1e-6)
    assert u.shape == conv_apply(w, v[None], geo, mode).shape[1:] and float(u.norm()) == pytest.approx(1)
    # a singular pair: A v = sigma u and A^T u = sigma v
    torch.testing.assert_close(conv_apply(w, v[None], geo, mode)[0], sigma * u, rtol=0, atol=1e-4 * float(sigma))
    torch.testing.assert_close(conv_adjoint(w, u[None], geo, mode)[0], sigma * v, rtol=0, atol=1e-6 * float(sigma))


def exact_pair(w, geo, mode):
    """sigma_1, u_1, v_1 from the dense operator's SVD (the trusted reference)."""
    u, s, vh = torch.linalg.svd(dense(w, geo, mode))
    cin = w.shape[1] * geo.groups
    return s[0], u[:, 0].view(w.shape[0], -1), vh[0].view(cin, *geo.input_size)


def correct_with_exact_vectors(w, geo, mode, target, one_sided=False, max_steps=40) -> int:
    """Repeat operator_correction_ with the dense SVD's pair until ||A||_2 is within 1e-3 of target."""
    for step in range(max_steps):
        sigma, u, v = exact_pair(w, geo, mode)
        if abs(float(sigma) - target) <= 1e-3 * target:
            return step
        # convexity: ||A||_2 >= u^T A v = target after any step along an exact pair
        assert step == 0 or float(sigma) >= target * (1 - 1e-12)
        operator_correction_(w, u, v, target, geo, mode, one_sided)
    raise AssertionError(f"||A||_2 = {float(sigma)} not within 1e-3 of {target} after {max_steps} corrections")


@pytest.mark.parametrize("mode", ["circular", "zeros"])
@pytest.mark.parametrize("factor, most", [(0.9, 4), (0.98, 2), (1.2, 2), (0.5, 20)])
@pytest.mark.parametrize("out, cin, k, geo", GEOMETRIES)
def test_corrections_with_exact_vectors_set_the_operator_norm(out, cin, k, geo, mode, factor, most):
    """Measured: 1-4 corrections for targets 0.9-1.2 sigma_1, 3-16 for 0.5 sigma_1."""
    w = weight(out, cin, k, geo.groups, seed=3)
    target = factor * float(exact_pair(w, geo, mode)[0])
    assert correct_with_exact_vectors(w, geo, mode, target) <= most
    if mode == "circular":  # the exact Fourier spectrum agrees with the dense operator
        assert abs(float(conv_singular_values(w, **geo.kwargs())[0]) - target) <= 1e-3 * target


def test_on_a_1x1_conv_the_correction_is_the_matrix_spectral_step():
    w = weight(6, 4, 1, seed=6)
    geo = ConvGeometry((5, 5))
    sigma, u, v = exact_pair(w, geo, "zeros")
    mat = w[:, :, 0, 0]
    uu, ss, vvh = torch.linalg.svd(mat)
    expected = mat + (0.7 * ss[0] - ss[0]) * torch.outer(uu[:, 0], vvh[0])
    operator_correction_(w, u, v, 0.7 * float(sigma), geo, "zeros")
    torch.testing.assert_close(w[:, :, 0, 0], expected, rtol=0, atol=1e-12)


def test_one_sided_correction_only_lowers():
    w = weight(4, 6, 3, seed=7)
    geo = ConvGeometry((6, 6), padding=(1, 1))
    sigma, u, v = exact_pair(w, geo, "circular")
    before = w.clone()
    operator_correction_(w, u, v, 1.1 * float(sigma), geo, "circular", one_sided=True)
    assert torch.equal(w, before)
    correct_with_exact_vectors(w, geo, "circular", 0.9 * float(sigma), one_sided=True)
    assert float(conv_singular_values(w, **geo.kwargs())[0]) == pytest.approx(0.9 * float(sigma), rel=1e-3)


@pytest.mark.parametrize("one_sided", [False, True])
def test_warm_started_projection_holds_the_target_while_the_kernel_drifts(one_sided):
    """The training-loop use: after each perturbation (an optimizer step), one project_ call."""
    w = weight(8, 6, 3, seed=8, dtype=torch.float32)
    geo = ConvGeometry((8, 8), (1, 1), (1, 1), padding_mode="zeros")
    target = 0.8 * float(torch.linalg.svdvals(dense(w.double(), geo, "zeros"))[0])
    est = ConvTopTriple(w, geo, block_size=8, warmup_iters=50)
    buffer = est.block.data_ptr()
    gen = torch.Generator().manual_seed(9)
    for step in range(30):
        est.project_(target if step % 2 else torch.tensor(target), iters=2, one_sided=one_sided)
        w.add_(0.01 * w.norm() / w.numel() ** 0.5 * torch.randn(w.shape, generator=gen))
    est.project_(target, iters=2, one_sided=one_sided)
    after = float(torch.linalg.svdvals(dense(w.double(), geo, "zeros"))[0])
    assert abs(after - target) <= 2e-3 * target
    assert est.block.data_ptr() == buffer  # updated in place (a CUDA graph may hold it)


def test_state_dict_round_trip_and_refusals():
    w = weight(4, 6, 3, seed=10)
    geo = ConvGeometry((6, 6), padding=(1, 1))
    a = ConvTopTriple(w, geo, "circular", warmup_iters=5)
    before = a.block.clone()
    peek = a.estimate(commit=False)
    assert torch.equal(a.block, before) and not a.warmed  # a probe leaves the state alone
    torch.testing.assert_close(a.estimate()[0], peek[0], rtol=0, atol=0)  # the same computation, committed
    assert a.warmed and not torch.equal(a.block, before)
    b = ConvTopTriple(w, geo, "circular", seed=99)
    b.load_state_dict(a.state_dict())
    assert b.warmed and torch.equal(b.block, a.block)
    torch.testing.assert_close(a.estimate()[0], b.estimate()[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="this estimator uses .* 'zeros'"):
        ConvTopTriple(w, geo, "zeros").load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="block_size=0"):
        ConvTopTriple(w, geo, block_size=0)
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        conv_apply(w, torch.zeros(1, 6, 6, 6, dtype=torch.float64), geo, "reflect")
    with pytest.raises(ValueError, match="circular operator needs"):
        conv_apply(w, torch.zeros(1, 6, 6, 6, dtype=torch.float64), ConvGeometry((6, 6), padding=(3, 3)), "circular")
