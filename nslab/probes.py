"""Spectral probes: pure functions, a weight or its singular values in, numbers out.

A weight is viewed as a matrix (d_out, d_in); a conv weight (out, in, kh, kw) as
(out, in*kh*kw). Singular values are returned in descending order.

References: stable rank ||W||_F^2 / ||W||_2^2 (Rudelson & Vershynin 2007);
effective rank exp(H(p)), p_i = sigma_i / sum_j sigma_j (Roy & Vetterli 2007,
"The effective rank: a measure of effective dimensionality"); numerical rank
#{sigma_i > rtol * sigma_1}, torch.linalg.matrix_rank's rule with ``atol=0``.
"""
from __future__ import annotations

import math

import torch

from .linalg import as_matrix, frobenius_norm

RANK_METHODS = ("svd", "gram")


def singular_values(w: torch.Tensor, method: str = "svd") -> torch.Tensor:
    """All singular values of ``w`` as a matrix, descending, float32 or float64.

    ``svd``: ``torch.linalg.svdvals`` in float32 (float64 where ``w`` is float64).
    ``gram``: square roots of ``eigvalsh`` of the smaller Gram matrix in float64;
    usually faster for large square layers on a GPU. Squaring the spectrum costs
    precision below about 1e-7 * sigma_1, far under the rank tolerance.
    """
    if method not in RANK_METHODS:
        raise ValueError(f"method={method!r} is not allowed: choose one of {list(RANK_METHODS)}")
    m = as_matrix(w.detach())
    if method == "svd":
        return torch.linalg.svdvals(m if m.dtype == torch.float64 else m.float())
    m = m.double()
    gram = m @ m.t() if m.shape[0] <= m.shape[1] else m.t() @ m
    eig = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    return eig.flip(0)


def stable_rank(frobenius: float, sigma_max: float) -> float:
    """||W||_F^2 / ||W||_2^2: between 1 and rank(W)."""
    return frobenius**2 / sigma_max**2 if sigma_max > 0 else float("nan")


def effective_rank(sv: torch.Tensor) -> float:
    """exp of the Shannon entropy of sigma_i / sum sigma (Roy & Vetterli 2007)."""
    total = sv.double().sum()
    if total <= 0:
        return float("nan")
    p = sv.double() / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def numerical_rank(sv: torch.Tensor, rtol: float) -> int:
    """Number of singular values above ``rtol * sigma_1``."""
    if sv.numel() == 0:
        return 0
    return int((sv > rtol * sv.max()).sum())


def target_excess(sv: torch.Tensor, target: float, rtol: float = 1e-3) -> dict:
    """How far a spectrum exceeds a spectral-norm target t: ``n_above_target`` counts sigma_i > t (1 + rtol),
    ``excess`` is sum_i max(sigma_i - t, 0) / t (0 when the whole spectrum is at or below t)."""
    sv = sv.double()
    return {"n_above_target": int((sv > target * (1 + rtol)).sum()),
            "excess": float((sv - target).clamp_min(0).sum() / target) if target > 0 else float("nan")}


def layer_stats(w: torch.Tensor, rtol: float, method: str = "svd") -> tuple[dict, torch.Tensor]:
    """The per-layer row of ``layers.csv`` (without epoch/target columns) and the singular values."""
    sv = singular_values(w, method)
    smax = float(sv[0])
    fro = frobenius_norm(w)
    row = {"shape": "x".join(str(s) for s in w.shape), "sigma_max": smax, "frobenius": fro,
           "stable_rank": stable_rank(fro, smax), "effective_rank": effective_rank(sv),
           "numerical_rank": numerical_rank(sv, rtol)}
    return row, sv
