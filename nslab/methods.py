"""Scaling methods: one small class each, found by name in :data:`METHODS`.

A method is built right after init from the weights it controls, sets its per-layer targets from
them, and ``project_(weights)`` applies it in place after every ``optimizer.step()`` (under
``no_grad``, full precision: see nslab.scaling.NormScaler). Its state (estimator blocks) goes through
``state_dict``/``load_state_dict``. Adding a method is one class here plus its tests: the registry
feeds RunConfig's choices, the command line, papermill, grids, and the views read its targets from
the run's records (``target_norm``), never from its name.

========================  ========================================================================
``none``                  nothing
``frobenius``             W <- W t / ||W||_F, t = ||W||_F right after init (the blog)
``spectral``              W <- W + (t - sigma_1) u_1 v_1^T: two-sided rank-one correction (the blog)
``spectral_cap``          the same, only where sigma_1 > t: never raises sigma_1 (Miyato et al.'s sense)
``spectral_topk``         every Ritz value of the tracked block above t set to t, one rank-k update
``spectral_clip``         projection onto {sigma_max <= t}: every singular value above t becomes t
``orthogonal``            every nonzero singular value set to t: W <- t msign(W) (modula's projection)
``spectral_norm_param``   torch's spectral_norm parametrization times t, in the forward pass
========================  ========================================================================

Spectral targets (``targets``): ``per_layer`` sqrt(d_out/d_in) of the weight as a matrix (the blog's
text), ``first_layer`` the first weight's value for all (the authors' code), ``channels``
sqrt(c_out/c_in) for a conv (out, in, kh, kw) (the blog's proposed fix; Linear layers as per_layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .estimators import BlockEstimator, SeedEstimator
from .linalg import (batched, complete_polar, deficiency, frobenius_norm, frobenius_norms, matrix_shape,
                     matrix_view, msign, spectral_clip)

TARGETS = ("per_layer", "first_layer", "channels")


def spectral_targets(weights: list[torch.Tensor], rule: str = "per_layer") -> list[float]:
    """sigma*_k per weight by ``rule`` (see the module docstring)."""
    if rule not in TARGETS:
        raise ValueError(f"targets={rule!r} is not allowed: choose one of {list(TARGETS)}")
    shapes = [matrix_shape(w) for w in weights]
    per_layer = [math.sqrt(d_out / d_in) for d_out, d_in in shapes]
    if rule == "first_layer":
        return [per_layer[0]] * len(per_layer)
    if rule == "channels":
        return [math.sqrt(w.shape[0] / w.shape[1]) if w.dim() > 2 else t for w, t in zip(weights, per_layer)]
    return per_layer


@dataclass
class Options:
    """What a method may use besides the weights (from RunConfig / NormScaler's arguments).

    ``geometry``: for ``conv_norm="operator"``, the conv weights' ConvGeometry by name
    (nslab.conv_spectra.conv_geometry); ``names`` are the weights' names, in order.
    """

    targets: str = "per_layer"
    power_iters: int = 2
    warm_start: bool = True
    tol: float = 0.0
    block_size: int = 32
    warmup_iters: int = 100
    generator: torch.Generator | None = None
    conv_norm: str = "reshape"
    geometry: dict | None = None
    names: list[str] | None = None
    seed: int = 0
    capture: bool = False  # the step will be captured as a CUDA graph: no host syncs (no eigh)
    precision: str = "float32"  # the block estimator's large products (nslab.estimators.product_dtypes)


METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    METHODS[cls.name] = cls
    return cls


class Method:
    """Base class. ``target_norm``: what the per-layer ``targets`` bound ("spectral": sigma_max,
    "frobenius": ||W||_F, None: nothing); views draw target lines from it."""

    name: ClassVar[str] = ""
    target_norm: ClassVar[str | None] = "spectral"
    uses_estimator: ClassVar[bool] = False  # corrects from an estimate of the top triple (see _Corrected)
    operator_norm: ClassVar[bool] = False  # can correct a conv's operator norm (conv_norm="operator")
    needs_block: ClassVar[bool] = False  # uses the warm block (warm_start=True)
    syncs_host: ClassVar[bool] = False  # project_ reads a value on the host: no CUDA-graph capture
    in_forward: ClassVar[bool] = False  # applied in the forward pass (a parametrization), not after the step

    def __init__(self, weights: list[torch.Tensor], options: Options):
        self.options = options
        self.targets = self.initial_targets(weights)
        # Device tensors, so a step never leaves the device.
        self.target_t = [torch.tensor(t, device=w.device, dtype=w.dtype) for t, w in zip(self.targets, weights)]

    def initial_targets(self, weights: list[torch.Tensor]) -> list[float]:
        return spectral_targets(weights, self.options.targets)

    def capturable(self) -> bool:
        """Whether ``project_`` can be captured as a CUDA graph (it never waits for the host)."""
        return not self.syncs_host

    def warm_up(self, weights: list[torch.Tensor]) -> None:
        """Run the step's kernels once without changing any weight or state (before a CUDA-graph capture)."""
        self.project_([w.detach().clone() for w in weights])

    def project_(self, weights: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def estimate_sigmas(self, weights: list[torch.Tensor]) -> list[float]:
        """sigma_1 of each weight as the next step would estimate it (NaN: this method estimates none)."""
        return [float("nan")] * len(weights)

    def attach(self, named: list[tuple[str, nn.Parameter]], model: nn.Module) -> None:
        """Called once with the model, for methods that live in its forward pass."""

    def effective(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The weights the model computes with (what probes read)."""
        return weights

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, weights: list[torch.Tensor]) -> None:
        pass


@register
class NoScaling(Method):
    name, target_norm = "none", None

    def initial_targets(self, weights):
        return [float("nan")] * len(weights)

    def project_(self, weights):
        pass


@register
class Frobenius(Method):
    name, target_norm = "frobenius", "frobenius"

    def initial_targets(self, weights):
        return [frobenius_norm(w) for w in weights]  # float64: a float32 norm of 512x3072 is off by ~2e-5

    def project_(self, weights):
        norms = [n.clamp_min(1e-30) for n in frobenius_norms(weights)]  # a zero weight stays zero, not NaN
        torch._foreach_mul_(weights, torch._foreach_div(self.target_t, norms))


class _Corrected(Method):
    """Methods that correct the top of the spectrum from an estimate (block iteration or the seed's).

    With ``conv_norm="operator"`` (``spectral`` and ``spectral_cap``), conv weights are corrected as
    operators instead: a warm ConvTopTriple per conv and nslab.conv_operator's first-order step,
    which for a 1x1 conv is exactly the matrix step; other weights keep the matrix step.
    """

    uses_estimator: ClassVar[bool] = True

    def __init__(self, weights, options):
        super().__init__(weights, options)
        o = options
        if self.needs_block and not o.warm_start:
            raise ValueError(f"method={self.name!r} is not allowed with warm_start=False: it uses the warm block")
        self.operators = self._operators(weights, o)  # index -> ConvTopTriple
        matrices = [w for i, w in enumerate(weights) if i not in self.operators]
        self.matrix_index = [i for i in range(len(weights)) if i not in self.operators]
        self.estimator = (BlockEstimator(matrices, o.block_size, o.power_iters, o.warmup_iters, o.tol, o.generator,
                                         ritz_blocks=not o.capture, precision=o.precision)
                          if o.warm_start else SeedEstimator(o.power_iters, o.generator))

    def _operators(self, weights, o: Options) -> dict:
        if o.conv_norm == "reshape":
            return {}
        if o.conv_norm != "operator" or not self.operator_norm:
            raise ValueError(f"conv_norm={o.conv_norm!r} is not allowed with method={self.name!r}")
        if not o.warm_start:
            raise ValueError("conv_norm='operator' is not allowed with warm_start=False")
        if o.geometry is None or o.names is None:
            raise ValueError("conv_norm='operator' needs the convs' geometry (NormScaler(..., model=model))")
        from .conv_operator import ConvTopTriple

        return {i: ConvTopTriple(w, o.geometry[name], "circular", seed=o.seed + i)
                for i, (name, w) in enumerate(zip(o.names, weights)) if name in o.geometry and w.dim() == 4}

    def capturable(self) -> bool:  # the seed's estimate and tol > 0 read values on the host
        return super().capturable() and self.options.warm_start and self.options.tol <= 0

    def warm_up(self, weights):
        self.estimate_sigmas(weights)  # reads the weights and the block, commits nothing

    def project_(self, weights):
        for i, est in self.operators.items():
            est.project_(self.target_t[i], iters=self.options.power_iters, one_sided=self.one_sided)
        if not self.matrix_index:
            return
        mats = [matrix_view(weights[i]) for i in self.matrix_index]
        top, blocks = self.estimator.top(mats)
        for i, mat, (sigma, u, v) in zip(self.matrix_index, mats, top):
            mat.addr_(u * self.step_size(self.target_t[i], sigma), v)
        self.estimator.commit(blocks)

    one_sided: ClassVar[bool] = False

    def step_size(self, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def estimate_sigmas(self, weights):
        """sigma_1 as the next step estimates it: of the matrix, or of the operator for operator-corrected convs."""
        out = [float("nan")] * len(weights)
        for i, est in self.operators.items():
            out[i] = float(est.estimate(self.options.power_iters, commit=False)[0])
        mats = [matrix_view(weights[i]) for i in self.matrix_index]
        if not mats:
            return out
        if isinstance(self.estimator, SeedEstimator):  # a separate stream: probing must not shift training's
            top, _ = self.estimator.top(mats, torch.Generator(device=mats[0].device).manual_seed(12345))
        else:
            top, _ = self.estimator.top(mats)
        for i, (s, _, _) in zip(self.matrix_index, top):
            out[i] = float(s)
        return out

    def state_dict(self):
        state = self.estimator.state_dict()
        if self.operators:
            state["operators"] = {i: est.state_dict() for i, est in self.operators.items()}
        return state

    def load_state_dict(self, state, weights):
        self.estimator.load_state_dict(state, [weights[i] for i in self.matrix_index])
        for i, est in self.operators.items():
            est.load_state_dict(state["operators"][i])


@register
class Spectral(_Corrected):
    """The blog's step: sigma_1 goes to t along (u_1, v_1), up or down; sigma_2 > t stays for the next step."""

    name, operator_norm = "spectral", True

    def step_size(self, t, sigma):
        return t - sigma


@register
class SpectralCap(_Corrected):
    """One-sided: lowers sigma_1 to t where it is above, never raises it."""

    name, operator_norm, one_sided = "spectral_cap", True, True

    def step_size(self, t, sigma):
        return (t - sigma).clamp_max(0)


@register
class SpectralTopK(_Corrected):
    """Each of the top k Ritz values (k = power_block) above t set to t in one rank-k update; Ritz
    values below t are untouched. With an exact invariant block this is the top-k singular values
    above t set to t, the rest unchanged."""

    name, needs_block, syncs_host = "spectral_topk", True, True  # eigh of the small Ritz matrix may sync

    def project_(self, weights):
        mats = [matrix_view(w) for w in weights]
        triples, blocks = self.estimator.all(mats)
        for mat, t, (thetas, u, v) in zip(mats, self.target_t, triples):
            mat.add_((u * (t - thetas).clamp_max(0)) @ v.t())
        self.estimator.commit(blocks)


class _Projected(Method):
    """Methods that apply a matrix function by Newton-Schulz iterations, layers of one shape batched."""

    def project_(self, weights):
        mats = [matrix_view(w) for w in weights]
        for mat, out in zip(mats, batched(self.apply, mats, [t.reshape(1, 1) for t in self.target_t])):
            mat.copy_(out)

    def apply(self, mats: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """mats (B, m, n), targets (B, 1, 1) -> projected (B, m, n)."""
        raise NotImplementedError


@register
class SpectralClip(_Projected):
    """Projection onto {sigma_max <= t}: min(sigma_i, t) for every i (nslab.linalg.spectral_clip)."""

    name = "spectral_clip"

    def apply(self, mats, ts):
        return spectral_clip(mats, ts)


@register
class Orthogonal(_Projected):
    """Every singular value set to t: W <- t msign(W), the nearest matrix with all singular values t.

    A rank-deficient weight (a zero-initialised one) is completed with random directions
    (nslab.linalg.complete_polar): deciding that reads the deficiency on the host, once per step.
    """

    name, syncs_host = "orthogonal", True

    def apply(self, mats, ts):
        o = msign(mats)
        missing = deficiency(o) > 0.5
        if bool(missing.any()):  # host sync: a completion costs a second iteration, so only where needed
            r = torch.randn(o.shape, generator=self.options.generator, device=o.device, dtype=o.dtype)
            o = torch.where(missing[:, None, None], complete_polar(o, r), o)
        return ts * o


class _Scale(nn.Module):
    """Multiplies by a constant: composed after torch's spectral_norm, W / sigma becomes t W / sigma."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.t


@register
class SpectralNormParam(Method):
    """torch.nn.utils.parametrizations.spectral_norm (Miyato et al. 2018) times t, in the forward pass.

    The model computes with t W / sigma_hat(W), sigma_hat from one power iteration per training forward
    on warm vectors (torch's default); the optimizer updates the raw W. Probes read the effective
    weight; ``power_iter_rel_err`` compares sigma_hat with the exact sigma_max of the raw W.
    """

    name, in_forward = "spectral_norm_param", True

    def attach(self, named, model):
        from torch.nn.utils import parametrize
        from torch.nn.utils.parametrizations import spectral_norm

        self.modules = []
        for (name, _), t in zip(named, self.targets):
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            spectral_norm(module, attr)
            parametrize.register_parametrization(module, attr, _Scale(t))
            self.modules.append((module, attr))

    def project_(self, weights):
        pass

    def effective(self, weights):
        out = []
        for module, attr in self.modules:
            was = module.training
            module.eval()  # in training mode, reading the weight would run a power iteration
            out.append(getattr(module, attr).detach())
            module.train(was)
        return out

    def estimate_sigmas(self, weights):
        sigmas = []
        for (module, attr), w in zip(self.modules, weights):
            sn = getattr(module.parametrizations, attr)[0]
            mat = sn._reshape_weight_to_matrix(w.detach())
            sigmas.append(float(torch.vdot(sn._u, torch.mv(mat, sn._v))))
        return sigmas


def build(name: str, weights: list[torch.Tensor], options: Options) -> Method:
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not allowed: choose one of {list(METHODS)}")
    return METHODS[name](weights, options)
