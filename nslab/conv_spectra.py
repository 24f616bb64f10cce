"""Convolutions as operators: their exact singular values, their top value, and the input each conv sees.

A conv weight K (out, in/groups, kh, kw) applied to a feature map x (in, h, w) is a linear map
A: R^(in*h*w) -> R^(out*ho*wo). nslab's other probes view K as the matrix (out, in*kh*kw); that
matrix's top singular value is not ||A||_2, the layer's Lipschitz constant, and can differ from it by
up to about sqrt(kh*kw). This module gives the operator's own spectrum.

Circular padding, stride 1 (Sedghi, Gupta & Long 2019, "The Singular Values of Convolutional Layers",
ICLR, Theorem 6): A is doubly block circulant, so the 2-D DFT block-diagonalises it. Its singular
values are the union, over the h*w spatial frequencies (f, g), of the singular values of the
(out x in) matrices  K_hat(f, g) = sum_{a,b} K[:, :, a, b] exp(-2 pi i (f*a*dh/h + g*b*dw/w)),
the FFT of the kernel zero-padded to h x w (a kernel longer than the input wraps around and adds up).

Stride s (exact, by the polyphase decomposition): with h = s*m, split the input into its s*s phases
x_(r,t)[c, i, j] = x[c, s*i + r, s*j + t]. Tap (a, b) reads phase (a*dh mod s, b*dw mod s) at offset
(floor(a*dh/s), floor(b*dw/s)), so the strided conv is a stride-1 circular conv on m x m from
in*s*s channels: its blocks are (out x in*s*s) matrices at the m*m output frequencies. 1x1
downsample convs are the case kh = kw = 1. The amount of circular padding only shifts the input
circularly, a unitary map, so it never changes a singular value; "circular" here is the conv that
nn.Conv2d(padding_mode="circular") computes for "same" convs (2*padding = dilation*(kernel-1)).

Zero padding (what torchvision's ResNets use) has no closed form. Embedding x (zeros around it) in a
grid of N >= h + padding (a multiple of the stride) makes the zero-padded conv R A_N E, with E an
isometric embedding, R a restriction to the real outputs and A_N the circular conv on N x N; so
sigma_i(zero-padded) <= sigma_i(A_N) for every i (singular values of a submatrix interlace).
``padding_mode="zeros"`` returns that upper bound; it is exact where no tap ever reads padding
(1x1 convs with padding 0), and tests measure its slack against dense operators.

Real kernels give K_hat(-f, -g) = conj(K_hat(f, g)), so only the rfft half of the frequencies is
decomposed; the full spectrum counts the others twice.

The top value alone (the default probes): ||A||_2 = max over blocks of sigma_1(block), found by
``steps`` Lanczos steps on each block's smaller Gram matrix, all blocks (and all layers whose blocks
have one shape) at once, without host synchronisation. Lanczos, not power iteration: the blocks of an
orthogonally initialised conv have flat spectra, where 100 power iterations still left a relative
error of 7.6e-4 on ResNet34 (measured), while 32 Lanczos steps (polynomial degree 31, with
Chebyshev-like acceleration; Golub & Van Loan, "Matrix Computations", 10.1) reach ~1e-6. Each step
is a batched matrix-vector product, bandwidth-bound, so cost grows with the blocks' size
(ho*wo*out*in*sh*sw/2 complex numbers per layer), not with the kernel's.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

PADDING_MODES = ("circular", "zeros")
SPECTRUM_METHODS = ("svd", "gram")


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair):
        raise ValueError(f"{name}={value!r} is not allowed: an integer >= {minimum} or a pair of them")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """How a conv layer is applied in its model: the input it sees and its arguments.

    ``input_size`` is the (h, w) of the feature map reaching the layer; ``padding_mode`` is the
    module's own boundary ("zeros" for torchvision). Pass ``**geometry.kwargs()`` to the functions
    here and choose ``padding_mode`` separately.
    """

    input_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"

    def kwargs(self) -> dict:
        out = asdict(self)
        del out["padding_mode"]
        return out


def check_geometry(weight, input_size, stride=1, padding=0, dilation=1, groups=1) -> ConvGeometry:
    """The validated geometry of ``weight`` (padding_mode left at its default): refuses bad input before any work."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or not weight.is_floating_point():
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight={got} is not allowed: a floating conv weight of shape (out, in/groups, kh, kw)")
    geo = ConvGeometry(_pair(input_size, "input_size", 1), _pair(stride, "stride", 1),
                       _pair(padding, "padding", 0), _pair(dilation, "dilation", 1), groups)
    if not (isinstance(groups, int) and groups >= 1 and weight.shape[0] % groups == 0):
        raise ValueError(f"groups={groups!r} is not allowed: a positive divisor of out={weight.shape[0]}")
    for n, p, d, k, s in zip(geo.input_size, geo.padding, geo.dilation, weight.shape[2:], geo.stride):
        if n + 2 * p - d * (k - 1) < 1:
            raise ValueError(f"input_size={geo.input_size} is too small for kernel {tuple(weight.shape[2:])} "
                             f"with padding {geo.padding} and dilation {geo.dilation}: no output")
    return geo


def output_size(weight: torch.Tensor, geo: ConvGeometry, padding_mode: str) -> tuple[int, int]:
    """(ho, wo): n/s for the circular operator, nn.Conv2d's formula for zero padding."""
    if padding_mode == "circular":
        return geo.input_size[0] // geo.stride[0], geo.input_size[1] // geo.stride[1]
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in  # type: ignore[return-value]
                 zip(geo.input_size, geo.padding, geo.dilation, weight.shape[2:], geo.stride))


def _grid(weight: torch.Tensor, geo: ConvGeometry, padding_mode: str) -> tuple[int, int]:
    """The circular grid whose spectrum is returned: the input itself, or the zero-padding embedding."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} is not allowed: choose one of {list(PADDING_MODES)}")
    if padding_mode == "circular":
        for n, s in zip(geo.input_size, geo.stride):
            if n % s:
                raise ValueError(f"input_size={geo.input_size} is not allowed with stride={geo.stride} and circular "
                                 f"padding: the polyphase decomposition needs sizes divisible by the stride")
        return geo.input_size
    grid = []
    for n, p, s, n_out in zip(geo.input_size, geo.padding, geo.stride, output_size(weight, geo, "zeros")):
        need = max(n + p, s * n_out)  # no tap wraps onto real input; every real output has its own slot
        grid.append(-(-need // s) * s)
    return tuple(grid)  # type: ignore[return-value]


def _polyphase_kernel(weight: torch.Tensor, grid: tuple[int, int], geo: ConvGeometry) -> torch.Tensor:
    """(out, in_g, sh, sw, mh, mw): each tap at its input phase (r) and offset (q), folded modulo m."""
    out, cin, kh, kw = weight.shape
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    mh, mw = grid[0] // sh, grid[1] // sw
    a = torch.arange(kh, device=weight.device) * dh
    b = torch.arange(kw, device=weight.device) * dw
    flat = ((((a % sh)[:, None] * sw + (b % sw)[None, :]) * mh + ((a // sh) % mh)[:, None]) * mw
            + ((b // sw) % mw)[None, :])
    k = weight.new_zeros(out, cin, sh * sw * mh * mw)
    k.index_add_(2, flat.reshape(-1), weight.reshape(out, cin, kh * kw))
    return k.view(out, cin, sh, sw, mh, mw)


def fourier_blocks(weight: torch.Tensor, geo: ConvGeometry, padding_mode: str = "circular",
                   dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator's diagonal blocks and how often each occurs.

    Returns ``blocks`` (F * groups, out/groups, in/groups * sh * sw) complex, F = mh * (mw//2 + 1) rfft
    frequencies of the output grid (mh, mw), and ``mult`` (F * groups,) in {1, 2}: the operator's
    singular values are those of every block, each counted ``mult`` times.
    """
    geo = check_geometry(weight, **geo.kwargs())
    grid = _grid(weight, geo, padding_mode)
    w = weight.detach().to(dtype or (torch.float64 if weight.dtype == torch.float64 else torch.float32))
    k = _polyphase_kernel(w, grid, geo)
    g, (out, cin, sh, sw, mh, mw) = geo.groups, k.shape
    khat = torch.fft.rfft2(k)  # (out, cin, sh, sw, mh, mwr)
    mwr = khat.shape[-1]
    blocks = (khat.view(g, out // g, cin, sh, sw, mh, mwr).permute(5, 6, 0, 1, 2, 3, 4)
              .reshape(mh * mwr * g, out // g, cin * sh * sw))
    col = torch.arange(mwr, device=w.device)
    twice = (col > 0) & (2 * col != mw)  # their conjugate partner (-f, mw - col) is not in the rfft half
    mult = (1 + twice.long()).repeat(mh).repeat_interleave(g)
    return blocks, mult


def conv_singular_values(weight: torch.Tensor, input_size, stride=1, padding=0, dilation=1, groups: int = 1,
                         padding_mode: str = "circular", method: str = "svd") -> torch.Tensor:
    """All singular values of the conv ``weight`` as an operator on (in, h, w) inputs, descending.

    Args:
        weight: (out, in/groups, kh, kw), any device; the work stays on it.
        input_size, stride, padding, dilation, groups: as nn.Conv2d (``input_size`` = (h, w)
            of the input, an int for square); ``**ConvGeometry.kwargs()`` fills them.
        padding_mode: ``"circular"``: exact (Sedghi et al. 2019; strides by the polyphase
            decomposition; needs h, w divisible by the stride). ``"zeros"``: an upper bound on each
            singular value of the zero-padded conv (see the module docstring); exact for 1x1 convs.
        method: ``"svd"`` (``torch.linalg.svdvals`` of each block) or ``"gram"`` (eigenvalues of
            each block's smaller Gram matrix in float64, as ``nslab.probes``).

    Returns (mh * mw * groups * min(out/groups, in/groups * sh * sw),) float, mh x mw the output
    grid: for circular padding, as many as the operator's rank allows (min(out*ho*wo, in*h*w)).
    """
    if method not in SPECTRUM_METHODS:
        raise ValueError(f"method={method!r} is not allowed: choose one of {list(SPECTRUM_METHODS)}")
    geo = check_geometry(weight, input_size, stride, padding, dilation, groups)
    blocks, mult = fourier_blocks(weight, geo, padding_mode, torch.float64 if method == "gram" else None)
    if method == "svd":
        sv = torch.linalg.svdvals(blocks)
    else:
        gram = blocks.mH @ blocks if blocks.shape[-1] <= blocks.shape[-2] else blocks @ blocks.mH
        sv = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    sv = sv.repeat_interleave(mult, dim=0).reshape(-1)
    return sv.sort(descending=True).values


def conv_operator_frobenius(weight: torch.Tensor, input_size, stride=1, padding=0, dilation=1, groups: int = 1,
                            padding_mode: str = "circular") -> float:
    """||A||_F of the operator, exactly, in float64.

    Circular: every output position sees every tap once, so ||A||_F^2 = ho*wo*||K||_F^2 (taps that
    wrap onto the same input add up first). Zeros: tap (a, b) is counted at the outputs whose input
    ``s*i + d*a - p`` lies inside, ``||A||_F^2 = sum K[o,c,a,b]^2 n_h(a) n_w(b)``.
    """
    geo = check_geometry(weight, input_size, stride, padding, dilation, groups)
    return float(_frobenius(weight, geo, padding_mode))


def _frobenius(weight: torch.Tensor, geo: ConvGeometry, padding_mode: str) -> torch.Tensor:
    """||A||_F as a 0-dim float64 tensor on the weight's device."""
    w = weight.detach().double()
    grid = _grid(w, geo, padding_mode)  # validates padding_mode
    if padding_mode == "circular":
        k = _polyphase_kernel(w, grid, geo)
        return torch.linalg.vector_norm(k) * (grid[0] // geo.stride[0] * grid[1] // geo.stride[1]) ** 0.5
    counts = []
    for n, p, d, s, k, n_out in zip(geo.input_size, geo.padding, geo.dilation, geo.stride, w.shape[2:],
                                    output_size(w, geo, padding_mode)):
        pos = s * torch.arange(n_out, device=w.device)[:, None] + d * torch.arange(k, device=w.device)[None, :] - p
        counts.append(((pos >= 0) & (pos < n)).sum(0).double())
    return ((w**2) * counts[0][:, None] * counts[1][None, :]).sum().sqrt()


def lanczos_top(blocks: torch.Tensor, steps: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """sigma_1 of each block (B, m, n), real or complex, as (B,) real: from below, exact as steps grow.

    ``steps`` Lanczos steps on the smaller Gram matrix from a random start (the three-term
    recurrence, no reorthogonalisation: in floating point the Ritz values of the tridiagonal matrix
    still lie within the spectrum up to rounding (Paige 1980), so the top one never exceeds
    sigma_1^2 beyond rounding; lost orthogonality only repeats converged values). Blocks whose
    smaller side is <= ``steps`` get ``torch.linalg.svdvals`` instead (exact, and cheaper there).
    """
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps={steps!r} is not allowed: an integer >= 1")
    b = blocks.mH if blocks.shape[-2] < blocks.shape[-1] else blocks  # B^H B is the smaller Gram
    nb, _, n = b.shape
    if n <= steps:
        return torch.linalg.svdvals(b)[..., 0]
    # Real arithmetic: q = [Re q, Im q] as 2 columns (B, n, 2); B q and B^H y are two real batched
    # products each (torch's CPU complex bmm copies every matrix of the batch at every product).
    parts = [b.real.contiguous(), b.imag.contiguous()] if b.is_complex() else [b]
    real = parts[0].dtype
    # A block whose Krylov space is exhausted (beta at rounding level, e.g. a flat spectrum at
    # init) stops there: its leading tridiagonal block then holds exact eigenvalues, while going
    # on would build T from rounding noise (measured: 2.7e-5 too high on a 1x1 conv at init).
    tol = 20 * math.sqrt(n) * torch.finfo(real).eps
    q = torch.randn(nb, n, len(parts), generator=generator, device=b.device, dtype=real)
    q = q / torch.linalg.vector_norm(q, dim=(-2, -1), keepdim=True)
    prev, beta = torch.zeros_like(q), torch.zeros(nb, 1, 1, device=b.device, dtype=real)
    alive, scale = torch.ones(nb, 1, 1, device=b.device, dtype=torch.bool), torch.zeros_like(beta)
    alphas, betas = [], []
    for _ in range(steps):
        w = _gram_product(parts, q)
        alpha = (q * w).sum((-2, -1), keepdim=True)  # Re(q^H B^H B q)
        w = w - alpha * q - beta * prev
        beta = torch.linalg.vector_norm(w, dim=(-2, -1), keepdim=True)
        scale = torch.maximum(scale, alpha.abs())
        alphas.append(torch.where(alive, alpha, 0).reshape(nb))
        alive = alive & (beta > tol * scale)
        beta = torch.where(alive, beta, 0)
        betas.append(beta.reshape(nb))
        prev, q = q, torch.where(alive, w / beta.clamp_min(torch.finfo(real).tiny), q)
    a, off = torch.stack(alphas, -1), torch.stack(betas[:-1], -1)
    tri = torch.diag_embed(a) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.eigvalsh(tri)[..., -1].clamp_min(0).sqrt()


def _gram_product(parts: list[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    """B^H B q for B = parts[0] + i parts[1] (or real B = parts[0]), q as (B, n, 2) [Re, Im] columns."""
    if len(parts) == 1:
        return parts[0].mT @ (parts[0] @ q)
    re, im = parts
    p, s = re @ q, im @ q  # (B, m, 2)
    y = torch.stack([p[..., 0] - s[..., 1], p[..., 1] + s[..., 0]], -1)  # B q
    p, s = re.mT @ y, im.mT @ y
    return torch.stack([p[..., 0] + s[..., 1], p[..., 1] - s[..., 0]], -1)  # B^H y


def conv_operator_norm(weight: torch.Tensor, input_size, stride=1, padding=0, dilation=1, groups: int = 1,
                       padding_mode: str = "circular", steps: int | None = 32, seed: int = 0) -> torch.Tensor:
    """||A||_2, the top of :func:`conv_singular_values`; a 0-dim tensor on the weight's device.

    ``steps`` Lanczos steps on the blocks (:func:`lanczos_top`), or ``steps=None``: the exact top
    by ``svdvals`` of every block (on a CPU about as fast for blocks up to 256 x 256; on a GPU
    batched SVD runs matrix by matrix, Lanczos only does batched products).
    """
    geo = check_geometry(weight, input_size, stride, padding, dilation, groups)
    return conv_operator_norms({"w": weight}, {"w": geo}, padding_mode, steps, seed)["w"]


def conv_operator_norms(weights: Mapping[str, torch.Tensor], geometries: Mapping[str, ConvGeometry],
                        padding_mode: str = "circular", steps: int | None = 32,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """||A||_2 of every named conv weight (0-dim tensors on its device; no host synchronisation).

    Layers whose blocks share a shape go through one batched Lanczos run. ``seed`` fixes the
    random start vectors, so a probe is reproducible.
    """
    missing = [name for name in weights if name not in geometries]
    if missing:
        raise ValueError(f"weights {missing} have no geometry: pass conv_geometry(model)'s entries")
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, w in weights.items():
        geo = check_geometry(w, **geometries[name].kwargs())
        _grid(w, geo, padding_mode)  # refuses a bad padding_mode or size before any work
        block = (w.shape[0] // geo.groups, w.shape[1] * geo.stride[0] * geo.stride[1])  # (out/g, in/g * sh * sw)
        groups[(block, w.dtype == torch.float64, w.device)].append(name)
    out = {}
    for (_, _, device), names in groups.items():  # one group's blocks in memory at a time
        blocks = [fourier_blocks(weights[name], geometries[name], padding_mode)[0] for name in names]
        stack = torch.cat(blocks)
        if steps is None:
            tops = torch.linalg.svdvals(stack)[..., 0]
        else:
            tops = lanczos_top(stack, steps, torch.Generator(device=device).manual_seed(seed))
        for name, part in zip(names, tops.split([b.shape[0] for b in blocks])):
            out[name] = part.max()
        del blocks, stack
    return out


def conv_operator_stats(weights: Mapping[str, torch.Tensor], geometries: Mapping[str, ConvGeometry],
                        padding_mode: str = "circular", steps: int | None = 32, seed: int = 0) -> dict[str, dict]:
    """The ``layers.csv`` columns of each conv: ``op_sigma_max`` and ``op_stable_rank`` = ||A||_F^2 / ||A||_2^2.

    One host synchronisation for all layers. ||A||_F is exact (:func:`conv_operator_frobenius`);
    ``op_sigma_max`` is :func:`conv_operator_norms`'s value (Lanczos, or exact with ``steps=None``).
    """
    if not weights:
        return {}
    norms = conv_operator_norms(weights, geometries, padding_mode, steps, seed)
    fros = [_frobenius(w, check_geometry(w, **geometries[name].kwargs()), padding_mode) for name, w in weights.items()]
    values = torch.stack([torch.stack([norms[name].double(), fro]) for name, fro in zip(weights, fros)]).cpu()
    out = {}
    for name, (sigma, fro) in zip(weights, values.tolist()):
        out[name] = {"op_sigma_max": sigma, "op_stable_rank": fro**2 / sigma**2 if sigma > 0 else float("nan")}
    return out


@torch.no_grad()
def conv_geometry(model: nn.Module, image_size=32, in_channels: int | None = None) -> dict[str, ConvGeometry]:
    """The geometry of every ``nn.Conv2d`` in ``model``, keyed by its weight's parameter name.

    Runs one forward pass of a zero image (1, in_channels, h, w) on the model's device with
    pre-forward hooks, in eval mode (BatchNorm statistics untouched) and without grads; every
    module's train/eval flag is restored. ``in_channels`` defaults to the first conv's. Convs the
    forward never reaches are absent; a conv reached at two input sizes is refused.
    """
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        return {}
    h, w = _pair(image_size, "image_size", 1)
    first = next(iter(convs.values()))
    channels = in_channels if in_channels is not None else first.in_channels
    seen: dict[str, tuple[int, int]] = {}

    def hook(name):
        def record(module, args):
            size = tuple(args[0].shape[-2:])
            if seen.setdefault(name, size) != size:
                raise ValueError(f"conv {name!r} is applied to inputs of sizes {seen[name]} and {size}: "
                                 "its operator is not one matrix")
        return record

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in convs.items()]
    try:
        model.eval()
        model(torch.zeros(1, channels, h, w, device=first.weight.device, dtype=first.weight.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    out = {}
    for name, size in seen.items():
        m = convs[name]
        out[f"{name}.weight" if name else "weight"] = ConvGeometry(
            size, tuple(m.stride), _padding_amount(m), tuple(m.dilation), m.groups, m.padding_mode)
    return out


def _padding_amount(m: nn.Conv2d) -> tuple[int, int]:
    if isinstance(m.padding, str):  # "same" / "valid": the amounts nn.Conv2d resolved
        if m.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"padding='same' with an odd total padding {total} is uneven: not supported")
        return tuple(t // 2 for t in total)  # type: ignore[return-value]
    return tuple(m.padding)  # type: ignore[return-value]
