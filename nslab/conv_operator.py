"""Convolutions as operators in the spatial domain: the map, its adjoint, its top singular triple,
and the ``operator`` correction that sets a conv's operator norm to a target.

The operator A of a conv weight K (out, in/groups, kh, kw) at a :class:`ConvGeometry` maps input
feature maps (in, h, w) to output maps (out, ho, wo). ``padding_mode="zeros"`` is what nn.Conv2d
computes (torchvision's ResNets); ``"circular"`` is the operator of ``nslab.conv_spectra`` (Sedghi et
al. 2019): ``y[i] = sum_a K[a] x[(s*i + d*a - p) mod h]``, i < h/s, the circular pad split
(p, d*(k-1) - p), which is nn.Conv2d(padding_mode="circular") for "same" convs.

* :func:`conv_apply` is A (``F.conv2d``), :func:`conv_adjoint` is A^T (``F.conv_transpose2d``; for
  circular padding followed by the adjoint of the pad, which folds the borders back).
* :func:`kernel_gradient`: d<u, A(K) v>/dK, the kernel-space adjoint of the rank-one operator u v^T
  (``torch.nn.grad.conv2d_weight``), with <G, K> = u^T A v.
* :class:`ConvTopTriple`: (sigma, u, v) with u an output map and v an input map, by block
  iteration with Rayleigh-Ritz on A (``conv2d`` / ``conv_transpose2d`` on a batch of ``block_size``
  maps), warm-started between calls like ``nslab.estimators.BlockEstimator`` (and for the same reason:
  real kernels give every singular value at a non-self-conjugate frequency twice, and after a
  correction the next top is elsewhere; a block sees both).
* :func:`operator_correction_`: the in-place correction (below).

Why a first-order step, not a rank-one change or a rescaling. A rank-one change of A, the matrix
method's ``W + (t - sigma) u v^T``, is not a convolution. Among kernels, the smallest change (in
||.||_F) that moves the linearisation sigma ~ <G, K> of the top singular value to t is
``K <- K + (t - <G, K>) G / ||G||_F^2``, G = kernel_gradient(u, v) (a Polyak step). Where A is a
matrix (1x1 convs) G = u v^T in kernel space and this is exactly the matrix method's step, so the
``operator`` option reduces to the blog's correction there. ||A||_2 is convex in K and at least
u^T A v, so with exact singular vectors the new ||A||_2 is >= t, never below it: a step never
over-corrects, and sigma converges to t from above as steps repeat, one per training step, as the
matrix method (which also leaves a sigma_2 > t to the next step). Measured with exact vectors from
dense SVDs (tests/test_conv_operator.py, random kernels, stride 1 and 2, dilation, groups, both
paddings): 1-4 steps reach 1e-3 for targets 0.9-1.2 sigma_1, 3-16 steps for 0.5 sigma_1; the first
step lands within 3e-4 of 0.98 sigma_1 unless another singular value is near. A rescaling
K * t / sigma would be exact in one step, but changes every singular value and the kernel 3x more
for a 2 % correction (measured): it is the Frobenius method's shape, not the spectral one's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .conv_spectra import PADDING_MODES, ConvGeometry, check_geometry, output_size
from .linalg import orthonormalize, ritz_top

_TINY = 1e-30


def _check(weight: torch.Tensor, geometry: ConvGeometry, padding_mode: str) -> ConvGeometry:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} is not allowed: choose one of {list(PADDING_MODES)}")
    geo = check_geometry(weight, **geometry.kwargs())
    if padding_mode == "circular":
        for n, p, d, k, s in zip(geo.input_size, geo.padding, geo.dilation, weight.shape[2:], geo.stride):
            if n % s or not 0 <= p <= d * (k - 1) or d * (k - 1) > n:
                raise ValueError(f"circular operator needs input sizes divisible by the stride, padding <= "
                                 f"dilation*(kernel-1) <= input size; got input_size={geo.input_size}, "
                                 f"stride={geo.stride}, padding={geo.padding}, kernel={tuple(weight.shape[2:])}")
    return geo


def _circular_pads(weight: torch.Tensor, geo: ConvGeometry) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom): p before, d*(k-1) - p after, so the output is h/s."""
    (ph, pw), (dh, dw), (kh, kw) = geo.padding, geo.dilation, weight.shape[2:]
    return pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph


def conv_apply(weight: torch.Tensor, x: torch.Tensor, geometry: ConvGeometry, padding_mode: str = "zeros"):
    """A x for input maps x (B, in, h, w); returns (B, out, ho, wo)."""
    return _apply(weight, x, _check(weight, geometry, padding_mode), padding_mode)


def conv_adjoint(weight: torch.Tensor, y: torch.Tensor, geometry: ConvGeometry, padding_mode: str = "zeros"):
    """A^T y for output maps y (B, out, ho, wo); returns (B, in, h, w)."""
    return _adjoint(weight, y, _check(weight, geometry, padding_mode), padding_mode)


def kernel_gradient(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, geometry: ConvGeometry,
                    padding_mode: str = "zeros") -> torch.Tensor:
    """G = d(u^T A(K) v)/dK, shaped like ``weight``; u (out, ho, wo) or (1, ...), v (in, h, w) or (1, ...).

    <G, K'> = u^T A(K') v for every kernel K' (A is linear in K).
    """
    return _kernel_gradient(weight, u, v, _check(weight, geometry, padding_mode), padding_mode)


@torch.no_grad()
def operator_correction_(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, target, geometry: ConvGeometry,
                         padding_mode: str = "zeros", one_sided: bool = False) -> None:
    """One first-order step towards ||A||_2 = ``target`` along the top pair (u, v), in place.

    ``K <- K + (target - <G, K>) G / ||G||_F^2`` with G = :func:`kernel_gradient` (<G, K> = u^T A v,
    the sigma of an exact or Ritz pair). ``one_sided=True`` only lowers (``spectral_cap``): no change
    where u^T A v <= target. No host synchronisation; a ``target`` given as a 0-dim device tensor
    also avoids the host-to-device copy of a float (as needed inside a CUDA graph). See the module
    docstring for why this step.
    """
    _correct(weight, u, v, target, _check(weight, geometry, padding_mode), padding_mode, one_sided)


# Unchecked kernels: the geometry was validated by the caller (once, not at every training step).
def _apply(weight, x, geo: ConvGeometry, padding_mode: str):
    if padding_mode == "zeros":
        return F.conv2d(x, weight, None, geo.stride, geo.padding, geo.dilation, geo.groups)
    return F.conv2d(F.pad(x, _circular_pads(weight, geo), mode="circular"), weight, None, geo.stride, 0,
                    geo.dilation, geo.groups)


def _adjoint(weight, y, geo: ConvGeometry, padding_mode: str):
    size = geo.input_size
    if padding_mode == "zeros":
        # output_padding makes conv_transpose2d return exactly (h, w)
        extra = [n + 2 * p - d * (k - 1) - 1 - (m - 1) * s for n, p, d, k, m, s in
                 zip(size, geo.padding, geo.dilation, weight.shape[2:], y.shape[2:], geo.stride)]
        return F.conv_transpose2d(y, weight, None, geo.stride, geo.padding, extra, geo.groups, geo.dilation)
    extra = [n - 1 - (m - 1) * s for n, m, s in zip(size, y.shape[2:], geo.stride)]  # pads add up to d*(k-1)
    z = F.conv_transpose2d(y, weight, None, geo.stride, 0, extra, geo.groups, geo.dilation)
    left, right, top, bottom = _circular_pads(weight, geo)
    return _fold(_fold(z, 2, size[0], top, bottom), 3, size[1], left, right)


def _fold(z: torch.Tensor, dim: int, n: int, low: int, high: int) -> torch.Tensor:
    """Adjoint of circular padding along ``dim``: pad cells add back onto the cells they copied."""
    x = z.narrow(dim, low, n).clone()
    if low:
        x.narrow(dim, n - low, low).add_(z.narrow(dim, 0, low))
    if high:
        x.narrow(dim, 0, high).add_(z.narrow(dim, low + n, high))
    return x


def _kernel_gradient(weight, u, v, geo: ConvGeometry, padding_mode: str):
    u = u.reshape(1, weight.shape[0], *output_size(weight, geo, padding_mode))
    v = v.reshape(1, weight.shape[1] * geo.groups, *geo.input_size)
    if padding_mode == "zeros":
        return torch.nn.grad.conv2d_weight(v, weight.shape, u, geo.stride, geo.padding, geo.dilation, geo.groups)
    return torch.nn.grad.conv2d_weight(F.pad(v, _circular_pads(weight, geo), mode="circular"), weight.shape, u,
                                       geo.stride, 0, geo.dilation, geo.groups)


def _correct(weight, u, v, target, geo: ConvGeometry, padding_mode: str, one_sided: bool) -> None:
    g = _kernel_gradient(weight.detach(), u, v, geo, padding_mode)
    current = (g * weight).sum(dtype=torch.float64)  # float64 sums of float32 products
    target = target.to(torch.float64) if isinstance(target, torch.Tensor) else \
        torch.tensor(target, dtype=torch.float64, device=weight.device)
    step = (target - current) / \
        g.square().sum(dtype=torch.float64).clamp_min(_TINY)
    if one_sided:
        step = step.clamp_max(0)
    weight.add_(g * step.to(weight.dtype))


class ConvTopTriple:
    """Warm-started estimate of a conv operator's top singular triple (sigma, u, v).

    Keeps an orthonormal block of ``block_size`` input maps between calls (its state). One
    iteration: Q = orth(A V) (conv2d on the block as a batch), Z = A^T Q (conv_transpose2d),
    V <- orth(Z); the result is the top Ritz triple of span(Q), as ``nslab.estimators.BlockEstimator``
    (``nslab.linalg.ritz_top``): sigma = ||A^T u||, a lower bound on ||A||_2, and v = A^T u / sigma.

    Args:
        weight: the conv weight (out, in/groups, kh, kw); read at every call, never copied.
        geometry: its :class:`ConvGeometry` (``conv_geometry(model)[name]``).
        padding_mode: the operator's boundary; default the module's own (``geometry.padding_mode``).
        block_size: maps in the block (capped at the operator's smaller dimension).
        warmup_iters: iterations of the first call (from a random block).
        seed: seeds the random block.
    """

    def __init__(self, weight: torch.Tensor, geometry: ConvGeometry, padding_mode: str | None = None,
                 block_size: int = 8, warmup_iters: int = 30, seed: int = 0):
        for name, value in (("block_size", block_size), ("warmup_iters", warmup_iters)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name}={value!r} is not allowed: an integer >= 1")
        self.padding_mode = padding_mode or geometry.padding_mode
        self.geometry = geometry
        self._geo = _check(weight, geometry, self.padding_mode)  # validated once; the steps use it unchecked
        self.weight, self.warmup_iters = weight, warmup_iters
        self.in_shape = (weight.shape[1] * geometry.groups, *self._geo.input_size)
        self.out_shape = (weight.shape[0], *output_size(weight, self._geo, self.padding_mode))
        d_in, d_out = math.prod(self.in_shape), math.prod(self.out_shape)
        gen = torch.Generator(device=weight.device).manual_seed(seed)
        start = torch.randn(d_in, min(block_size, d_in, d_out), generator=gen, device=weight.device,
                            dtype=weight.dtype)
        self.block = orthonormalize([start])[0]
        self.warmed = False

    @torch.no_grad()
    def estimate(self, iters: int = 2, commit: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma (0-dim), u (out, ho, wo), v (in, h, w)) after ``iters`` iterations.

        ``commit=True`` advances the warm block (in place); ``commit=False`` leaves every state as it
        was (probes; a warm-up before a CUDA-graph capture). The first committed call runs
        ``warmup_iters``.
        """
        if not (isinstance(iters, int) and iters >= 1):
            raise ValueError(f"iters={iters!r} is not allowed: an integer >= 1")
        w, k = self.weight.detach(), self.block.shape[1]
        block = self.block
        for _ in range(iters if self.warmed else max(iters, self.warmup_iters)):
            y = _apply(w, block.t().reshape(k, *self.in_shape), self._geo, self.padding_mode)
            q = orthonormalize([y.reshape(k, -1).t()])[0]
            z = _adjoint(w, q.t().reshape(k, *self.out_shape), self._geo, self.padding_mode)
            z = z.reshape(k, -1).t()
            zgram = z.t() @ z
            block = orthonormalize([z], [zgram])[0]
        sigma, u, v = ritz_top([q], [z], [zgram])[0]
        if commit:
            self.block.copy_(block)  # in place: a captured CUDA graph reads this buffer
            self.warmed = True
        return sigma, u.reshape(self.out_shape), v.reshape(self.in_shape)

    @torch.no_grad()
    def project_(self, target, iters: int = 2, one_sided: bool = False) -> torch.Tensor:
        """Estimate, then :func:`operator_correction_` the weight towards ``target`` (a float or a 0-dim
        device tensor); returns the sigma used. Host-free, and the block is updated in place."""
        sigma, u, v = self.estimate(iters)
        _correct(self.weight, u, v, target, self._geo, self.padding_mode, one_sided)
        return sigma

    def state_dict(self) -> dict:
        return {"block": self.block.clone(), "warmed": self.warmed, "padding_mode": self.padding_mode}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["block"].shape) != tuple(self.block.shape) or state["padding_mode"] != self.padding_mode:
            raise ValueError(f"state holds a block of shape {tuple(state['block'].shape)} for padding_mode="
                             f"{state['padding_mode']!r}; this estimator uses {tuple(self.block.shape)}, "
                             f"{self.padding_mode!r}")
        self.block.copy_(state["block"])
        self.warmed = bool(state["warmed"])
