"""Cost of norm scaling per training step, against the same step without it.

For each model and batch size, one process builds a model per method (same init),
then times full training steps (forward, backward, Adam, ``NormScaler.step()``) in
alternating rounds, so every ratio compares steps measured side by side. The
sigma_1 error column is what the probes record: the estimate the next step would
make (``NormScaler.estimate_sigmas``) against ``torch.linalg.svdvals``, the largest
over layers, after the timed steps.

    python benchmarks/step_overhead.py                                   # CPU, small sizes
    python benchmarks/step_overhead.py --device cuda --models mlp5x2000,mlp7x4000,resnet34,resnet50 \\
        --batch 128,512 --bf16 --channels-last --json gpu.json          # paper sizes

Models: ``mlpDxW`` (D Linear layers of width W) or ``resnet18|34|50``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab.data import NUM_CLASSES, augment, normalize  # noqa: E402
from nslab.models import build_model, init_orthogonal_, scaled_parameters  # noqa: E402
from nslab.scaling import NormScaler, matrix_view  # noqa: E402

# name -> NormScaler keyword arguments (method included)
METHODS = {
    "none": dict(method="none"),
    "frobenius": dict(method="frobenius"),
    "spectral": dict(method="spectral"),  # the default: warm block iteration, block 32, 2 iterations
    "spectral-b32x1": dict(method="spectral", block_size=32, power_iters=1),
    "spectral-naive1": dict(method="spectral", block_size=1, power_iters=1),
    "spectral-seed500": dict(method="spectral", warm_start=False, power_iters=500),
    "spectral_cap": dict(method="spectral_cap"),
    "spectral_topk": dict(method="spectral_topk"),
    "spectral_clip": dict(method="spectral_clip"),
    "orthogonal": dict(method="orthogonal"),
    "spectral_norm_param": dict(method="spectral_norm_param"),
}
CPU_DEFAULTS = dict(models="mlp3x512,resnet18", batch="64")
GPU_DEFAULTS = dict(models="mlp5x2000,mlp7x4000,resnet34,resnet50", batch="128,512")


def model_fields(name: str) -> dict:
    """RunConfig fields of a benchmark model name: ``mlpDxW`` (e.g. mlp5x2000) or a ResNet."""
    m = re.fullmatch(r"mlp(\d+)x(\d+)", name)
    if m:
        return {"model": "mlp", "depth": int(m.group(1)), "width": int(m.group(2))}
    if name in ("resnet18", "resnet34", "resnet50"):
        return {"model": name}
    raise ValueError(f"model={name!r} is not allowed: mlpDxW (e.g. mlp5x2000) or resnet18, resnet34, resnet50")


def parse_model(name: str) -> torch.nn.Module:
    return build_model(**model_fields(name))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model, its Adam and its scaler; ``step()`` is one full training step."""

    def __init__(self, base: torch.nn.Module, method_kwargs: dict, device: torch.device, bf16: bool,
                 channels_last: bool, cuda_graph: bool):
        self.model = copy.deepcopy(base).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        kwargs = dict(method_kwargs)
        if cuda_graph and kwargs["method"] != "none" and kwargs.get("warm_start", True):
            kwargs["cuda_graph"] = True
        self.scaler = NormScaler(scaled_parameters(self.model), seed=1, model=self.model, **kwargs)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)  # after a parametrization re-registered weights
        self.device, self.bf16 = device, bf16

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.scaler.step()

    def sigma_rel_err(self) -> float:
        if not self.scaler.method.uses_estimator:
            return float("nan")
        est = self.scaler.estimate_sigmas()
        exact = [float(torch.linalg.svdvals(matrix_view(w.detach()).float())[0]) for w in self.scaler.weights]
        return max(abs(e - x) / x for e, x in zip(est, exact))


def time_steps(tr: Trainer, batches: list, min_seconds: float, max_steps: int) -> float:
    """Seconds per step: at least one step, more until ``min_seconds`` or ``max_steps``."""
    _sync(tr.device)
    t0, n = time.perf_counter(), 0
    while n < max_steps and (n == 0 or time.perf_counter() - t0 < min_seconds):
        tr.step(*batches[n % len(batches)])
        n += 1
        if n == 1 or n % 4 == 0:
            _sync(tr.device)
    _sync(tr.device)
    return (time.perf_counter() - t0) / n


def run(models: list[str], batch_sizes: list[int], methods: list[str], device: torch.device, steps: int,
        warmup: int, rounds: int, min_seconds: float, bf16: bool = False, channels_last: bool = False,
        cuda_graph: bool = False, log=print) -> list[dict]:
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for model_name in models:
        base = parse_model(model_name)
        init_orthogonal_(scaled_parameters(base), torch.Generator().manual_seed(1))
        resnet = model_name.startswith("resnet")
        for bs in batch_sizes:
            images = torch.randint(0, 256, (4 * bs, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)
            labels = torch.randint(0, NUM_CLASSES, (4 * bs,), generator=gen, device=device)
            batches = []
            for i in range(4):  # the training pipeline's own augmentation and normalisation
                x = normalize(augment(images[i * bs:(i + 1) * bs], gen))
                if channels_last and resnet:
                    x = x.contiguous(memory_format=torch.channels_last)
                batches.append((x, labels[i * bs:(i + 1) * bs]))
            trainers = {m: Trainer(base, METHODS[m], device, bf16, channels_last and resnet, cuda_graph)
                        for m in methods}
            for tr in trainers.values():  # warm-up: allocator, kernels, first (warm-up) scaling step
                for i in range(warmup):
                    tr.step(*batches[i % len(batches)])
            times: dict[str, list[float]] = {m: [] for m in methods}
            for _ in range(rounds):  # alternate methods so drift hits all alike
                for m, tr in trainers.items():
                    times[m].append(time_steps(tr, batches, min_seconds, steps))
            base_ms = 1e3 * statistics.median(times["none"]) if "none" in times else float("nan")
            for m, tr in trainers.items():
                ms = 1e3 * statistics.median(times[m])
                row = {"model": model_name, "method": m, "batch": bs, "ms_per_step": ms,
                       "ratio": ms / base_ms if base_ms == base_ms else float("nan"),
                       "sigma_rel_err": tr.sigma_rel_err()}
                rows.append(row)
                log(format_row(row))
            del trainers
    return rows


def format_row(r: dict) -> str:
    err = "-" if math.isnan(r["sigma_rel_err"]) else f"{r['sigma_rel_err']:.1e}"
    return f"{r['model']:<11} {r['method']:<17} {r['batch']:>5} {r['ms_per_step']:>10.2f} {r['ratio']:>7.2f}x {err:>9}"


HEADER = f"{'model':<11} {'method':<17} {'batch':>5} {'ms/step':>10} {'ratio':>8} {'sigma err':>9}"


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="", help=f"comma list; CPU default {CPU_DEFAULTS['models']}, "
                                                 f"CUDA default {GPU_DEFAULTS['models']}")
    ap.add_argument("--batch", default="", help="comma list of batch sizes")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    ap.add_argument("--steps", type=int, default=20, help="most timed steps per method and round")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="time each method this long per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last ResNets")
    ap.add_argument("--cuda-graph", action="store_true", help="capture the scaling step as a CUDA graph")
    ap.add_argument("--json", default="", help="write the table and environment here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    models = (args.models or defaults["models"]).split(",")
    batch = [int(b) for b in (args.batch or defaults["batch"]).split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; allowed are {list(METHODS)}")
    env = environment(device)
    print(f"# {env['device_name']}, torch {env['torch']}, {env['threads']} threads, {env['date']}")
    print(HEADER)
    rows = run(models, batch, methods, device, args.steps, args.warmup, args.rounds, args.min_seconds,
               args.bf16, args.channels_last, args.cuda_graph)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
