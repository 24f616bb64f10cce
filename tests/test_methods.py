"""Every scaling method against a torch.linalg.svd reference, on the weights that break naive code:
random, ill-conditioned, rectangular both ways, rank-deficient, conv-shaped and all-zero."""
import math

import pytest
import torch

from nslab.linalg import CUBIC, MUON_QUINTIC, NS_FAST, NS_FINE, matrix_view, msign, spectral_clip
from nslab.methods import METHODS, spectral_targets
from nslab.models import scaled_parameters
from nslab.scaling import NormScaler

T = 1.0  # the target used below (the weights are built around it)


def with_spectrum(m, n, sigmas, seed=0, shape=None):
    """U diag(sigmas) V^T with random orthonormal U (m, r), V (n, r), optionally reshaped (a conv)."""
    g = torch.Generator().manual_seed(seed)
    r = len(sigmas)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    w = ((u * torch.tensor(sigmas, dtype=torch.float64)) @ v.t()).float()
    return w.reshape(shape) if shape else w


CASES = {
    "random-tall": lambda: torch.randn(300, 200, generator=torch.Generator().manual_seed(1)) * 0.12,
    "random-wide": lambda: torch.randn(90, 400, generator=torch.Generator().manual_seed(2)) * 0.12,
    "ill-conditioned": lambda: with_spectrum(160, 120, torch.logspace(0.5, -4, 120).tolist(), seed=3),
    "rank-deficient": lambda: with_spectrum(120, 90, [3, 2.5, 2, 1.5, 1.0005, 0.9995, 0.5, 0.1], seed=4),
    "conv": lambda: with_spectrum(32, 36, torch.linspace(2.5, 0.05, 32).tolist(), seed=5, shape=(32, 4, 3, 3)),
}


def sv(w):
    return torch.linalg.svd(matrix_view(w.detach()).double(), full_matrices=False).S


def apply(method, w, **kw):
    p = torch.nn.Parameter(w.clone())
    scaler = NormScaler([("w", p)], method=method, **kw)
    scaler.method.targets, scaler.method.target_t = [T], [torch.tensor(T)]  # the same target for every case
    scaler.step()
    return p.detach()


def test_newton_schulz_schedule_converges_where_documented():
    x = torch.logspace(-6, 0, 400, dtype=torch.float64)
    x = x[x >= 1.1e-6]
    for a, b, c in [MUON_QUINTIC] * NS_FAST + [CUBIC] * NS_FINE:
        x = a * x + b * x**3 + c * x**5
    assert (x - 1).abs().max() < 1e-3


@pytest.mark.parametrize("case", CASES)
def test_spectral_clip_is_the_projection_onto_the_spectral_ball(case):
    w = CASES[case]()
    before, after = sv(w), sv(apply("spectral_clip", w))
    assert after.max() <= T * (1 + 1e-3)
    expected = before.clamp(max=T)
    # Below t: unchanged to 1e-3 relative, down to float32 rounding of the whole matrix (1e-6 sigma_max).
    below = before < T
    assert ((after - expected).abs() <= 1e-3 * expected + 1e-6 * before.max())[below].all()
    # Above t: at t, except values within 1e-3 of t, which land between themselves and t.
    assert ((after - T).abs() <= 1e-3 * T)[~below].all()


@pytest.mark.parametrize("case", CASES)
def test_orthogonal_sets_every_nonzero_singular_value_to_the_target(case):
    w = CASES[case]()
    after = sv(apply("orthogonal", w))
    # Every one, also the zero singular values of the rank-deficient case (completed: nslab.linalg.complete_polar).
    assert ((after - T).abs() <= 1e-3 * T).all()


def exact_block_scaler(method, w, block):
    """A scaler whose block has converged to the top-`block` singular subspace (warm-up from a random block)."""
    p = torch.nn.Parameter(w.clone())
    scaler = NormScaler([("w", p)], method=method, block_size=block, warmup_iters=400, power_iters=2)
    scaler.method.targets, scaler.method.target_t = [T], [torch.tensor(T)]
    return scaler, p


@pytest.mark.parametrize("above", [5, 12])
def test_spectral_topk_with_exact_vectors_sets_the_top_k_above_target_to_target(above):
    k = 8
    sig = torch.linspace(3.0, 1.5, above).tolist() + torch.linspace(0.9, 0.1, 40).tolist()
    if above > k:  # a gap after the k-th value, so the block converges to exactly the top k
        sig = torch.linspace(3.0, 2.0, k).tolist() + torch.linspace(1.4, 1.2, above - k).tolist() + sig[above:]
    w = with_spectrum(100, 80, sig, seed=6)
    scaler, p = exact_block_scaler("spectral_topk", w, k)
    scaler.step()
    before, after = torch.tensor(sorted(sig, reverse=True), dtype=torch.float64), sv(p)[:len(sig)]
    changed = min(above, k)
    expected = torch.cat([torch.full((changed,), T, dtype=torch.float64), before[changed:]]).sort(descending=True).values
    assert torch.allclose(after, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_spectral_cap_never_raises_sigma_1(case):
    w = CASES[case]() * 0.2  # sigma_1 below the target
    scaler, p = exact_block_scaler("spectral_cap", w, 8)
    for _ in range(3):
        scaler.step()
        assert torch.allclose(sv(p), sv(w), rtol=1e-5, atol=1e-6)  # nothing above t: nothing changes


def test_spectral_cap_lowers_sigma_1_to_the_target_along_its_vectors():
    w = with_spectrum(60, 50, [2.0, 0.8, 0.5, 0.2], seed=7)
    scaler, p = exact_block_scaler("spectral_cap", w, 4)
    scaler.step()
    assert torch.allclose(sv(p)[:4], torch.tensor([1.0, 0.8, 0.5, 0.2], dtype=torch.float64), atol=1e-5)


def test_spectral_norm_param_effective_weight_is_at_target_to_its_power_iteration_error():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 30, bias=False), torch.nn.ReLU(), torch.nn.Linear(30, 10, bias=False))
    with torch.no_grad():  # spectra with a gap (sigma_2 / sigma_1 = 0.7), so 30 power iterations converge
        model[0].weight.copy_(with_spectrum(30, 40, [2.0, 1.4, 1.0, 0.5], seed=10))
        model[2].weight.copy_(with_spectrum(10, 30, [3.0, 2.1, 0.3], seed=11))
    params = scaled_parameters(model)
    raw = [p for _, p in params]
    scaler = NormScaler(params, method="spectral_norm_param", model=model)
    x = torch.randn(8, 40)
    for steps in (1, 30):
        for _ in range(steps):
            model(x)  # training mode: one power iteration per forward
        est = scaler.estimate_sigmas()
        for w_eff, w_raw, t, s_hat in zip(scaler.probe_weights(), raw, scaler.targets, est):
            exact = float(sv(w_raw)[0])
            # W_eff = t W / sigma_hat: its sigma_max is t * sigma / sigma_hat, off by the estimate's error
            assert abs(float(sv(w_eff)[0]) - t * exact / s_hat) <= 1e-5 * t
    for w_eff, t in zip(scaler.probe_weights(), scaler.targets):  # after 30 warm iterations: converged
        assert abs(float(sv(w_eff)[0]) - t) <= 1e-3 * t


@pytest.mark.parametrize("method", [m for m in METHODS if m != "spectral_norm_param"])
def test_every_method_handles_zero_and_rank_deficient_weights(method):
    zero = torch.nn.Parameter(torch.zeros(20, 30))
    deficient = torch.nn.Parameter(with_spectrum(40, 30, [2.0, 1.0], seed=8))
    scaler = NormScaler([("zero", zero), ("deficient", deficient)], method=method, warmup_iters=50)
    for _ in range(5):
        scaler.step()
    assert torch.isfinite(zero).all() and torch.isfinite(deficient).all()
    if method == "spectral":  # two-sided: the zero weight is raised to its target along re-seeded directions
        assert abs(float(sv(zero)[0]) - scaler.targets[0]) < 1e-4
    elif method == "orthogonal":  # every singular value to the target, a zero weight completed at random
        assert torch.allclose(sv(zero), torch.full((20,), scaler.targets[0], dtype=torch.float64), rtol=1e-3)
    else:  # the others never raise a zero weight
        assert float(sv(zero)[0]) < 1e-6


def test_a_vision_transformers_zero_class_token_is_found_and_scaled_rules_for_user_models():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=64, mlp_dim=128,
                            num_classes=10)
    names = [n for n, _ in scaled_parameters(vit)]
    assert "class_token" in names and "encoder.pos_embedding" in names  # rule "all" takes them (documented)
    scaler = NormScaler(scaled_parameters(vit), method="spectral")
    i = scaler.names.index("class_token")
    assert scaler.targets[i] == pytest.approx(0.125)  # (1, 1, 64) viewed as (1, 64)
    for _ in range(3):
        scaler.step()
    assert float(sv(scaler.weights[i])[0]) == pytest.approx(0.125, rel=1e-4)  # zero at init, corrected
    layers = [n for n, _ in scaled_parameters(vit, "layers")]
    assert "class_token" not in layers and "encoder.pos_embedding" not in layers
    assert "conv_proj.weight" in layers and "heads.head.weight" in layers


def test_channels_targets_use_conv_channels():
    conv, lin = torch.zeros(64, 16, 3, 3), torch.zeros(10, 40)
    assert spectral_targets([conv, lin], "channels") == [2.0, math.sqrt(10 / 40)]
    assert spectral_targets([conv, lin], "per_layer") == [math.sqrt(64 / 144), math.sqrt(10 / 40)]


def test_batched_projection_equals_one_layer_at_a_time():
    ws = [with_spectrum(50, 40, torch.linspace(3, 0.1, 40).tolist(), seed=s) for s in range(3)]
    params = [(f"w{i}", torch.nn.Parameter(w.clone())) for i, w in enumerate(ws)]
    NormScaler(params, method="spectral_clip").step()  # three same-shape layers: one batched launch
    for (_, p), w in zip(params, ws):
        single = spectral_clip(w, torch.tensor(math.sqrt(50 / 40)))
        assert torch.allclose(p.detach(), single, atol=1e-6)
    assert torch.allclose(msign(ws[0][None])[0], msign(ws[0]), atol=1e-6)
