"""Heavy-tail alpha against the powerlaw package (Clauset-Shalizi-Newman fits) on samples of known exponent."""
import math
import warnings

import numpy as np
import pytest
import torch

from nslab.heavy_tail import EVALS_THRESH, alpha, fit_alpha

powerlaw = pytest.importorskip("powerlaw", reason="the powerlaw package is the reference (dev extra)")


def pareto(exponent: float, n: int, seed: int, xmin: float = 1.0) -> np.ndarray:
    """n samples of the density (exponent-1)/xmin (x/xmin)^(-exponent), x >= xmin (inverse CDF)."""
    u = np.random.default_rng(seed).random(n)
    return xmin * (1 - u) ** (-1 / (exponent - 1))


def reference(evals: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # alpha unrestricted above 1: powerlaw 2.0's default range (0, 3) refuses every alpha >= 3
        return powerlaw.Fit(evals, verbose=False, parameter_ranges={"alpha": [1, None]})


@pytest.mark.parametrize("exponent, seed", [(1.5, 0), (2.0, 1), (2.5, 2), (3.0, 3), (4.0, 4), (6.0, 5)])
def test_alpha_equals_powerlaw_and_recovers_the_exponent(exponent, seed):
    evals = pareto(exponent, 600, seed)
    fit = fit_alpha(np.sqrt(evals), thresh=0)  # the function takes singular values: evals = sv^2
    ref = reference(evals)
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-10)
    assert fit.xmin == pytest.approx(ref.xmin, rel=1e-12)
    assert fit.ks_distance == pytest.approx(ref.D, rel=1e-8)
    assert fit.sigma == pytest.approx(ref.sigma, rel=1e-8)
    assert fit.n_tail == int(ref.n_tail) and fit.n_evals == 600
    assert abs(fit.alpha - exponent) < 4 * fit.sigma  # the true exponent, within 4 standard errors


def test_alpha_of_a_random_matrix_and_of_a_pareto_tail_above_a_bulk():
    """A Marchenko-Pastur bulk has no power-law tail (large alpha); a heavy tail on top of it is found."""
    gen = torch.Generator().manual_seed(0)
    sv = torch.linalg.svdvals(torch.randn(300, 600, generator=gen, dtype=torch.float64) / 600**0.5)
    ref = reference((sv**2).numpy())
    assert alpha(sv) == pytest.approx(ref.alpha, rel=1e-10)
    assert alpha(sv) > 6
    tail = torch.from_numpy(np.sqrt(pareto(2.5, 200, 7, xmin=4.0)))  # evals above the bulk's edge (~2.9)
    both = torch.cat([sv, tail])
    fit = fit_alpha(both)
    assert fit.alpha == pytest.approx(reference((both**2).numpy()).alpha, rel=1e-10)
    assert abs(fit.alpha - 2.5) < 4 * fit.sigma and fit.xmin >= 2.5


def test_alpha_is_scale_invariant_and_order_free():
    sv = torch.from_numpy(np.sqrt(pareto(3.0, 300, 11)))
    a = alpha(sv)
    assert alpha(sv * 7.5) == pytest.approx(a, rel=1e-12)
    assert alpha(sv.flip(0)) == pytest.approx(a, rel=1e-12)
    assert alpha(sv.float()) == pytest.approx(a, rel=1e-5)


def test_ties_follow_powerlaw():
    evals = np.round(pareto(2.5, 400, 12), 1)  # many repeated values
    fit = fit_alpha(np.sqrt(evals), thresh=0)
    ref = reference(evals)
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-10) and fit.xmin == pytest.approx(ref.xmin, rel=1e-12)
    assert fit.ks_distance == pytest.approx(ref.D, rel=1e-8)


def test_nan_with_a_reason():
    few = fit_alpha(torch.ones(5))
    assert math.isnan(few.alpha) and "fewer than 10" in few.reason
    w = torch.empty(200, 300)
    torch.nn.init.orthogonal_(w, generator=torch.Generator().manual_seed(0))
    sv = torch.linalg.svdvals(w * 1.7)  # an orthogonal init: equal up to float32 rounding (powerlaw: alpha ~ 1e6)
    assert 0 < float(sv[0] - sv[-1])
    flat = fit_alpha(sv)
    assert math.isnan(flat.alpha) and "flat spectrum" in flat.reason
    two = fit_alpha(torch.tensor([1.0] * 20 + [2.0] * 20))
    assert math.isnan(two.alpha) and "2 distinct eigenvalues" in two.reason
    tiny = fit_alpha(torch.full((50,), 1e-4))  # all below WeightWatcher's threshold (evals <= 1e-5)
    assert math.isnan(tiny.alpha) and f"above {EVALS_THRESH:g}" in tiny.reason
    assert math.isnan(alpha([]))


@pytest.mark.parametrize("bad, message", [(torch.ones(3, 3), "1-D"), (torch.tensor([1.0, -1.0] * 10), ">= 0"),
                                          (torch.tensor([1.0, float("nan")] * 10), "finite")])
def test_bad_input_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        fit_alpha(bad)
