"""nslab.scaling against torch.linalg: every path keeps the invariant it promises."""
import pytest
import torch

from nslab.scaling import NormScaler, gram_power_iteration, matrix_view, orthonormalize


def with_spectrum(m: int, n: int, sigmas, seed: int = 0) -> torch.Tensor:
    """U diag(sigmas) V^T with random orthonormal U (m, r), V (n, r)."""
    g = torch.Generator().manual_seed(seed)
    r = len(sigmas)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    return ((u * torch.tensor(sigmas, dtype=torch.float64)) @ v.t()).float()


def clustered(m: int = 300, n: int = 200, seed: int = 0) -> torch.Tensor:
    """sigma_2 / sigma_1 = 0.997, then a decaying tail."""
    r = min(m, n)
    return with_spectrum(m, n, [1.0, 0.997] + torch.linspace(0.9, 0.05, r - 2).tolist(), seed)


def scaler_for(w: torch.Tensor, **kw) -> tuple[NormScaler, torch.nn.Parameter]:
    p = torch.nn.Parameter(w.clone())
    return NormScaler([("w", p)], **kw), p


def exact_sigma(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix_view(w.detach()).double(), 2))


def test_frobenius_norm_equals_target_after_a_step():
    g = torch.Generator().manual_seed(0)
    # A layer of the quick preset's size: float32 accumulation alone is off by ~2e-5 there.
    params = [("a", torch.nn.Parameter(torch.randn(30, 20, generator=g))),
              ("conv", torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=g))),
              ("big", torch.nn.Parameter(torch.randn(512, 3072, generator=g) * 0.01))]
    scaler = NormScaler(params, method="frobenius")
    targets = [float(torch.linalg.vector_norm(p.detach().double())) for _, p in params]
    with torch.no_grad():
        for _, p in params:
            p.mul_(3.7).add_(0.1)
    scaler.step()
    for (_, p), t in zip(params, targets):
        assert abs(float(torch.linalg.vector_norm(p.detach().double())) - t) / t < 1e-6


@pytest.mark.parametrize("warm_start", [True, False])
def test_spectral_step_with_exact_vectors_sets_target_along_old_top(warm_start):
    sig = [2.0, 1.5, 1.2, 0.7, 0.3]
    w = with_spectrum(12, 9, sig, seed=1)
    scaler, p = scaler_for(w, method="spectral", warm_start=warm_start, power_iters=500, block_size=5,
                           power_precision="float32")  # exact vectors (bfloat16 products: to ~1e-3)
    t = scaler.targets[0]  # sqrt(12/9) = 1.155 < sigma_2: the regime where sigma_2 stays above target
    u, s, vh = torch.linalg.svd(w.double())
    scaler.step()
    new = p.detach().double()
    after = torch.linalg.svdvals(new)
    expected = sorted([t] + sig[1:], reverse=True)
    assert torch.allclose(after[:5], torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    # (u_1, v_1) is still a singular pair, now with value t
    assert torch.allclose(new @ vh[0], t * u[:, 0], atol=1e-5)
    assert torch.allclose(new.t() @ u[:, 0], t * vh[0], atol=1e-5)


@pytest.mark.parametrize("make", [lambda: clustered(), lambda: clustered(200, 300, seed=3),
                                  lambda: torch.randn(256, 256, generator=torch.Generator().manual_seed(2))],
                         ids=["clustered-tall", "clustered-wide", "gaussian"])
def test_block_estimate_matches_matrix_norm_after_warm_up(make):
    w = make()
    scaler, p = scaler_for(w, method="spectral", warmup_iters=100)
    est = scaler.estimate_sigmas()[0]
    assert abs(est - exact_sigma(p)) / exact_sigma(p) < 1e-3


def test_block_finds_the_true_top_after_a_correction():
    """sigma_2 > target: a single warm vector stays on the corrected direction; the block does not."""
    sig = [3.0, 2.5, 2.0] + torch.linspace(1.5, 0.1, 97).tolist()
    w = with_spectrum(150, 100, sig, seed=4)
    fast, p_fast = scaler_for(w, method="spectral", warmup_iters=100)
    naive, p_naive = scaler_for(w, method="spectral", block_size=1, warmup_iters=100, power_iters=2)
    for scaler, p in ((fast, p_fast), (naive, p_naive)):
        scaler.step()  # corrects sigma_1 = 3.0 to the target 1.22
    assert abs(exact_sigma(p_fast) - 2.5) < 1e-4
    for _ in range(3):  # each step then corrects the current top: 2.5, then 2.0, then 1.5
        est = fast.estimate_sigmas()[0]
        assert abs(est - exact_sigma(p_fast)) / exact_sigma(p_fast) < 1e-3
        fast.step()
    assert abs(exact_sigma(p_fast) - sig[4]) / sig[4] < 1e-3  # the next value of the tail
    # the naive warm start keeps "correcting" the direction it already set to target
    est_naive = naive.estimate_sigmas()[0]
    assert abs(est_naive - exact_sigma(p_naive)) / exact_sigma(p_naive) > 0.1


@pytest.mark.parametrize("shape, precision", [((300, 200), "float32"), ((512, 1024), "bfloat16")])
def test_state_dict_round_trip_reproduces_the_next_step_exactly(shape, precision):
    w = with_spectrum(*shape, [1.0, 0.997] + torch.linspace(0.9, 0.05, 198).tolist(), seed=5)
    a, pa = scaler_for(w, method="spectral", power_precision=precision)
    a.step()
    state = a.state_dict()
    b, pb = scaler_for(pa.detach(), method="spectral", seed=99, power_precision=precision)
    b.load_state_dict(state)
    assert b.warmed
    for s in (a, b):
        for _ in range(3):
            with torch.no_grad():
                s.weights[0].add_(0.01)
            s.step()
    assert torch.equal(pa.detach(), pb.detach())


def test_state_dict_round_trip_keeps_the_estimator_state_bit_for_bit():
    """A resumed run repeats the uninterrupted one only if every block comes back as saved (renormalising
    the random re-seeding blocks on load changed their last bits; a killed 3x512 run then diverged)."""
    g = torch.Generator().manual_seed(3)
    params = [("a", torch.nn.Parameter(torch.randn(512, 3072, generator=g) / 55)),
              ("b", torch.nn.Parameter(torch.randn(512, 512, generator=g) / 22))]
    a = NormScaler(params)
    a.step()
    b = NormScaler(params, seed=7)
    b.load_state_dict(a.state_dict())
    ea, eb = a.method.estimator, b.method.estimator
    for x, y in zip(ea.blocks + ea.noise[0] + ea.noise[1], eb.blocks + eb.noise[0] + eb.noise[1]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("gap", [0.5, 0.9])
def test_seed_procedure_estimates_sigma_1_as_its_docstring_promises(gap):
    """500 cold iterations on W^T W: the error falls as (sigma_2/sigma_1)^(2*500); at these gaps it is
    below float32 rounding, so the estimate equals torch.linalg.matrix_norm(W, 2) to 1e-5."""
    sig = [2.0, 2.0 * gap] + torch.linspace(0.9, 0.05, 98).tolist()
    w = with_spectrum(150, 100, sig, seed=6)
    scaler, p = scaler_for(w, method="spectral", warm_start=False, power_iters=500, seed=3)
    est = scaler.estimate_sigmas()[0]
    assert abs(est - exact_sigma(p)) / exact_sigma(p) < 1e-5
    scaler.step()  # the correction puts the target where sigma_1 was: sigma_2 is now the top
    assert abs(exact_sigma(p) - max(sig[1], scaler.targets[0])) < 1e-4
    sigma, u, v = gram_power_iteration(w, torch.nn.functional.normalize(torch.ones(100), dim=0), 500)
    assert abs(float(sigma) - 2.0) < 1e-5 and abs(float(torch.linalg.vector_norm(u)) - 1) < 1e-5


def test_conv_and_channels_last_weights_are_scaled_in_place():
    g = torch.Generator().manual_seed(7)
    conv = torch.nn.Parameter(torch.randn(16, 4, 3, 3, generator=g))
    cl = torch.nn.Parameter(conv.detach().clone().contiguous(memory_format=torch.channels_last))
    for p in (conv, cl):
        s = NormScaler([("c", p)], method="spectral", warmup_iters=200)
        for _ in range(30):
            s.step()
        assert abs(exact_sigma(p) - s.targets[0]) / s.targets[0] < 1e-3  # only 16 rows: all get corrected


def test_orthonormalize_gives_orthonormal_columns():
    y = torch.randn(100, 8, generator=torch.Generator().manual_seed(8))
    q = orthonormalize([y])[0]
    assert torch.allclose(q.t() @ q, torch.eye(8), atol=1e-5)
    assert torch.linalg.matrix_rank(torch.cat([q, y], 1)) == 8  # same span


def test_bad_arguments_are_rejected():
    p = [("w", torch.nn.Parameter(torch.randn(4, 4)))]
    with pytest.raises(ValueError, match="block_size=0"):
        NormScaler(p, block_size=0)
    with pytest.raises(ValueError, match="cuda_graph=True is not allowed"):
        NormScaler(p, cuda_graph=True)
    state = NormScaler(p, block_size=2).state_dict()
    with pytest.raises(ValueError, match="another power_block"):
        NormScaler(p, block_size=3).load_state_dict(state)


def _hard_regime_errors(power_iters: int, capture_block: bool = False, n: int = 256, steps: int = 60,
                        precision: str = "float32") -> list[float]:
    """The spectral-family issue's hard regime, replayed through NormScaler: the top quarter of the
    spectrum a cluster within 1 % above the target; each step an Adam-like sign update raises many
    values, then the scaler corrects one. Errors of the estimate the step uses, against svdvals."""
    from nslab.bench import clustered_start

    t, g = 0.4, torch.Generator().manual_seed(1)
    scaler, p = scaler_for(clustered_start(n, t, n // 4, torch.Generator().manual_seed(0)), method="spectral",
                           power_iters=power_iters, warmup_iters=10, power_precision=precision)
    scaler.method.targets, scaler.method.target_t = [t], [torch.tensor(t)]
    if capture_block:  # the estimator a captured CUDA graph uses: next block orth(W^T W V), no eigh
        scaler.method.estimator.ritz_blocks = False
    errors = []
    for step in range(steps):
        with torch.no_grad():
            p.add_(3e-5 * torch.sign(torch.randn(n, n, generator=g)))
        est = scaler.estimate_sigmas()[0]
        if step >= steps // 3:
            errors.append((exact_sigma(p) - est) / exact_sigma(p))
        scaler.step()
    assert min(errors) >= -1e-6  # a Ritz value never exceeds sigma_1
    return errors


def test_the_estimate_in_the_hard_regime_is_within_1e_3_at_3_iterations():
    """Block Krylov Ritz values and top-Ritz-vector blocks: the default 2 iterations several times better
    than the estimator before (orth(W^T W V) blocks, 5e-3 here), 3 iterations within the 1e-3 goal."""
    before, two, three = (max(_hard_regime_errors(2, capture_block=True)), max(_hard_regime_errors(2)),
                          max(_hard_regime_errors(3)))
    assert two < before / 2, (before, two)
    assert three < 1e-3, three


def test_bfloat16_products_hold_the_hard_regime_and_never_overestimate():
    """bfloat16 products (the default for large weights on a CPU with AVX-512 BF16 or a recent GPU) find
    the subspace; sigma is still ||W^T u|| of the float32 weight, so it never exceeds sigma_1 (asserted
    in _hard_regime_errors). At the default 2 iterations the error in the tight cluster is about 1.5x
    float32's (1.6e-3 -> 2.4e-3 here), still half the estimator's before block Krylov (5e-3);
    bfloat16's rounding is what limits 3 iterations (README: use float32 there)."""
    fp32, bf16 = max(_hard_regime_errors(2)), max(_hard_regime_errors(2, precision="bfloat16"))
    before = max(_hard_regime_errors(2, capture_block=True, precision="bfloat16"))
    assert bf16 < 2 * fp32 and bf16 < before / 1.5, (fp32, bf16, before)


@pytest.mark.parametrize("shape", [(1024, 1024), (512, 1536)])
def test_bfloat16_estimate_matches_float32_and_the_matrix_norm(shape):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(*shape, generator=g) / shape[1] ** 0.5  # the Marchenko-Pastur edge: a tight top
    w += 0.5 * torch.outer(torch.randn(shape[0], generator=g), torch.randn(shape[1], generator=g)) / shape[1] ** 0.5
    exact = float(torch.linalg.matrix_norm(w.double(), 2))
    for precision in ("float32", "bfloat16"):
        scaler, p = scaler_for(w, method="spectral", power_precision=precision)
        est = scaler.estimate_sigmas()[0]
        assert -1e-6 < (exact - est) / exact < 1e-4, (precision, exact, est)


def test_auto_precision_is_bfloat16_only_for_large_float32_weights_where_the_hardware_has_it(monkeypatch):
    from nslab import estimators

    small, large = torch.zeros(512, 512), torch.zeros(1024, 512)
    monkeypatch.setattr(estimators, "fast_bfloat16", lambda device: True)
    assert estimators.product_dtypes("auto", [small, large, large.double()]) == [None, torch.bfloat16, None]
    assert estimators.product_dtypes("float32", [large]) == [None]
    assert estimators.product_dtypes("bfloat16", [small]) == [torch.bfloat16]
    monkeypatch.setattr(estimators, "fast_bfloat16", lambda device: False)
    assert estimators.product_dtypes("auto", [large]) == [None]
    with pytest.raises(ValueError, match="power_precision='half' is not allowed"):
        NormScaler([("w", torch.nn.Parameter(large))], power_precision="half")


def test_many_weights_whose_krylov_space_converges_keep_a_finite_ritz_step():
    """Once the block has converged, the Krylov space's later blocks are dropped (zero columns); MKL's
    float32 eigh failed to converge on such Gram matrices (4 random 256 x 256 weights, step 4)."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(256, 256, generator=g) / 16) for _ in range(4)]
    scaler = NormScaler([(f"w{i}", w) for i, w in enumerate(ws)], power_precision="float32")
    for _ in range(12):
        scaler.step()
    for w, est in zip(ws, scaler.estimate_sigmas()):
        exact = float(torch.linalg.matrix_norm(w.detach().double(), 2))
        assert torch.isfinite(w).all() and -1e-6 < (exact - est) / exact < 0.05


def test_krylov_blocks_stay_orthogonal_where_they_add_nothing_new():
    """_project_out: a column of Y already in span(Q) (rounding noise after one pass) is dropped, the
    others come out orthogonal to Q; the Krylov basis of a rank-3 weight is orthonormal or zero."""
    from nslab.linalg import _project_out, subspace_iteration

    g = torch.Generator().manual_seed(5)
    q = orthonormalize([torch.randn(200, 16, generator=g)])[0]
    y = torch.cat([q @ torch.randn(16, 4, generator=g), torch.randn(200, 4, generator=g)], 1)
    out = _project_out(q, y)
    assert float(out[:, :4].abs().max()) == 0.0
    assert float((q.t() @ out[:, 4:]).abs().max()) < 1e-5 * float(out[:, 4:].abs().max())
    w = with_spectrum(60, 50, [3.0, 2.0, 1.0], seed=6)
    qs, _, _, _ = subspace_iteration([w], orthonormalize([torch.randn(50, 4, generator=g)]), 30)
    gram = qs[0].t() @ qs[0]
    assert torch.allclose(gram, torch.diag(gram.diagonal().round()), atol=1e-4)  # each column unit or zero
