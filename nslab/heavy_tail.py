"""Heavy-tail exponent alpha of a layer's spectrum (Martin & Mahoney), fitted as WeightWatcher does.

Martin & Mahoney ("Implicit self-regularization in deep neural networks", JMLR 2021; "Predicting
trends in the quality of state-of-the-art neural networks without access to training or testing
data", Nature Communications 2021) fit the tail of the empirical spectral density (ESD) of a
layer, the eigenvalues lambda_i = sigma_i^2 of W^T W, with a power law p(lambda) ~ lambda^(-alpha).
Well-trained layers show alpha in about [2, 6]; random ones larger.

The fit (Clauset, Shalizi & Newman 2009, "Power-law distributions in empirical data", SIAM
Review 51(4), sections 3.1 and 3.3), on the eigenvalues above ``thresh`` (WeightWatcher's
EVALS_THRESH = 1e-5, which drops numerically zero ones):

* for each candidate xmin (every distinct eigenvalue except the largest), the continuous
  maximum-likelihood exponent over the tail lambda >= xmin, n of them:
  alpha = 1 + n / sum_i log(lambda_i / xmin)  (eq. 3.1);
* the Kolmogorov-Smirnov distance D = max |S(x) - P(x)| over the tail's distinct values, S the
  tail's empirical CDF (the fraction of tail values below x) and P(x) = 1 - (x/xmin)^(1-alpha);
* xmin is the candidate with the smallest D among those with alpha > 1.

This is what ``powerlaw.Fit(evals, parameter_ranges={"alpha": [1, None]})`` computes (powerlaw
2.0; its default range (0, 3) refuses every alpha >= 3, so its default fit is wrong for random-like
layers) and what WeightWatcher's own fitter ``WWFit`` (its default) computes on data without ties.
nslab computes it here, vectorised over the candidates in float64 on the spectrum's device, rather
than calling powerlaw: the same fit takes powerlaw 0.13-1.8 s for 2,000 values (a Python loop over
candidates, measured) and needs scipy and matplotlib. The tests check alpha, xmin and D against
powerlaw on Pareto samples of known exponent.

No fit (NaN, and ``AlphaFit.reason`` says why): fewer than ``min_evals`` eigenvalues above the
threshold; a flat spectrum (relative spread <= 1e-5: an orthogonal init, to which powerlaw fits
alpha ~ 1e6-1e7 from rounding noise, measured on the MLPs at init); fewer than 3 distinct values;
no xmin with alpha > 1.

Convolutions: nslab fits the spectrum its probes already take (the reshape (out, in*kh*kw)).
WeightWatcher instead pools the eigenvalues of the kh*kw slices W[:, :, i, j]; to fit those, pass
``torch.linalg.svdvals(w.permute(2, 3, 0, 1)).flatten()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EVALS_THRESH = 1e-5  # WeightWatcher's: eigenvalues at or below it are numerically zero
MIN_EVALS = 10  # WeightWatcher's DEFAULT_MIN_EVALS: layers with fewer eigenvalues are not fitted
# Spectra flatter than this (relative spread of the eigenvalues) are an orthogonal init up to
# rounding: powerlaw and WeightWatcher fit alpha ~ 1e6-1e7 to that noise (measured); nslab says NaN.
FLAT_SPREAD = 1e-5
_CHUNK = 1 << 22  # candidate x value pairs per block of the KS computation (32 MiB in float64)


@dataclass(frozen=True)
class AlphaFit:
    """A power-law fit of the ESD tail; NaNs and a ``reason`` where there is none."""

    alpha: float
    xmin: float  # an eigenvalue (sigma^2), where the tail starts
    ks_distance: float  # D of the chosen xmin
    sigma: float  # standard error of alpha, (alpha - 1) / sqrt(n_tail) (CSN eq. 3.2)
    n_tail: int  # eigenvalues >= xmin
    n_evals: int  # eigenvalues fitted (above the threshold)
    reason: str = ""


def _none(reason: str, n_evals: int) -> AlphaFit:
    nan = float("nan")
    return AlphaFit(nan, nan, nan, nan, 0, n_evals, reason)


def fit_alpha(singular_values, thresh: float = EVALS_THRESH, min_evals: int = MIN_EVALS) -> AlphaFit:
    """Fit the power-law tail of lambda = sigma^2 (see the module docstring).

    Args:
        singular_values: a layer's singular values, any order, a tensor or a sequence (1-D).
        thresh: eigenvalues at or below it are dropped (WeightWatcher's 1e-5).
        min_evals: fewer eigenvalues above ``thresh`` give NaN with a reason.
    """
    sv = torch.as_tensor(singular_values).detach()
    if sv.dim() != 1 or not (sv.is_floating_point() or sv.numel() == 0):
        raise ValueError(f"singular_values of shape {tuple(sv.shape)} are not allowed: a 1-D float tensor")
    if not bool(torch.isfinite(sv).all()) or bool((sv < 0).any()):
        raise ValueError("singular_values are not allowed: they must be finite and >= 0")
    if not (thresh >= 0 and isinstance(min_evals, int) and min_evals >= 3):
        raise ValueError(f"thresh={thresh!r}, min_evals={min_evals!r} are not allowed: thresh >= 0, min_evals >= 3")
    ev = (sv.double() ** 2).sort().values
    ev = ev[ev > thresh]
    n = ev.numel()
    if n < min_evals:
        return _none(f"{n} eigenvalues above {thresh:g}, fewer than {min_evals}", n)
    if float(ev[-1] - ev[0]) <= FLAT_SPREAD * float(ev[-1]):
        return _none(f"eigenvalues within {FLAT_SPREAD:g} of each other (a flat spectrum, e.g. an orthogonal "
                     "init): no tail to fit", n)
    values, counts = torch.unique_consecutive(ev, return_counts=True)
    if values.numel() < 3:
        return _none(f"{values.numel()} distinct eigenvalues: a power law needs 3", n)
    first = torch.cumsum(counts, 0) - counts  # index of each distinct value's first occurrence in ev
    logs = ev.log()
    tail_log_sum = logs.flip(0).cumsum(0).flip(0)  # sum of log(ev[i:])
    cand = torch.arange(values.numel() - 1, device=ev.device)  # every distinct value but the largest
    n_tail = (n - first[cand]).double()
    log_xmin = values[cand].log()
    alpha = 1 + n_tail / (tail_log_sum[first[cand]] - n_tail * log_xmin)
    dist = _ks_distances(values.log(), first.double(), alpha, n_tail, log_xmin)
    valid = alpha > 1
    if not bool(valid.any()):
        return _none("no xmin gives alpha > 1", n)
    best = int(torch.where(valid, dist, torch.full_like(dist, math.inf)).argmin())
    a, nt = float(alpha[best]), int(n_tail[best])
    return AlphaFit(a, float(values[best]), float(dist[best]), (a - 1) / math.sqrt(nt), nt, n)


def _ks_distances(log_values, first, alpha, n_tail, log_xmin) -> torch.Tensor:
    """D for each candidate j: max over distinct values k >= j of |P_j(x_k) - S_j(x_k)|."""
    m, k = alpha.numel(), log_values.numel()
    out = torch.empty(m, dtype=torch.float64, device=alpha.device)
    rows = max(1, _CHUNK // k)
    for start in range(0, m, rows):  # rows j in [start, stop) only need columns k >= start
        j = torch.arange(start, min(start + rows, m), device=alpha.device)
        cols = torch.arange(start, k, device=alpha.device)
        theory = 1 - torch.exp((1 - alpha[j, None]) * (log_values[None, start:] - log_xmin[j, None]))
        empirical = (first[None, start:] - first[j, None]) / n_tail[j, None]
        gap = (theory - empirical).abs().masked_fill(cols[None, :] < j[:, None], 0)
        out[j] = gap.max(1).values
    return out


def alpha(singular_values, thresh: float = EVALS_THRESH, min_evals: int = MIN_EVALS) -> float:
    """The heavy-tail exponent alpha of the ESD (``fit_alpha(...).alpha``): NaN where there is no fit,
    ``fit_alpha(...).reason`` says why."""
    return fit_alpha(singular_values, thresh, min_evals).alpha
