"""Estimators of the top singular triples that the spectral-family methods correct.

* :class:`BlockEstimator` (``warm_start=True``, the default): each layer keeps a block V (d_in, k) of
  unit, mutually orthogonal vectors (its top right Ritz vectors) between steps. One iteration is
  ``Q = orth(W V)``, ``Z = W^T Q``, ``V <- orth(Z)``: two passes over W. sigma_1 is the top Ritz value over
  every left block of the step's iterations (a block Krylov space of dimension iters x k), the largest
  singular value of ``Q^T W``: as many products as the last block alone. The next step's block is the
  top k Ritz vectors of that space. Together they are several times more accurate where the top of the
  spectrum is a tight cluster (late training under a spectral method): benchmarks/cluster_accuracy.py.
  The block matters: a single warm vector sits on the direction it has just corrected (an exact
  singular vector of value t) and never sees a sigma_2 > t growing elsewhere; the block holds the next
  k-1 directions too. The first step runs ``warmup_iters`` iterations from a random block. A block
  that collapses (a zero or rank-deficient weight) is re-seeded from a fixed random block, so a weight
  that starts at zero (a ViT's class token) is still found and corrected. With ``precision="auto"``
  (NormScaler's and RunConfig's default) large float32 weights are multiplied through a bfloat16 copy
  where the hardware has bfloat16 (:func:`product_dtypes`): the products cost a third to a fifth, the
  step as a whole 0.55-0.68x on the blog's MLP (2-core CPU). The subspace is then found to bfloat16's
  accuracy, and sigma, u and v come from the float32 weight (one more pass, W^T u), so the estimate is
  still a Rayleigh quotient and the correction sets ||W^T u|| to t exactly.
* :class:`SeedEstimator` (``warm_start=False``): the seed's exact procedure, a fresh random v every
  call and ``power_iters`` iterations of ``v <- W^T W v / ||.||``.

Measured accuracy is in BENCHMARKS.md (``benchmarks/sigma_tracking.py``) and the tests.
"""
from __future__ import annotations

import torch

from .linalg import (gram_power_iteration, matrix_shape, orthonormalize, rayleigh, ritz_all, ritz_blocks,
                     ritz_top, subspace_iteration)


PRECISIONS = ("auto", "float32", "bfloat16")
AUTO_MIN_ENTRIES = 2**19  # "auto": smaller weights stay float32 (a 512 x 512 step costs the same either way)


def product_dtypes(precision: str, weights: list[torch.Tensor]) -> list[torch.dtype | None]:
    """The dtype of each weight's large products in the block estimator (None: the weight's own).

    ``auto`` is bfloat16 for float32 weights of at least 2^19 entries on a device that multiplies
    bfloat16 natively (a CUDA GPU of compute capability 8.0 or newer; a CPU with AVX-512 BF16 or AMX):
    there a 2000 x 2000 step costs 0.64x float32's (2-core Zen 4; BENCHMARKS.md). Smaller weights gain
    nothing, and where bfloat16 is emulated it is slower.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"power_precision={precision!r} is not allowed: choose one of {list(PRECISIONS)}")
    if precision == "float32":
        return [None] * len(weights)
    if precision == "bfloat16":
        return [None if w.dtype == torch.bfloat16 else torch.bfloat16 for w in weights]
    return [torch.bfloat16 if w.dtype == torch.float32 and w.numel() >= AUTO_MIN_ENTRIES and fast_bfloat16(w.device)
            else None for w in weights]


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        try:  # private helpers (torch >= 2.1); without them, assume not
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:
            return False
    return False


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
        precision: the iteration's large products (W times a block), one of :data:`PRECISIONS` (see
            :func:`product_dtypes`). A bfloat16 copy of a weight is refreshed every step; blocks, the Ritz
            step and the returned triples stay in the weight's precision: each sigma_i is the Rayleigh
            quotient ||W^T u_i|| of the weight itself (:func:`rayleigh`), one more pass over it.
    """

    def __init__(self, weights: list[torch.Tensor], block_size: int, iters: int, warmup_iters: int, tol: float,
                 generator: torch.Generator, ritz_blocks: bool = True, precision: str = "float32"):
        self.iters, self.warmup_iters, self.tol, self.ritz_blocks = iters, warmup_iters, tol, ritz_blocks
        self.product_dtypes = product_dtypes(precision, weights)
        self._copies: list[torch.Tensor | None] = []  # the low-precision weights, static buffers (CUDA graphs)
        shapes = [matrix_shape(w) for w in weights]
        self.blocks = orthonormalize([self._randn(d_in, min(block_size, d_out, d_in), w, generator)
                                      for (d_out, d_in), w in zip(shapes, weights)])
        # Fixed, so a captured CUDA graph replays them; random relative to any weight, which is all they need.
        self.noise = ([self._randn(d_out, b.shape[1], w, generator) for (d_out, _), b, w in zip(shapes, self.blocks, weights)],
                      [self._randn(*b.shape, w, generator) for b, w in zip(self.blocks, weights)])
        self.warmed = False

    @staticmethod
    def _randn(n: int, k: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random (n, k) block of unit Frobenius norm (what nslab.linalg.reseed adds)."""
        r = torch.randn(n, k, generator=generator, device=like.device, dtype=like.dtype)
        return r / torch.linalg.vector_norm(r)

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

        qs, zs, zgrams, blocks = subspace_iteration(self._for_products(mats), self.blocks, iters, self.noise, done,
                                                    next_blocks=not self.ritz_blocks)
        triples = None
        if self.ritz_blocks:
            ks = [b.shape[1] for b in self.blocks]  # the next block and top(), all() need no more
            triples = ritz_all(qs, zs, zgrams, ks)
            blocks = ritz_blocks(triples, ks, self.noise[1])
        return qs, zs, zgrams, blocks, triples

    def _for_products(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The matrices the products use: each of ``mats`` itself, or its low-precision copy refreshed now."""
        if not self._copies:
            self._copies = [None if dt is None else torch.empty(m.shape, device=m.device, dtype=dt)
                            for m, dt in zip(mats, self.product_dtypes)]
        for copy, m in zip(self._copies, mats):
            if copy is not None:
                copy.copy_(m)
        return [m if copy is None else copy for m, copy in zip(mats, self._copies)]

    def _exact(self, mats: list[torch.Tensor], triples: list, ks: list[int]) -> list:
        """Triples whose values and right vectors come from the weights themselves where the products were
        in low precision (:func:`rayleigh`), the Ritz triples elsewhere; the top ``ks[i]`` of each."""
        low = [i for i, dt in enumerate(self.product_dtypes) if dt is not None]
        out = [(t[:k], u[:, :k], v[:, :k]) for (t, u, v), k in zip(triples, ks)]
        for i, exact in zip(low, rayleigh([mats[i] for i in low], [out[i][1] for i in low])):
            out[i] = exact
        return out

    def top(self, mats: list[torch.Tensor]):
        """([(sigma, u, v)] per matrix, next blocks): the top Ritz triples."""
        qs, zs, zgrams, blocks, triples = self._iterate(mats)
        if triples is None:
            triples = [(s[None], u[:, None], v[:, None]) for s, u, v in ritz_top(qs, zs, zgrams, blocks)]
        # Where sigma = 0 (a zero weight) v is the next block's first column, as ritz_top's fallback.
        return [(t[0], u[:, 0], torch.where(t[0] > 0, v[:, 0], b[:, 0]))
                for (t, u, v), b in zip(self._exact(mats, triples, [1] * len(mats)), blocks)], blocks

    def all(self, mats: list[torch.Tensor]):
        """([(thetas (k,), U (m, k), V (n, k))] per matrix, next blocks): the top k Ritz triples (k = block size)."""
        qs, zs, zgrams, blocks, triples = self._iterate(mats)
        k = [b.shape[1] for b in self.blocks]  # the top k of the Krylov space: the part that has converged
        return self._exact(mats, triples or ritz_all(qs, zs, zgrams, k), k), blocks

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
            # As saved, bit for bit (a resumed run repeats the uninterrupted one); checkpoints from before
            # 2026-12-07 hold unnormalised blocks, brought to unit norm as _randn's.
            self.noise = tuple([_unit(n).to(w.device).clone() for n, w in zip(state[key], weights)]
                               for key in ("noise_left", "noise_right"))
        self.warmed = bool(state.get("warmed", True))


def _unit(block: torch.Tensor) -> torch.Tensor:
    """``block`` itself where its Frobenius norm is 1 to rounding, else scaled to it."""
    norm = float(torch.linalg.vector_norm(block))
    return block if abs(norm - 1) < 1e-4 else block / max(norm, 1e-30)


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
