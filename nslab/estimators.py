"""Estimators of the top singular triples that the spectral-family methods correct.

* :class:`BlockEstimator` (``warm_start=True``, the default): each layer keeps an orthonormal block
  V (d_in, k) between steps. One iteration is ``Q = orth(W V)``, ``Z = W^T Q``, ``V <- orth(Z)``: two
  passes over W. sigma_1 is the top Ritz value over every left block of the step's iterations (a
  block Krylov space of dimension iters x k), the largest singular value of ``Q^T W``: as many
  products as the last block alone. The next step's block is the top k Ritz vectors of that space.
  Together they are several times more accurate where the top of the spectrum is a tight cluster
  (late training under a spectral method): benchmarks/cluster_accuracy.py. The block
  matters: a single warm vector sits on the direction it has just corrected (an exact singular
  vector of value t) and never sees a sigma_2 > t growing elsewhere; the block holds the next k-1
  directions too. The first step runs ``warmup_iters`` iterations from a random block. A block that
  collapses (a zero or rank-deficient weight) is re-seeded from a fixed random block, so a weight
  that starts at zero (a ViT's class token) is still found and corrected.
* :class:`SeedEstimator` (``warm_start=False``): the seed's exact procedure, a fresh random v every
  call and ``power_iters`` iterations of ``v <- W^T W v / ||.||``.

Measured accuracy is in BENCHMARKS.md (``benchmarks/sigma_tracking.py``) and the tests.
"""
from __future__ import annotations

import torch

from .linalg import (gram_power_iteration, matrix_shape, orthonormalize, ritz_all, ritz_blocks, ritz_top,
                     subspace_iteration)


class BlockEstimator:
    """Warm-started block iteration over a fixed list of weights (viewed as matrices).

    Args:
        weights: the weights (for shapes, devices and dtypes).
        block_size: vectors per block (capped at min(d_out, d_in) per layer).
        iters: block iterations per step; ``warmup_iters`` on the first step.
        tol: > 0 stops early once every sigma changes by less, relatively (one host sync per iteration).
        generator: seeds the random start blocks and the re-seeding blocks.
        ritz_blocks: the next block is the top Ritz vectors of the step's Krylov space (``eigh``, which
            may sync with the host on CUDA), else orth(W^T W V_last) (for a captured CUDA graph).
    """

    def __init__(self, weights: list[torch.Tensor], block_size: int, iters: int, warmup_iters: int, tol: float,
                 generator: torch.Generator, ritz_blocks: bool = True):
        self.iters, self.warmup_iters, self.tol, self.ritz_blocks = iters, warmup_iters, tol, ritz_blocks
        shapes = [matrix_shape(w) for w in weights]
        self.blocks = orthonormalize([self._randn(d_in, min(block_size, d_out, d_in), w, generator)
                                      for (d_out, d_in), w in zip(shapes, weights)])
        # Fixed, so a captured CUDA graph replays them; random relative to any weight, which is all they need.
        self.noise = ([self._randn(d_out, b.shape[1], w, generator) for (d_out, _), b, w in zip(shapes, self.blocks, weights)],
                      [self._randn(*b.shape, w, generator) for b, w in zip(self.blocks, weights)])
        self.warmed = False

    @staticmethod
    def _randn(n: int, k: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, k, generator=generator, device=like.device, dtype=like.dtype)

    def _iterate(self, mats: list[torch.Tensor]):
        """(qs, zs, zgrams, next blocks, Ritz triples or None) after this step's iterations; reads, never
        writes, the state. With ``ritz_blocks`` the next blocks are the top Ritz vectors (one ``eigh``,
        whose triples also give the top one)."""
        iters = self.iters if self.warmed else max(self.iters, self.warmup_iters)
        prev: list[float] = []

        def settled(qs, zs, zgrams) -> bool:  # the top Ritz value of the growing Krylov space stopped rising
            sig = [float(s) for s, _, _ in ritz_top(qs, zs, zgrams)]  # host sync: the documented cost of tol > 0
            done = bool(prev) and all(abs(a - b) <= self.tol * a for a, b in zip(sig, prev))
            prev[:] = sig
            return done

        done = settled if self.tol > 0 else None

        qs, zs, zgrams, blocks = subspace_iteration(mats, self.blocks, iters, self.noise, done,
                                                    next_blocks=not self.ritz_blocks)
        triples = None
        if self.ritz_blocks:
            triples = ritz_all(qs, zs, zgrams)
            blocks = ritz_blocks(triples, [b.shape[1] for b in self.blocks], self.noise[1])
        return qs, zs, zgrams, blocks, triples

    def top(self, mats: list[torch.Tensor]):
        """([(sigma, u, v)] per matrix, next blocks): the top Ritz triples."""
        qs, zs, zgrams, blocks, triples = self._iterate(mats)
        if triples is None:
            return ritz_top(qs, zs, zgrams, blocks), blocks
        # Where sigma = 0 (a zero weight) v is the next block's first column, as ritz_top's fallback.
        return [(t[0], u[:, 0], torch.where(t[0] > 0, v[:, 0], b[:, 0])) for (t, u, v), b in zip(triples, blocks)], \
            blocks

    def all(self, mats: list[torch.Tensor]):
        """([(thetas (k,), U (m, k), V (n, k))] per matrix, next blocks): the top k Ritz triples (k = block size)."""
        qs, zs, zgrams, blocks, triples = self._iterate(mats)
        triples = triples or ritz_all(qs, zs, zgrams)
        k = [b.shape[1] for b in self.blocks]  # the top k of the Krylov space: the part that has converged
        return [(t[:n], u[:, :n], v[:, :n]) for (t, u, v), n in zip(triples, k)], blocks

    def commit(self, blocks: list[torch.Tensor]) -> None:
        """Keep the next blocks, in place (a captured CUDA graph reads these buffers)."""
        for mine, new in zip(self.blocks, blocks):
            mine.copy_(new)
        self.warmed = True

    def state_dict(self) -> dict:
        return {"blocks": [b.clone() for b in self.blocks], "noise_left": [n.clone() for n in self.noise[0]],
                "noise_right": [n.clone() for n in self.noise[1]], "warmed": self.warmed}

    def load_state_dict(self, state: dict, weights: list[torch.Tensor]) -> None:
        blocks = state.get("blocks", [])
        if [tuple(b.shape) for b in blocks] != [tuple(b.shape) for b in self.blocks]:
            raise ValueError(f"scaler state holds blocks of shapes {[tuple(b.shape) for b in blocks]}; this scaler "
                             f"uses {[tuple(b.shape) for b in self.blocks]} (another power_block?)")
        self.blocks = [b.to(w.device).clone() for b, w in zip(blocks, weights)]
        if "noise_left" in state:
            self.noise = tuple([n.to(w.device).clone() for n, w in zip(state[key], weights)]
                               for key in ("noise_left", "noise_right"))
        self.warmed = bool(state.get("warmed", True))


class SeedEstimator:
    """The seed code's estimate: ``power_iters`` cold iterations on W^T W from a fresh random vector."""

    def __init__(self, iters: int, generator: torch.Generator):
        self.iters, self.generator = iters, generator

    def top(self, mats: list[torch.Tensor], generator: torch.Generator | None = None):
        gen = generator or self.generator
        out = []
        for mat in mats:
            v0 = torch.randn(mat.shape[1], generator=gen, device=mat.device, dtype=mat.dtype)
            out.append(gram_power_iteration(mat, v0 / torch.linalg.vector_norm(v0), self.iters))
        return out, None

    def commit(self, blocks) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, weights: list[torch.Tensor]) -> None:
        pass
