"""Numerical kernels of the scaling methods: pure functions on tensors, no state, no host syncs.

* :func:`matrix_view`, :func:`frobenius_norms`: a weight as a matrix (in place), and its norm.
* :func:`gram_power_iteration`: the seed's procedure (cold power iteration on W^T W).
* :func:`subspace_iteration`, :func:`ritz_top`, :func:`ritz_all`: block (subspace) iteration with
  Rayleigh-Ritz, the warm-started estimator of the top singular triples (see nslab.estimators); its
  large products may run on a bfloat16 copy of W (:func:`_mm`, :func:`_mm_t`), and :func:`rayleigh`
  then takes sigma and v from W itself.
* :func:`msign`: the matrix sign / polar factor ``U V^T`` of ``W = U S V^T`` by Newton-Schulz
  iterations (matmuls only), and :func:`spectral_clip` built on it.

Shapes: a weight matrix is (m, n) = (d_out, d_in); blocks are (n, k).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch

_SHIFT = 1e-6  # Cholesky QR shift, relative to trace(Y^T Y): keeps rank-deficient blocks finite
_SQUARINGS = 16  # top eigenvector of a k x k Gram matrix from G^(2^16): see _top_eigvec
_TINY = 1e-30
KRYLOV_DEPTH = 4  # most blocks in one step's Rayleigh-Ritz space (see subspace_iteration)

# Newton-Schulz schedule: odd polynomials p(x) = a x + b x^3 + c x^5 applied to the singular values.
# First Muon's quintic (Jordan et al. 2024), which multiplies small values by 3.44 per step and maps
# [0, 1] into [0.7, 1.21]; then the cubic (3x - x^3)/2, which converges quadratically to 1 from there.
# 10 + 6 steps bring every x >= 1.1e-6 (x = sigma / ||W||_F) to within 1e-3 of 1 (checked in the tests).
MUON_QUINTIC = (3.4445, -4.7750, 2.0315)
CUBIC = (1.5, -0.5, 0.0)
NS_FAST, NS_FINE = 10, 6


def matrix_view(w: torch.Tensor) -> torch.Tensor:
    """A 2-D view of ``w`` without a copy, so in-place updates reach the weight.

    Contiguous weights view as (out, in*kh*kw). A channels_last conv weight views as
    (out, kh*kw*in): a permutation of the columns, which leaves singular values intact.
    """
    if w.dim() == 2:
        return w
    if w.is_contiguous():
        return w.view(w.shape[0], -1)
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last):
        return w.permute(0, 2, 3, 1).view(w.shape[0], -1)
    raise ValueError(f"weight of shape {tuple(w.shape)} and strides {w.stride()} has no 2-D view")


def matrix_shape(w: torch.Tensor) -> tuple[int, int]:
    """(d_out, d_in) of a weight viewed as a matrix: convs flatten to (out, in*kh*kw)."""
    return w.shape[0], math.prod(w.shape[1:])


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """(d_out, d_in) of any weight for reading: the in-place view where there is one, else a copy."""
    if w.dim() < 2:
        raise ValueError(f"a weight needs 2 or more dimensions to be a matrix, got shape {tuple(w.shape)}")
    try:
        return matrix_view(w)
    except ValueError:
        return w.reshape(w.shape[0], -1)


def frobenius_norm(w: torch.Tensor) -> float:
    """||W||_F accumulated in float64, on the host: for targets and probes (per step: frobenius_norms)."""
    return float(torch.linalg.vector_norm(w.detach(), dtype=torch.float64))


def frobenius_norms(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """||W||_F of each weight as 0-dim device tensors, accurate to ~1e-7 relative in float32.

    On CUDA one fused ``_foreach_norm`` launch (its reductions are tree-shaped). On the CPU,
    torch's float32 norm kernel drifts by ~2e-5 on a 512x3072 weight; the norm of the row
    norms stays within ~1e-7 and is as fast.
    """
    if weights and weights[0].is_cuda:
        return list(torch._foreach_norm(weights))
    return [torch.linalg.vector_norm(torch.linalg.vector_norm(matrix_view(w), dim=1)) for w in weights]


def gram_power_iteration(w: torch.Tensor, v: torch.Tensor, iters: int):
    """The seed's procedure: iterate v <- W^T W v / ||.||, then sigma = sqrt(||W^T W v||), u = W v / sigma."""
    for _ in range(iters):
        v = torch.nn.functional.normalize(w.t() @ (w @ v), dim=0)
    sigma = torch.linalg.vector_norm(w.t() @ (w @ v)).sqrt()
    u = (w @ v) / sigma.clamp_min(_TINY)
    return sigma, u, v


# -- block iteration ------------------------------------------------------------------
def batched(fn: Callable[..., torch.Tensor], xs: list[torch.Tensor], *more: list[torch.Tensor]) -> list[torch.Tensor]:
    """``fn`` on same-shape tensors of ``xs`` stacked (B, ...), one launch per shape, not per tensor.

    ``more``: lists of the same length whose items are stacked alongside (e.g. per-matrix targets).
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, x in enumerate(xs):
        groups[(tuple(x.shape), x.device, x.dtype)].append(i)
    out: list = [None] * len(xs)
    for idx in groups.values():
        res = fn(*(torch.stack([items[i] for i in idx]) for items in (xs, *more)))
        for j, i in enumerate(idx):
            out[i] = res[j]
    return out


def _inv_chol_t(grams: torch.Tensor) -> torch.Tensor:
    """L^{-T} for L L^T = G + shift I, G (B, k, k); ``cholesky_ex`` does not sync with the host."""
    eye = torch.eye(grams.shape[-1], device=grams.device, dtype=grams.dtype)
    trace = grams.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TINY)
    chol, _ = torch.linalg.cholesky_ex(grams + (_SHIFT * trace)[:, None, None] * eye)
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).mT


def orthonormalize(ys: list[torch.Tensor], grams: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Shifted Cholesky QR of each block Y (m, k): Q = Y L^{-T}, L L^T = Y^T Y + shift I.

    Q^T Q = I - shift (L L^T)^{-1} <= I: columns are orthonormal to about the shift
    (1e-6 relative) where Y is well conditioned, and shrink, never blow up, where not.
    ``grams``: the Y^T Y already computed by the caller.
    """
    inv_t = batched(_inv_chol_t, grams if grams is not None else [y.t() @ y for y in ys])
    return [y @ r for y, r in zip(ys, inv_t)]


def reseed(zs: list[torch.Tensor], noise: list[torch.Tensor]) -> list[torch.Tensor]:
    """Z + c R with c = 1e-6 ||Z||_F, or R itself where Z = 0, for random blocks R of unit norm: a block
    that collapsed (a zero weight, a rank-deficient one) gets random directions back instead of staying
    zero forever; elsewhere the perturbation is far below the estimator's accuracy. No host sync."""
    out = []
    for z, r in zip(zs, noise):
        norm = torch.linalg.vector_norm(z)
        out.append(torch.addcmul(z, r, torch.where(norm > _TINY, 1e-6 * norm, 1.0)))
    return out


def _top_eigvec(g: torch.Tensor) -> torch.Tensor:
    """Top unit eigenvector (B, k) of symmetric PSD matrices g (B, k, k), without host syncs.

    Repeated squaring: A <- A^2 / trace(A^2), 16 times, is g^(65536) scaled, a multiple of
    p p^T unless lambda_2 is within ~1e-5 of lambda_1; then p mixes the two and its
    Rayleigh quotient is still within that gap of lambda_1.
    """
    a = g / g.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TINY)[:, None, None]
    for _ in range(_SQUARINGS):
        a = a @ a
        a = a / a.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TINY)[:, None, None]
    col = a.diagonal(dim1=-2, dim2=-1).argmax(-1)  # the column of p p^T with the largest p_j^2
    p = a[torch.arange(a.shape[0], device=a.device), :, col]  # (B, k)
    norm = torch.linalg.vector_norm(p, dim=-1, keepdim=True)
    first = torch.zeros_like(p)
    first[:, 0] = 1
    return torch.where(norm > _TINY, p / norm.clamp_min(_TINY), first)  # g = 0: any unit vector is one


def subspace_iteration(mats: list[torch.Tensor], blocks: list[torch.Tensor], iters: int,
                       noise: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
                       done: Callable[[list, list, list], bool] | None = None, next_blocks: bool = True):
    """``iters`` block iterations on matrices (m_i, n_i) from blocks (n_i, k_i), keeping the last left blocks.

    Returns (qs, zs, zgrams, blocks): the left basis Q (m, d*k) of the block Krylov space
    span[W V, (W W^T) W V, ...] of the last d = min(iters, KRYLOV_DEPTH) iterations, Z = W^T Q (n, d*k),
    Z^T Z (the Ritz step reuses it) and the next blocks orth(W^T W V_last) (n, k). Rayleigh-Ritz over the
    whole Krylov space costs no product more than over the last block alone (Z is built as the
    iterations go), and where the top of the spectrum is a tight cluster it is several times more
    accurate (block Krylov methods: Musco and Musco, NeurIPS 2015; measured in
    benchmarks/cluster_accuracy.py). Each new left block is orthogonalised against the earlier ones
    (:func:`_project_out`): Q's columns are orthonormal, or zero where a block adds nothing new.
    ``noise``: fixed random blocks (m, k) and (n, k) per matrix, see :func:`reseed`; where W V or W^T Q
    vanish (a zero weight) the bases are random instead of zero, so the Ritz step still returns unit vectors.
    ``done(qs, zs, zgrams)``, called after each iteration, may stop before ``iters`` (it may read the host).
    ``next_blocks=False``: the caller picks the next blocks itself (:func:`ritz_blocks`); None is returned.
    """
    if iters < 1:
        raise ValueError(f"iters={iters!r} is not allowed: an integer >= 1")
    # A long warm-up is plain subspace iteration until the last `depth` iterations; the Krylov space
    # never exceeds min(m, n) columns.
    depth = max(1, min([iters, KRYLOV_DEPTH] + [min(m.shape) // b.shape[1] for m, b in zip(mats, blocks)]))
    q_parts: list[list[torch.Tensor]] = [[] for _ in mats]
    z_parts: list[list[torch.Tensor]] = [[] for _ in mats]
    q_all: list[torch.Tensor] = []
    wt_ys: Callable[[], list[torch.Tensor]] | None = None  # W^T Y of the last iteration, when asked for
    for i in range(iters):
        if wt_ys is not None:
            # The Krylov space's second block grows from W^T Q_1 scaled, not orthonormalised: its columns
            # are as well conditioned as W's top block, the span is what counts, and Y's Gram-Schmidt follows.
            zs = wt_ys()
            blocks = ([z / torch.linalg.vector_norm(z).clamp_min(_TINY) for z in zs] if len(q_parts[0]) == 1
                      else orthonormalize(zs))
        ys = [_mm(m, b) for m, b in zip(mats, blocks)]
        if i == iters - depth:  # the Krylov space's first block: random directions where W V = 0 (a zero
            ys = _reseeded(ys, noise, 0)  # weight), so the Ritz step has unit vectors; later blocks may be 0
        # the new block's directions beyond the earlier ones
        qs = orthonormalize([_project_out(q, y) for q, y in zip(q_all, ys)] if q_parts[0] else ys)
        zs = [_mm_t(m, q) for m, q in zip(mats, qs)]
        if i < iters - depth:  # before the Krylov window: nothing kept
            wt_ys = lambda zs=zs: zs  # noqa: E731  (W^T orth(Y): the same block as W^T Y)
            continue
        for parts, q in zip(q_parts, qs):
            parts.append(q)
        for parts, z in zip(z_parts, zs):
            parts.append(z)
        q_all, z_all = _concat(q_parts), _concat(z_parts)
        # The iteration goes on from W^T Y, Y = W V: with Y = Q_all (Q_all^T Y), W^T Y = Z_all (Q_all^T Y),
        # without another product; computed only where a next block is wanted.
        wt_ys = (lambda zs=zs: zs) if len(q_parts[0]) == 1 else \
            (lambda q_all=q_all, z_all=z_all, ys=ys: [z @ (q.t() @ y) for z, q, y in zip(z_all, q_all, ys)])
        if done is not None and i + 1 < iters and done(q_all, z_all, _grams(z_all)):
            break
    next_blocks = orthonormalize(_reseeded(wt_ys(), noise, 1)) if next_blocks else None
    return q_all, z_all, _grams(z_all), next_blocks


def _project_out(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Y without its components in span(Q), Q (m, j) orthonormal, by block classical Gram-Schmidt twice.

    A column of Y that lies in span(Q) (a weight of low rank, a converged block) leaves only float32
    rounding after the first pass, and that noise is not orthogonal to Q; normalised, it would come
    back as a direction already in Q. Such columns (below 1e-4 of their norm after the first pass) are
    dropped; the second pass then leaves the others orthogonal to Q to rounding ("twice is enough",
    Giraud et al. 2005), and orthonormalize's shifted Cholesky QR shrinks, never amplifies, what the
    new columns share among themselves. 2.8x cheaper than a Householder QR of [Q | Y] (4 x (2000, 64),
    2 cores).
    """
    before = torch.linalg.vector_norm(y, dim=0)
    y = y - q @ (q.t() @ y)
    y = y * (torch.linalg.vector_norm(y, dim=0) > 1e-4 * before)
    return y - q @ (q.t() @ y)


def _mm(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W @ X in W's precision, returned in X's: a bfloat16 copy of W times a float32 block is a float32 block."""
    return m @ x if m.dtype == x.dtype else (m @ x.to(m.dtype)).to(x.dtype)


def _mm_t(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W^T @ X in W's precision, returned in X's. In bfloat16 as (X^T W)^T: oneDNN on the CPU runs that
    1.4x faster than W^T X (2-core Zen 4, k = 32); cuBLAS takes either."""
    return m.t() @ x if m.dtype == x.dtype else (x.to(m.dtype).t() @ m).t().to(x.dtype)


def rayleigh(mats: list[torch.Tensor], us: list[torch.Tensor]):
    """(thetas (k,), U, V) per matrix from left vectors U (m, k): u_i normalised, theta_i = ||W^T u_i||,
    v_i = W^T u_i / theta_i (0 where theta_i = 0), in W's precision. Each theta_i is a Rayleigh quotient
    of W (never above sigma_1), and the correction W + (t - theta_i) u_i v_i^T sets ||W^T u_i|| to t
    exactly, however u_i was found (e.g. from bfloat16 products)."""
    out = []
    for m, u in zip(mats, us):
        u = u / torch.linalg.vector_norm(u, dim=0).clamp_min(_TINY)
        wtu = m.t() @ u
        thetas = torch.linalg.vector_norm(wtu, dim=0)
        out.append((thetas, u, wtu / thetas.clamp_min(_TINY)))
    return out


def _reseeded(xs: list[torch.Tensor], noise, side: int) -> list[torch.Tensor]:
    return xs if noise is None else reseed(xs, noise[side])


def _concat(parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.cat(p, 1) if len(p) > 1 else p[0] for p in parts]


def _grams(zs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [z.t() @ z for z in zs]


def ritz_top(qs: list[torch.Tensor], zs: list[torch.Tensor], zgrams: list[torch.Tensor],
             fallback: list[torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(sigma, u, v) per matrix: the top Ritz triple of W restricted to span(Q), Z = W^T Q.

    p is the top eigenvector of Z^T Z (``zgrams``); u = Q p / ||Q p||, W^T u = Z p / ||Q p||,
    sigma = ||W^T u||, v = W^T u / sigma. Where sigma = 0 (a zero weight) v is the first column of
    ``fallback`` (n, k) (e.g. the next block), so a correction still has a direction.
    """
    out = []
    for i, (q, z, p) in enumerate(zip(qs, zs, batched(_top_eigvec, zgrams))):
        u = q @ p
        norm_u = torch.linalg.vector_norm(u).clamp_min(_TINY)
        wtu = (z @ p) / norm_u
        sigma = torch.linalg.vector_norm(wtu)
        v = wtu / sigma.clamp_min(_TINY)
        if fallback is not None:
            v = torch.where(sigma > _TINY, v, fallback[i][:, 0])
        out.append((sigma, u / norm_u, v))
    return out


def ritz_all(qs: list[torch.Tensor], zs: list[torch.Tensor], zgrams: list[torch.Tensor],
             ks: list[int] | None = None):
    """The top Ritz triples: (thetas (k,), U (m, k), V (n, k)) per matrix, thetas descending, k = ``ks[i]``
    (default: every one, the basis' width).

    Z^T Z = P diag(.) P^T (``eigh``); u_i = Q p_i / ||Q p_i||, theta_i = ||W^T u_i||,
    v_i = W^T u_i / theta_i (0 where theta_i = 0). With span(Q) an invariant subspace these are exact
    singular triples of W. ``eigh`` may synchronise with the host on CUDA.
    """
    out = []
    ks = ks or [q.shape[1] for q in qs]
    for q, z, packed, k in zip(qs, zs, batched(_eigh_stacked, zgrams), ks):
        p = packed[1:, max(packed.shape[1] - k, 0):].flip(-1)  # the top k eigenvectors, largest first
        u = q @ p
        norm_u = torch.linalg.vector_norm(u, dim=0).clamp_min(_TINY)
        wtu = (z @ p) / norm_u
        thetas = torch.linalg.vector_norm(wtu, dim=0)
        out.append((thetas, u / norm_u, wtu / thetas.clamp_min(_TINY)))
    return out


def ritz_blocks(triples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], ks: list[int],
                noise: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The top k_i right Ritz vectors (n, k_i) of each matrix, from :func:`ritz_all`'s triples: the next
    step's block.

    They hold the directions with the largest values found so far, where orth(W^T W V_last) holds the
    last iteration's: in the hard regime (a tight cluster at the top, corrected one value per step)
    this is what brings the error down, several times (benchmarks/cluster_accuracy.py). ``noise``
    (n, k_i) per matrix: see :func:`reseed` (a zero weight has no Ritz direction).
    """
    vs = [v[:, :k] for (_, _, v), k in zip(triples, ks)]
    # Right Ritz vectors are orthonormal already (to the products' rounding): unit columns suffice,
    # and a column re-seeded from noise (a zero or rank-deficient weight) comes back at full length.
    return [v / torch.linalg.vector_norm(v, dim=0).clamp_min(_TINY) for v in (vs if noise is None else reseed(vs, noise))]


def _eigh_stacked(g: torch.Tensor) -> torch.Tensor:
    """eigh of (B, k, k) packed as (B, k+1, k): row 0 the eigenvalues, rows 1.. the eigenvectors.

    In float64: MKL's float32 ``syevd`` fails to converge on some Gram matrices with many zero rows
    (Krylov blocks dropped once the space has converged, :func:`_project_out`), float64 does not; k is
    small, so the cost is the same."""
    evals, vecs = torch.linalg.eigh(g.double())
    return torch.cat([evals[:, None, :], vecs], dim=1).to(g.dtype)


# -- Newton-Schulz -------------------------------------------------------------------
def ns_schedule(fast: int = NS_FAST, fine: int = NS_FINE) -> list[tuple[float, float, float]]:
    return [MUON_QUINTIC] * fast + [CUBIC] * fine


def msign(x: torch.Tensor, schedule: list[tuple[float, float, float]] | None = None) -> torch.Tensor:
    """The polar factor U V^T of x = U S V^T (batched (..., m, n)), by Newton-Schulz iterations.

    x is scaled by its Frobenius norm (every singular value then lies in [0, 1]), and each step applies
    p(s) = a s + b s^3 + c s^5 to the singular values, as X <- a X + (b G + c G^2) X with G = X X^T on
    the smaller side. Zero singular values stay zero (msign(0) = 0, as in modula); nonzero ones above
    ~1e-6 ||x||_F reach 1 within 1e-3 with the default schedule. For a symmetric x this is the matrix
    sign function (eigenvalues to +-1).
    """
    schedule = ns_schedule() if schedule is None else schedule
    wide = x.shape[-2] <= x.shape[-1]
    y = x if wide else x.mT
    y = y / torch.linalg.matrix_norm(y, "fro", keepdim=True).clamp_min(_TINY)
    for a, b, c in schedule:
        g = y @ y.mT
        poly = b * g + c * (g @ g) if c else b * g
        y = a * y + poly @ y
    return y if wide else y.mT


def deficiency(o: torch.Tensor) -> torch.Tensor:
    """min(m, n) - ||O||_F^2 of polar factors O (..., m, n): about the number of missing directions
    (0 where O is semi-orthogonal, 1 per zero singular value)."""
    return min(o.shape[-2:]) - torch.linalg.matrix_norm(o, "fro") ** 2


def complete_polar(o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """A semi-orthogonal completion of a polar factor O (..., m, n) whose input was rank-deficient.

    msign leaves zero singular values at zero (and float32 rounding there partly amplified). With
    D = I - O O^T (the missing left directions) and a random R (same shape as O), C = D (R - R O^T O)
    lies in those directions, orthogonal to O's rows; msign(O + c C), with C scaled to the size of the
    deficiency, has every singular value 1 and keeps O's converged directions. Any completion is a
    nearest semi-orthogonal matrix, so this is still the projection (one of them).
    """
    wide = o.shape[-2] <= o.shape[-1]
    oo, rr = (o, r) if wide else (o.mT, r.mT)
    eye = torch.eye(oo.shape[-2], device=o.device, dtype=o.dtype)
    d = eye - oo @ oo.mT
    c = d @ (rr - (rr @ oo.mT) @ oo)
    scale = d.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TINY).sqrt() / torch.linalg.matrix_norm(c).clamp_min(_TINY)
    out = msign(oo + scale[..., None, None] * c, ns_schedule(8, 6))
    return out if wide else out.mT


def spectral_clip(w: torch.Tensor, t: torch.Tensor | float,
                  schedule: list[tuple[float, float, float]] | None = None) -> torch.Tensor:
    """The projection of W onto {sigma_max <= t}: singular values above t become t, the rest stay.

    With O = msign(W) = U V^T and H = W O^T = U S U^T (the left PSD factor),
        clip(W) = (W + t O - msign(t I - H) (t O - W)) / 2,
    which acts on each singular value as (s + t - sign(t - s)(t - s)) / 2 = min(s, t): matmuls only.
    Where msign has not resolved sign(t - s) (|s - t| below ~1e-3 t for the default schedule), the
    result lies between s and t, so sigma_max <= t (1 + 1e-3). Singular values below t are unchanged
    up to float32 rounding (~1e-7 ||W||), whatever O does there: small s need no accurate O.
    """
    wide = w.shape[-2] <= w.shape[-1]
    m = w if wide else w.mT
    o = msign(m, schedule)
    h = m @ o.mT
    h = (h + h.mT) / 2  # symmetric up to rounding; keep it exactly so
    eye = torch.eye(h.shape[-1], device=h.device, dtype=h.dtype)
    s = msign(t * eye - h, schedule)
    out = (m + t * o - s @ (t * o - m)) / 2
    return out if wide else out.mT
