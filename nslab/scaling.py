"""Norm scaling: a projection of the weights applied after every optimizer step.

Usage from any training loop::

    scaler = NormScaler(scaled_parameters(model), method="spectral")
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        scaler.step()          # in place, under no_grad

Methods (W viewed as a matrix (d_out, d_in); convs as (out, in*kh*kw)):

* ``frobenius``: ``W <- W * t / ||W||_F`` with ``t = ||W||_F`` right after init.
* ``spectral``: estimate the top singular triple (sigma_1, u_1, v_1) by power
  iteration, then ``W <- W + (t - sigma_1) u_1 v_1^T`` (two-sided: it also raises
  sigma_1 when it is below target). With exact singular vectors the new W has
  ``t`` as a singular value along (u_1, v_1) and every other singular pair unchanged;
  sigma_2 may still exceed ``t``.

Spectral targets: ``per_layer`` gives layer k ``sqrt(d_out/d_in)`` (its init
spectral norm, what the blog's text describes); ``first_layer`` gives every layer
the first scaled layer's target (what the authors' code ran, see NOTES.md).

Power iteration. ``warm_start=True`` (default) keeps u, v between steps, so a
couple of iterations per step track sigma_1 closely (relative error typically
1e-4..1e-6 after the first few hundred steps; recorded per epoch as
``power_iter_rel_err``). ``warm_start=False`` is the seed's exact procedure: a fresh
random v each call, ``power_iters`` iterations on W^T W, ``sigma = sqrt(||W^T W v||)``;
with 500 iterations its error is about 2e-4 where sigma_2/sigma_1 = 0.997, 4e-2 with 10.
``tol > 0`` stops early once sigma changes by less than ``tol`` relative (one host
sync per iteration: keep it 0 on GPUs).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import METHODS, TARGETS
from .models import matrix_shape


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


def power_iteration(w: torch.Tensor, v: torch.Tensor, iters: int, tol: float = 0.0):
    """Alternating power iteration on a matrix w (m, n) from a unit vector v (n,).

    Returns (sigma, u, v): sigma = ||w^T u|| with u = w v / ||w v||, a lower bound on
    sigma_1 that converges to it; no host synchronisation unless ``tol > 0``.
    """
    sigma = prev = None
    for _ in range(iters):
        u = torch.nn.functional.normalize(w @ v, dim=0)
        wtu = w.t() @ u
        sigma = torch.linalg.vector_norm(wtu)
        v = wtu / sigma
        if tol > 0:
            if prev is not None and abs(float(sigma) - float(prev)) <= tol * float(sigma):
                break
            prev = sigma
    return sigma, u, v


def gram_power_iteration(w: torch.Tensor, v: torch.Tensor, iters: int):
    """The seed's procedure: iterate v <- W^T W v / ||.||, then sigma = sqrt(||W^T W v||), u = W v / sigma."""
    for _ in range(iters):
        v = torch.nn.functional.normalize(w.t() @ (w @ v), dim=0)
    sigma = torch.linalg.vector_norm(w.t() @ (w @ v)).sqrt()
    u = (w @ v) / sigma
    return sigma, u, v


class NormScaler:
    """Frobenius or spectral norm scaling of a fixed list of weights.

    Args:
        params: (name, weight) pairs, e.g. from :func:`nslab.models.scaled_parameters`.
            Frobenius targets are the weights' norms at construction: build it right
            after init.
        method: ``"none"``, ``"frobenius"`` or ``"spectral"``.
        targets: spectral targets, ``"per_layer"`` or ``"first_layer"``.
        power_iters: iterations per step (>= 1).
        warm_start: keep singular vectors between steps (state saved by ``state_dict``).
        tol: relative early-stopping tolerance for sigma (0: run all iterations).
        seed: seeds the random start vectors.
    """

    def __init__(self, params, method: str = "spectral", targets: str = "per_layer",
                 power_iters: int = 2, warm_start: bool = True, tol: float = 0.0, seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not allowed: choose one of {list(METHODS)}")
        if not (isinstance(power_iters, int) and power_iters >= 1):
            raise ValueError(f"power_iters={power_iters!r} is not allowed: an integer >= 1")
        if tol < 0:
            raise ValueError(f"tol={tol!r} is not allowed: must be >= 0")
        self.names = [n for n, _ in params]
        self.weights = [p for _, p in params]
        self.method, self.targets_rule = method, targets
        self.power_iters, self.warm_start, self.tol = power_iters, warm_start, tol
        shapes = [matrix_shape(w) for w in self.weights]
        device = self.weights[0].device if self.weights else torch.device("cpu")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        with torch.no_grad():
            if method == "frobenius":
                self.targets = [float(torch.linalg.vector_norm(w)) for w in self.weights]
            elif method == "spectral":
                self.targets = spectral_targets(shapes, targets)
            else:
                self.targets = [float("nan")] * len(self.weights)
        # Targets as device tensors so the step never leaves the device.
        self._target_t = [torch.tensor(t, device=w.device, dtype=w.dtype) for t, w in zip(self.targets, self.weights)]
        self.v = [self._random_unit(d_in, w) for (_, d_in), w in zip(shapes, self.weights)]
        self.u = [self._random_unit(d_out, w) for (d_out, _), w in zip(shapes, self.weights)]
        self.last_sigma: list[torch.Tensor | None] = [None] * len(self.weights)

    def _random_unit(self, n: int, like: torch.Tensor) -> torch.Tensor:
        x = torch.randn(n, generator=self.generator, device=like.device, dtype=like.dtype)
        return x / torch.linalg.vector_norm(x)

    @torch.no_grad()
    def step(self) -> None:
        """Apply the scaling to every weight, in place."""
        if self.method == "frobenius":
            norms = torch._foreach_norm(self.weights)
            torch._foreach_mul_(self.weights, torch._foreach_div(self._target_t, norms))
        elif self.method == "spectral":
            for i, w in enumerate(self.weights):
                mat = matrix_view(w)
                sigma, u, v = self._estimate(i, mat)
                mat.addr_(u * (self._target_t[i] - sigma), v)
                self.u[i], self.v[i], self.last_sigma[i] = u, v, sigma

    def _estimate(self, i: int, mat: torch.Tensor, generator: torch.Generator | None = None):
        if self.warm_start:
            return power_iteration(mat, self.v[i], self.power_iters, self.tol)
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
        probe_gen = torch.Generator(device=self.generator.device)
        probe_gen.manual_seed(12345)  # separate stream: probing must not shift training's randomness
        return [float(self._estimate(i, matrix_view(w), probe_gen)[0]) for i, w in enumerate(self.weights)]

    def state_dict(self) -> dict:
        return {"method": self.method, "names": list(self.names), "targets": list(self.targets),
                "u": [t.clone() for t in self.u], "v": [t.clone() for t in self.v],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.method or state["names"] != self.names:
            raise ValueError(f"scaler state is for method={state['method']!r} on {len(state['names'])} weights; "
                             f"this scaler is method={self.method!r} on {len(self.names)} weights")
        self.targets = list(state["targets"])
        self._target_t = [torch.tensor(t, device=w.device, dtype=w.dtype) for t, w in zip(self.targets, self.weights)]
        self.u = [t.to(w.device) for t, w in zip(state["u"], self.weights)]
        self.v = [t.to(w.device) for t, w in zip(state["v"], self.weights)]
        self.generator.set_state(state["generator"])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x)


def make_scaler(model: nn.Module, config) -> NormScaler:
    """The scaler a RunConfig asks for (built right after init)."""
    from .models import scaled_parameters

    return NormScaler(scaled_parameters(model, config.scale_rule), method=config.method, targets=config.targets,
                      power_iters=config.power_iters, warm_start=config.warm_start, tol=config.power_tol,
                      seed=config.seed)
