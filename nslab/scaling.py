"""NormScaler: the weights, a scaling method (nslab.methods), and the optional CUDA-graph capture.

Usage from any training loop::

    scaler = NormScaler(scaled_parameters(model), method="spectral")   # right after init
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        scaler.step()          # in place, under no_grad, full precision

Weights are viewed as matrices (d_out, d_in); convs as (out, in*kh*kw). The methods, their
targets and what each guarantees are in nslab.methods; the estimators of the top singular triples
in nslab.estimators; the numerical kernels in nslab.linalg. A method that lives in the forward pass
(``spectral_norm_param``) needs the model: ``NormScaler(..., model=model)`` before the optimizer is
built.
"""
from __future__ import annotations

import torch
from torch import nn

from . import methods as _methods
from .linalg import gram_power_iteration, matrix_view, orthonormalize  # noqa: F401  (public kernels)
from .estimators import PRECISIONS
from .methods import METHODS, Options, spectral_targets  # noqa: F401


class NormScaler:
    """A scaling method applied to a fixed list of weights after every optimizer step.

    Args:
        params: (name, weight) pairs, e.g. from :func:`nslab.models.scaled_parameters`. Targets
            come from the weights at construction: build it right after init.
        method: a name in :data:`nslab.methods.METHODS`.
        targets: spectral targets, ``"per_layer"``, ``"first_layer"`` or ``"channels"``.
        power_iters: estimator iterations per step (>= 1): block iterations when ``warm_start``,
            else the seed's cold Gram power iterations.
        warm_start: keep a block of singular vectors between steps; False is the seed's procedure.
        tol: relative early-stopping tolerance for sigma (0: run all iterations; > 0 syncs the host).
        seed: seeds the random start vectors.
        block_size: vectors per block (>= 1; capped at min(d_out, d_in) per layer).
        warmup_iters: block iterations of the first step (from a random block).
        power_precision: the block estimator's large products: ``"auto"`` (bfloat16 for weights of 2^19
            entries or more where the device multiplies it in hardware, else float32), ``"float32"`` or
            ``"bfloat16"``. Blocks, the Ritz step and sigma stay float32: sigma is ||W^T u|| of the weight
            itself (nslab.estimators.product_dtypes).
        cuda_graph: capture the step as a CUDA graph after the first step (CUDA only).
        model: the model the weights belong to; needed by methods that live in its forward pass, and
            for ``conv_norm="operator"`` (to find the input size each conv sees).
        conv_norm: ``"reshape"`` (convs as (out, in*kh*kw) matrices, the blog's) or ``"operator"``
            (``spectral``/``spectral_cap`` correct a conv's operator norm, circular padding).
        geometry: the convs' geometry (nslab.conv_spectra.conv_geometry), if already known.
        image_size: the input images' size, to find the geometry from ``model``.
    """

    def __init__(self, params, method: str = "spectral", targets: str = "per_layer",
                 power_iters: int = 2, warm_start: bool = True, tol: float = 0.0, seed: int = 0,
                 block_size: int = 32, warmup_iters: int = 100, power_precision: str = "auto", cuda_graph: bool = False,
                 model: nn.Module | None = None, conv_norm: str = "reshape", geometry: dict | None = None,
                 image_size: int = 32):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not allowed: choose one of {list(METHODS)}")
        for name, value in (("power_iters", power_iters), ("block_size", block_size), ("warmup_iters", warmup_iters)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name}={value!r} is not allowed: an integer >= 1")
        if not tol >= 0:
            raise ValueError(f"tol={tol!r} is not allowed: must be >= 0")
        if power_precision not in PRECISIONS:
            raise ValueError(f"power_precision={power_precision!r} is not allowed: choose one of {list(PRECISIONS)}")
        params = list(params)
        self.names = [n for n, _ in params]
        self.weights = [p for _, p in params]
        device = self.weights[0].device if self.weights else torch.device("cpu")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        if conv_norm == "operator" and geometry is None:
            if model is None:
                raise ValueError("conv_norm='operator' needs model=... (the input size each conv sees)")
            from .conv_spectra import conv_geometry

            geometry = conv_geometry(model, image_size)
        options = Options(targets, power_iters, warm_start, tol, block_size, warmup_iters, self.generator,
                          conv_norm, geometry, self.names, seed, capture=cuda_graph,
                          precision=power_precision)
        with torch.no_grad():
            self.method = _methods.build(method, [w.detach() for w in self.weights], options)
        self.cuda_graph = cuda_graph
        if cuda_graph:
            if not all(w.is_cuda for w in self.weights):
                raise ValueError("cuda_graph=True is not allowed here: it needs every weight on a CUDA device")
            if not self.method.capturable() or self.method.in_forward:
                raise ValueError(f"cuda_graph=True is not allowed with method={method!r}, warm_start={warm_start!r}, "
                                 f"tol={tol!r}: the step waits for the host (or has nothing to capture)")
        if self.method.in_forward:
            if model is None:
                raise ValueError(f"method={method!r} lives in the model's forward pass: pass model=... as well")
            self.method.attach(params, model)
        self._graph = None
        self.warmed = False

    # -- what the rest of nslab reads ------------------------------------------------
    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def targets(self) -> list[float]:
        return self.method.targets

    @property
    def target_norm(self) -> str | None:
        """What ``targets`` bound: "spectral", "frobenius" or None (recorded in config.json)."""
        return self.method.target_norm

    @property
    def operator_layers(self) -> set[str]:
        """Names of the conv weights whose operator norm the method corrects (conv_norm="operator")."""
        return {self.names[i] for i in getattr(self.method, "operators", {})}

    def probe_weights(self) -> list[torch.Tensor]:
        """The weights the model computes with (the effective weight of a parametrization)."""
        with torch.no_grad():
            return self.method.effective([w.detach() for w in self.weights])

    # -- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """Apply the method to every weight, in place."""
        if not self.weights:
            return
        with self._full_precision():
            if self.cuda_graph and self.warmed:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
                return
            self.method.project_(self.weights)
        self.warmed = True

    def _full_precision(self):
        """Autocast off: a step called inside a user's autocast region must not run in bf16."""
        return torch.autocast(device_type=self.weights[0].device.type, enabled=False)

    def _capture(self) -> None:
        """Record one step as a CUDA graph on a side stream (weights and estimator state are static buffers)."""
        stream = torch.cuda.Stream(device=self.weights[0].device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm the libraries' handles on this stream; changes no weight
            self.method.warm_up(self.weights)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.method.project_(self.weights)
        self._graph = graph

    @torch.no_grad()
    def estimate_sigmas(self) -> list[float]:
        """sigma_1 of each weight as the next step would estimate it, without changing any state
        (NaN where the method estimates none). The probes record its error against the exact value."""
        if not self.weights:
            return []
        with self._full_precision():
            return self.method.estimate_sigmas(self.weights)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"method": self.method.name, "names": list(self.names), "targets": list(self.targets),
                "warmed": self.warmed, "generator": self.generator.get_state(), **self.method.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.method.name or state["names"] != self.names:
            raise ValueError(f"scaler state is for method={state['method']!r} on {len(state['names'])} weights; "
                             f"this scaler is method={self.method.name!r} on {len(self.names)} weights")
        self.method.load_state_dict(state, self.weights)
        self.method.targets = list(state["targets"])
        self.method.target_t = [torch.tensor(t, device=w.device, dtype=w.dtype)
                                for t, w in zip(self.method.targets, self.weights)]
        self.warmed = bool(state.get("warmed", True))
        self.generator.set_state(state["generator"])
        self._graph = None  # a captured graph points at the old buffers


def make_scaler(model: nn.Module, config, geometry: dict | None = None) -> NormScaler:
    """The scaler a RunConfig asks for (built right after init, before the optimizer)."""
    from .models import scaled_parameters

    return NormScaler(scaled_parameters(model, config.scale_rule), method=config.method, targets=config.targets,
                      power_iters=config.power_iters, warm_start=config.warm_start, tol=config.power_tol,
                      seed=config.seed, block_size=config.power_block, power_precision=config.power_precision,
                      cuda_graph=config.cuda_graph, model=model,
                      conv_norm=config.conv_norm, geometry=geometry)
