"""sigma_1 error of the block estimator in the hard regime: the top of the spectrum a tight cluster
just above the target, as late in training under a spectral method (the spectral-family issue).

A synthetic replay of that regime, the same for every estimator: W (n x n) starts with its top
``cluster`` singular values spread over [t, 1.01 t] and the rest below t; each step adds an
Adam-like update (``lr`` times a random sign matrix: it raises many singular values at once),
then the spectral correction sets the estimated top to t along the estimated vectors. The error
is (sigma_1 - estimate) / sigma_1 before each correction, against ``torch.linalg.svdvals``.

Compared in one process, from the same matrices: the Ritz value over the last block only (the
estimator before block Krylov) and over the block Krylov space of the step's iterations (nslab's
estimator), for blocks and iteration counts given on the command line.

    python benchmarks/cluster_accuracy.py                       # n=512, 150 steps
    python benchmarks/cluster_accuracy.py --n 2000 --steps 60   # the blog MLP's hidden width
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab import linalg  # noqa: E402
from nslab.bench import clustered_start  # noqa: E402


def estimate(w: torch.Tensor, block: torch.Tensor, iters: int, krylov: bool, ritz_block: bool = False):
    """(sigma, u, v, next block) by nslab's iteration, the Ritz step over the block Krylov space of the
    step's iterations (``krylov``) or over the last block alone (the estimator before, KRYLOV_DEPTH = 1);
    the next block the top Ritz vectors (``ritz_block``) or orth(W^T W V_last)."""
    saved, linalg.KRYLOV_DEPTH = linalg.KRYLOV_DEPTH, (linalg.KRYLOV_DEPTH if krylov else 1)
    try:
        qs, zs, zgrams, blocks = linalg.subspace_iteration([w], [block], iters)
    finally:
        linalg.KRYLOV_DEPTH = saved
    (sigma, u, v), = linalg.ritz_top(qs, zs, zgrams)
    if ritz_block:
        blocks = linalg.ritz_blocks(linalg.ritz_all(qs, zs, zgrams), [block.shape[1]])
    return sigma, u, v, blocks[0]


def replay(n: int, steps: int, lr: float, block: int, iters: int, krylov: bool, ritz_block: bool = False,
           t: float = 0.4, seed: int = 0) -> list[float]:
    """Relative sigma_1 errors, one per step, after ``steps // 3`` steps to settle."""
    w = clustered_start(n, t, max(8, n * 135 // 512), torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    b = linalg.orthonormalize([torch.randn(n, block, generator=g)])[0]
    for _ in range(10):  # warm-up, as the estimator's first step
        *_, b = estimate(w, b, iters, krylov, ritz_block)
    errors = []
    for _ in range(steps):
        w += lr * torch.sign(torch.randn(n, n, generator=g))
        sigma, u, v, b = estimate(w, b, iters, krylov, ritz_block)
        exact = float(torch.linalg.svdvals(w)[0])
        errors.append((exact - float(sigma)) / exact)
        w -= (sigma - t) * torch.outer(u, v)
    return errors[steps // 3:]


VARIANTS = {(False, False): "last block, orth(W^T W V) (before)", (True, False): "Krylov, orth(W^T W V)",
            (True, True): "Krylov, top Ritz vectors (nslab)"}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-5, help="update size per entry (Adam's step is about lr)")
    ap.add_argument("--blocks", default="32", help="comma list of block sizes")
    ap.add_argument("--iters", default="2,3", help="comma list of iterations per step")
    args = ap.parse_args(argv)
    print(f"# n={args.n}, {args.steps} steps, lr={args.lr}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'block':>5} {'iters':>5} {'Ritz space, next block':<34} {'median':>8} {'p90':>8} {'max':>8}")
    rows = []
    for block in map(int, args.blocks.split(",")):
        for iters in map(int, args.iters.split(",")):
            for krylov, ritz_block in VARIANTS:
                e = replay(args.n, args.steps, args.lr, block, iters, krylov, ritz_block)
                row = {"block": block, "iters": iters, "krylov": krylov, "ritz_block": ritz_block,
                       "median": statistics.median(e), "p90": sorted(e)[int(0.9 * (len(e) - 1))], "max": max(e)}
                rows.append(row)
                print(f"{block:>5} {iters:>5} {VARIANTS[krylov, ritz_block]:<34} {row['median']:>8.1e} "
                      f"{row['p90']:>8.1e} {row['max']:>8.1e}")
    return rows


if __name__ == "__main__":
    main()
