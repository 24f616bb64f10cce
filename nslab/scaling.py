"""Norm scaling: a projection of the weights applied after every optimizer step.

Usage from any training loop::

    scaler = NormScaler(scaled_parameters(model), method="spectral")
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        scaler.step()          # in place, under no_grad

Methods (W viewed as a matrix (d_out, d_in); convs as (out, in*kh*kw)):

* ``frobenius``: ``W <- W * t / ||W||_F`` with ``t = ||W||_F`` right after init.
* ``spectral``: estimate the top singular triple (sigma_1, u_1, v_1), then
  ``W <- W + (t - sigma_1) u_1 v_1^T`` (two-sided: it also raises sigma_1 when it is
  below target). With exact singular vectors the new W has ``t`` as a singular value
  along (u_1, v_1) and every other singular pair unchanged; sigma_2 may still exceed
  ``t``, and then it is the next step's sigma_1.

Spectral targets: ``per_layer`` gives layer k ``sqrt(d_out/d_in)`` (its init
spectral norm, what the blog's text describes); ``first_layer`` gives every layer
the first scaled layer's target (what the authors' code ran, see NOTES.md).

Estimating sigma_1 (two procedures):

* ``warm_start=True`` (default): warm-started block (subspace) iteration with
  Rayleigh-Ritz. Each layer keeps an orthonormal block V (d_in, k) between steps.
  One iteration is ``Q = orth(W V)``, ``Z = W^T Q`` (so ``Q^T W = Z^T``),
  ``V <- orth(Z)``: two passes over W; with k = 32 a product still does only 16 flop
  per byte of W, so on a GPU it should cost about what one vector costs (not yet
  measured on a GPU). sigma_1 is the top Ritz value, the largest singular value of ``Q^T W``:
  ``u = Q p`` with p the top eigenvector of ``Z^T Z`` (k x k), ``v = W^T u / sigma``.
  ``sigma = ||W^T u||`` for a unit u, a lower bound on sigma_1 that the correction
  makes exact (``||W'^T u|| = t`` afterwards). The block matters: a single warm
  vector (``block_size=1``) sits on the direction it has just corrected, which is an
  exact singular vector of value t, and never sees a sigma_2 > t growing elsewhere.
  The block holds the next k-1 directions too, so after a correction the Ritz step
  picks the true new top. The first step runs ``warmup_iters`` iterations from a
  random block. The k x k work (Cholesky QR, top eigenvector by repeated squaring)
  is batched across layers and never leaves the device.
* ``warm_start=False``: the seed's exact procedure: a fresh random v each call,
  ``power_iters`` iterations of ``v <- W^T W v / ||.||``, ``sigma = sqrt(||W^T W v||)``.

Measured accuracy: relative error of the sigma_1 each step uses, against
``torch.linalg.matrix_norm(W, 2)`` of the same W just before the correction
(``benchmarks/sigma_tracking.py``; ``quick`` preset: MLP 3x512, 5,000 CIFAR-100
images, 3 epochs = 60 steps x 3 layers; CPU, float32; 2026-11-27):

==================  ==========  ======  ==========  ===========  ========================
estimator           max, steps  median  last epoch  checkpoints  cost (CPU, this MLP)
==================  ==========  ======  ==========  ===========  ========================
block 32 x 2 (def)  1.2e-2      1.6e-4  8.3e-4      4.5e-4       ~8-13 ms per step
block 32 x 1        3.5e-2      1.0e-3  4.1e-3      4.6e-3
block 16 x 2        2.0e-2      4.5e-4  1.7e-3      1.1e-3
block 8 x 2         2.9e-2      2.5e-3  2.7e-2      1.8e-2
block 1 x 2 (naive) 3.1e-1      1.4e-1  2.5e-1      1.8e-1
seed, 500 cold      1.1e-3      1.1e-7  1.1e-3      1.4e-5       ~170 ms per step
seed, 100 cold      2.1e-2      1.8e-6  1.9e-2      7.0e-4
==================  ==========  ======  ==========  ===========  ========================

The default row ran with ``warmup_iters=100``, the others with 30 (``--warmup-iters``; it changes only the
first step). "checkpoints" is what ``power_iter_rel_err`` records at each epoch's end. The largest
errors of every estimator come in the first epoch, where Adam moves the top of a
nearly flat spectrum (orthogonal init) faster than any warm start follows; the
spectral correction then keeps a dense continuum of singular values above target, of
which each step removes only the top one, so block size matters more than
iterations. On random matrices (tests) after the warm-up the block estimate is within
1e-3, also where sigma_2/sigma_1 = 0.997 and after corrections with sigma_2 > target.

``tol > 0`` stops early once every sigma changes by less than ``tol`` relative (one
host sync per iteration: keep it 0 on GPUs). ``cuda_graph=True`` captures the whole
scaling step as a CUDA graph after the first step and replays it (CUDA weights only).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from .config import METHODS, TARGETS
from .models import matrix_shape

_SHIFT = 1e-6  # Cholesky QR shift, relative to trace(Y^T Y): keeps rank-deficient blocks finite
_SQUARINGS = 16  # top eigenvector of a k x k Gram matrix from G^(2^16): see _top_eigvec
_TINY = 1e-30


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


def spectral_targets(shapes: list[tuple[int, int]], targets: str = "per_layer") -> list[float]:
    """sigma*_k = sqrt(d_out/d_in) per layer, or the first layer's value for all."""
    if targets not in TARGETS:
        raise ValueError(f"targets={targets!r} is not allowed: choose one of {list(TARGETS)}")
    per_layer = [math.sqrt(d_out / d_in) for d_out, d_in in shapes]
    return per_layer if targets == "per_layer" else [per_layer[0]] * len(per_layer)


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
    u = (w @ v) / sigma
    return sigma, u, v


# -- block iteration ------------------------------------------------------------------
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``fn`` on same-shape tensors stacked (B, ...): one launch per shape, not per tensor."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, x in enumerate(xs):
        groups[(tuple(x.shape), x.device, x.dtype)].append(i)
    out: list = [None] * len(xs)
    for idx in groups.values():
        res = fn(torch.stack([xs[i] for i in idx]))
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
    inv_t = _batched(_inv_chol_t, grams if grams is not None else [y.t() @ y for y in ys])
    return [y @ r for y, r in zip(ys, inv_t)]


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
    return p / torch.linalg.vector_norm(p, dim=-1, keepdim=True).clamp_min(_TINY)


def subspace_iteration(mats: list[torch.Tensor], blocks: list[torch.Tensor], iters: int):
    """``iters`` block iterations on matrices (m_i, n_i) from blocks (n_i, k_i).

    Returns (qs, zs, zgrams, blocks): the last left bases Q (m, k), Z = W^T Q (n, k), Z^T Z
    (k, k) (the Ritz step reuses it) and the next blocks orth(Z) (n, k).
    """
    if iters < 1:
        raise ValueError(f"iters={iters!r} is not allowed: an integer >= 1")
    for _ in range(iters):
        qs = orthonormalize([m @ b for m, b in zip(mats, blocks)])
        zs = [m.t() @ q for m, q in zip(mats, qs)]
        zgrams = [z.t() @ z for z in zs]
        blocks = orthonormalize(zs, zgrams)
    return qs, zs, zgrams, blocks


def ritz_top(qs: list[torch.Tensor], zs: list[torch.Tensor],
             zgrams: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(sigma, u, v) per matrix: the top Ritz triple of W restricted to span(Q), Z = W^T Q.

    p is the top eigenvector of Z^T Z (``zgrams``); u = Q p / ||Q p||, W^T u = Z p / ||Q p||,
    sigma = ||W^T u||, v = W^T u / sigma.
    """
    out = []
    for q, z, p in zip(qs, zs, _batched(_top_eigvec, zgrams)):
        u = q @ p
        norm_u = torch.linalg.vector_norm(u).clamp_min(_TINY)
        wtu = (z @ p) / norm_u
        sigma = torch.linalg.vector_norm(wtu)
        out.append((sigma, u / norm_u, wtu / sigma.clamp_min(_TINY)))
    return out


class NormScaler:
    """Frobenius or spectral norm scaling of a fixed list of weights.

    Args:
        params: (name, weight) pairs, e.g. from :func:`nslab.models.scaled_parameters`.
            Frobenius targets are the weights' norms at construction: build it right
            after init.
        method: ``"none"``, ``"frobenius"`` or ``"spectral"``.
        targets: spectral targets, ``"per_layer"`` or ``"first_layer"``.
        power_iters: iterations per step (>= 1): block iterations when ``warm_start``,
            else the seed's cold Gram power iterations.
        warm_start: keep a block of singular vectors between steps (state saved by
            ``state_dict``); False is the seed's procedure.
        tol: relative early-stopping tolerance for sigma (0: run all iterations).
        seed: seeds the random start vectors.
        block_size: vectors per block (>= 1; capped at min(d_out, d_in) per layer).
            1 is the naive warm start, kept for comparison: see the module docstring.
        warmup_iters: block iterations of the first step (from a random block).
        cuda_graph: capture the step as a CUDA graph after the first step (CUDA only).
    """

    def __init__(self, params, method: str = "spectral", targets: str = "per_layer",
                 power_iters: int = 2, warm_start: bool = True, tol: float = 0.0, seed: int = 0,
                 block_size: int = 32, warmup_iters: int = 100, cuda_graph: bool = False):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not allowed: choose one of {list(METHODS)}")
        for name, value in (("power_iters", power_iters), ("block_size", block_size), ("warmup_iters", warmup_iters)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name}={value!r} is not allowed: an integer >= 1")
        if tol < 0:
            raise ValueError(f"tol={tol!r} is not allowed: must be >= 0")
        self.names = [n for n, _ in params]
        self.weights = [p for _, p in params]
        self.method, self.targets_rule = method, targets
        self.power_iters, self.warm_start, self.tol = power_iters, warm_start, tol
        self.block_size, self.warmup_iters, self.cuda_graph = block_size, warmup_iters, cuda_graph
        if cuda_graph:
            if not all(w.is_cuda for w in self.weights):
                raise ValueError("cuda_graph=True is not allowed here: it needs every weight on a CUDA device")
            if method == "spectral" and (not warm_start or tol > 0):
                raise ValueError("cuda_graph=True is not allowed with warm_start=False or tol > 0: "
                                 "both use the host inside the step")
        shapes = [matrix_shape(w) for w in self.weights]
        device = self.weights[0].device if self.weights else torch.device("cpu")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        with torch.no_grad():
            if method == "frobenius":
                # float64 accumulation: a float32 norm of a 512x3072 weight is off by ~2e-5 on CPU
                self.targets = [float(torch.linalg.vector_norm(w, dtype=torch.float64)) for w in self.weights]
            elif method == "spectral":
                self.targets = spectral_targets(shapes, targets)
            else:
                self.targets = [float("nan")] * len(self.weights)
        self._target_t = self._target_tensors()
        self.v = [self._random_unit(d_in, w) for (_, d_in), w in zip(shapes, self.weights)]
        self.u = [self._random_unit(d_out, w) for (d_out, _), w in zip(shapes, self.weights)]
        self.blocks = orthonormalize([
            torch.randn(d_in, min(block_size, d_out, d_in), generator=self.generator, device=w.device, dtype=w.dtype)
            for (d_out, d_in), w in zip(shapes, self.weights)]) if method == "spectral" and warm_start else []
        self.warmed = False  # the first block step runs warmup_iters
        self.last_sigma: list[torch.Tensor | None] = [None] * len(self.weights)
        self._graph = None

    def _target_tensors(self) -> list[torch.Tensor]:
        """Targets as device tensors, so the step never leaves the device."""
        return [torch.tensor(t, device=w.device, dtype=w.dtype) for t, w in zip(self.targets, self.weights)]

    def _random_unit(self, n: int, like: torch.Tensor) -> torch.Tensor:
        x = torch.randn(n, generator=self.generator, device=like.device, dtype=like.dtype)
        return x / torch.linalg.vector_norm(x)

    @torch.no_grad()
    def step(self) -> None:
        """Apply the scaling to every weight, in place."""
        if self.method == "none" or not self.weights:
            return
        with self._full_precision():
            if self.cuda_graph and self.warmed:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
                return
            self._step()

    def _full_precision(self):
        """Autocast off: a step called inside a user's autocast region must not run in bf16."""
        return torch.autocast(device_type=self.weights[0].device.type, enabled=False)

    def _step(self) -> None:
        if self.method == "frobenius":
            norms = frobenius_norms(self.weights)
            torch._foreach_mul_(self.weights, torch._foreach_div(self._target_t, norms))
        elif not self.warm_start:
            for i, w in enumerate(self.weights):
                mat = matrix_view(w)
                sigma, u, v = self._seed_estimate(mat)
                mat.addr_(u * (self._target_t[i] - sigma), v)
                self.u[i], self.v[i], self.last_sigma[i] = u, v, sigma
        else:
            mats = [matrix_view(w) for w in self.weights]
            top, blocks = self._block_estimate(mats)
            for i, (mat, (sigma, u, v)) in enumerate(zip(mats, top)):
                mat.addr_(u * (self._target_t[i] - sigma), v)
                self.blocks[i].copy_(blocks[i])  # in place: a captured graph reads these buffers
                self.u[i], self.v[i], self.last_sigma[i] = u, v, sigma
        self.warmed = True

    def _capture(self) -> None:
        """Record one step as a CUDA graph on a side stream (weights and blocks are static buffers)."""
        stream = torch.cuda.Stream(device=self.weights[0].device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm the libraries' handles on this stream; changes no state
            if self.method == "spectral":
                self._block_estimate([matrix_view(w) for w in self.weights])
            else:
                frobenius_norms(self.weights)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self._step()
        self._graph = graph

    def _block_estimate(self, mats: list[torch.Tensor]):
        """Top Ritz triples and the next blocks; reads, never writes, the scaler's state."""
        iters = self.power_iters if self.warmed else max(self.power_iters, self.warmup_iters)
        if self.tol <= 0:
            qs, zs, zgrams, blocks = subspace_iteration(mats, self.blocks, iters)
            return ritz_top(qs, zs, zgrams), blocks
        blocks, prev = self.blocks, None
        for _ in range(iters):
            qs, zs, zgrams, blocks = subspace_iteration(mats, blocks, 1)
            top = ritz_top(qs, zs, zgrams)
            sig = [float(s) for s, _, _ in top]  # host sync: the documented cost of tol > 0
            if prev is not None and all(abs(a - b) <= self.tol * a for a, b in zip(sig, prev)):
                break
            prev = sig
        return top, blocks

    def _seed_estimate(self, mat: torch.Tensor, generator: torch.Generator | None = None):
        v0 = self._random_unit(mat.shape[1], mat) if generator is None else \
            _unit(torch.randn(mat.shape[1], generator=generator, device=mat.device, dtype=mat.dtype))
        return gram_power_iteration(mat, v0, self.power_iters)

    @torch.no_grad()
    def estimate_sigmas(self) -> list[float]:
        """sigma_1 as the next step would estimate it, without changing any state.

        Used by the probes to record ``power_iter_rel_err`` against the exact value.
        """
        if self.method != "spectral":
            return [float("nan")] * len(self.weights)
        if self.warm_start:
            with self._full_precision():
                top, _ = self._block_estimate([matrix_view(w) for w in self.weights])
            return [float(s) for s, _, _ in top]
        probe_gen = torch.Generator(device=self.generator.device)
        probe_gen.manual_seed(12345)  # separate stream: probing must not shift training's randomness
        return [float(self._seed_estimate(matrix_view(w), probe_gen)[0]) for w in self.weights]

    def state_dict(self) -> dict:
        return {"method": self.method, "names": list(self.names), "targets": list(self.targets),
                "u": [t.clone() for t in self.u], "v": [t.clone() for t in self.v],
                "blocks": [b.clone() for b in self.blocks], "warmed": self.warmed,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.method or state["names"] != self.names:
            raise ValueError(f"scaler state is for method={state['method']!r} on {len(state['names'])} weights; "
                             f"this scaler is method={self.method!r} on {len(self.names)} weights")
        blocks = state.get("blocks", [])  # absent in states saved before block iteration
        if blocks and [tuple(b.shape) for b in blocks] != [tuple(b.shape) for b in self.blocks]:
            raise ValueError(f"scaler state holds blocks of shapes {[tuple(b.shape) for b in blocks]}; this scaler "
                             f"uses {[tuple(b.shape) for b in self.blocks]} (another block_size?)")
        self.targets = list(state["targets"])
        self._target_t = self._target_tensors()
        self.u = [t.to(w.device) for t, w in zip(state["u"], self.weights)]
        self.v = [t.to(w.device) for t, w in zip(state["v"], self.weights)]
        if blocks:
            self.blocks = [b.to(w.device).clone() for b, w in zip(blocks, self.weights)]
            self.warmed = bool(state.get("warmed", True))
        self.generator.set_state(state["generator"])
        self._graph = None  # a captured graph points at the old buffers


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x)


def make_scaler(model: nn.Module, config) -> NormScaler:
    """The scaler a RunConfig asks for (built right after init)."""
    from .models import scaled_parameters

    return NormScaler(scaled_parameters(model, config.scale_rule), method=config.method, targets=config.targets,
                      power_iters=config.power_iters, warm_start=config.warm_start, tol=config.power_tol,
                      seed=config.seed, block_size=config.power_block, cuda_graph=config.cuda_graph)
