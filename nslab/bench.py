"""``python -m nslab bench``: every speed goal of the project measured by one command.

Sections, each on nslab's own models, data pipeline and training step (nslab.training.train_step):

1. **step**: ms per training step for every model, batch size and method, and the ratio to the
   unscaled step measured in the same process in alternating rounds (so drift hits all alike);
   on CUDA with the fast settings (bf16, channels_last ResNets) and with ``cuda_graph`` off and on.
   The sigma_1 error column is the estimate the next step would make against ``svdvals``.
2. **hard regime**: the sigma_1 error where it is hardest, a tight cluster at the top of the
   spectrum just above the target (benchmarks/cluster_accuracy.py's replay, through NormScaler).
3. **epoch**: whole epochs (train with augmentation on the device, test, per-epoch probes) per
   model and method, timed on ``train_images`` and scaled to CIFAR-100's 50,000 + 10,000 images;
   the probe cost as a share of the epoch.
4. **projections**: the blog's 12-run grid (4 models x none/frobenius/spectral x 200 epochs) and
   the 6 MLP runs of ``grids/paper-mlp-fast.yaml``, from the epoch times.

``--size full`` is the paper's sizes (sized for under 8 minutes on an H100; never run on a GPU
yet), ``--size cpu`` the MLPs on a CPU, ``--size tiny`` every section at toy sizes in seconds (the
tests run it, so the command cannot rot). Writes ``bench.json`` and ``bench.md`` (device, date,
commit, the goals and whether each is met).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from .methods import METHODS as REGISTERED
from .paths import REPO_ROOT

FULL_TRAIN, FULL_TEST, EPOCHS = 50_000, 10_000, 200
GRID_METHODS = ("none", "frobenius", "spectral")
PAPER_MODELS = ("mlp5x2000", "mlp7x4000", "resnet34", "resnet50")

# Benchmark variants: name -> NormScaler keyword arguments. Every registered method, plus the
# estimator settings worth comparing (the seed's 500 cold iterations, one block iteration).
VARIANTS = {m: {"method": m} for m in REGISTERED}
VARIANTS.update({
    "spectral-fp32": {"method": "spectral", "power_precision": "float32"},
    "spectral-3it": {"method": "spectral", "power_iters": 3},
    "spectral-1it": {"method": "spectral", "power_iters": 1},
    "spectral-seed500": {"method": "spectral", "warm_start": False, "power_iters": 500},
})

# The goals (issues 4 and 11): ratio to the unscaled step, errors, seconds.
GOALS = {"spectral_ratio_gpu": 1.10, "frobenius_ratio_gpu": 1.05, "spectral_ratio_cpu_512": 1.10,
         "spectral_ratio_cpu_128": 1.25, "frobenius_ratio_cpu": 1.03, "sigma_err": 1e-3,
         "resnet50_epoch_s": 4.0, "resnet34_epoch_s": 1.5, "grid_gpu_h": 1.0, "probe_pct": 2.0,
         "paper_mlp_fast_min": 10.0}


@dataclass(frozen=True)
class Size:
    models: tuple[str, ...]
    batches: tuple[int, ...]
    methods: tuple[str, ...]
    steps: int  # most timed steps per method and round
    min_seconds: float  # time each method at least this long per round
    rounds: int
    warmup: int
    epoch_models: tuple[str, ...]
    epoch_methods: tuple[str, ...]
    epoch_batch: int
    train_images: int
    test_images: int
    cluster_n: int
    cluster_steps: int


SIZES = {
    "full": Size(models=PAPER_MODELS, batches=(128, 512), methods=tuple(VARIANTS), steps=20, min_seconds=0.25,
                 rounds=3, warmup=3, epoch_models=PAPER_MODELS, epoch_methods=GRID_METHODS, epoch_batch=512,
                 train_images=10_240, test_images=2_048, cluster_n=1024, cluster_steps=45),
    "cpu": Size(models=("mlp5x2000", "mlp3x512"), batches=(512, 128),
                methods=tuple(v for v in VARIANTS if v != "spectral-seed500"), steps=6,
                min_seconds=1.0, rounds=5, warmup=2, epoch_models=("mlp3x512",), epoch_methods=GRID_METHODS,
                epoch_batch=512, train_images=4_096, test_images=1_024, cluster_n=512, cluster_steps=60),
    "tiny": Size(models=("mlp2x64",), batches=(8,), methods=tuple(VARIANTS), steps=2, min_seconds=0.0, rounds=1,
                 warmup=1, epoch_models=("mlp2x64",), epoch_methods=GRID_METHODS, epoch_batch=32,
                 train_images=64, test_images=32, cluster_n=96, cluster_steps=9),
}


def model_fields(name: str) -> dict:
    """RunConfig fields of a benchmark model name: ``mlpDxW`` (e.g. mlp5x2000) or a ResNet."""
    m = re.fullmatch(r"mlp(\d+)x(\d+)", name)
    if m:
        return {"model": "mlp", "depth": int(m.group(1)), "width": int(m.group(2))}
    from .models import MODELS

    if name in MODELS and name != "mlp":
        return {"model": name}
    raise ValueError(f"model={name!r} is not allowed: mlpDxW (e.g. mlp5x2000) or one of "
                     f"{sorted(k for k in MODELS if k != 'mlp')}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model, its Adam and its scaler; ``step()`` is nslab's training step."""

    def __init__(self, base: torch.nn.Module, variant: dict, device: torch.device, bf16: bool, channels_last: bool,
                 cuda_graph: bool):
        from .models import scaled_parameters
        from .scaling import NormScaler

        self.model = copy.deepcopy(base).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.scaler = NormScaler(scaled_parameters(self.model), seed=1, model=self.model, cuda_graph=cuda_graph,
                                 **variant)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)  # after a parametrization re-registered weights
        self.device, self.bf16 = device, bf16

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from .training import train_step

        train_step(self.model, self.opt, self.scaler, x, y, self.bf16)

    def sigma_rel_err(self) -> float:
        """Largest relative error over layers of the estimate the next step would make (NaN: no estimate)."""
        from .linalg import as_matrix

        if not self.scaler.method.uses_estimator:
            return float("nan")
        est = self.scaler.estimate_sigmas()
        exact = [float(torch.linalg.matrix_norm(as_matrix(w.detach()).double(), 2)) for w in self.scaler.weights]
        return max(abs(e - x) / x for e, x in zip(est, exact))


def time_steps(tr: Trainer, batches: list, min_seconds: float, max_steps: int) -> float:
    """Seconds per step: at least one step, more until ``min_seconds`` or ``max_steps``."""
    sync(tr.device)
    t0, n = time.perf_counter(), 0
    while n < max_steps and (n == 0 or time.perf_counter() - t0 < min_seconds):
        tr.step(*batches[n % len(batches)])
        n += 1
    sync(tr.device)
    return (time.perf_counter() - t0) / n


def step_overhead(models, batch_sizes, variants, device: torch.device, steps: int, warmup: int, rounds: int,
                  min_seconds: float, bf16: bool = False, channels_last: bool = False, cuda_graph: bool = False,
                  log=print) -> list[dict]:
    """Rows {model, method, batch, graph, ms_per_step (median), ms_min, ms_max, ratio, sigma_rel_err}."""
    from .data import NUM_CLASSES, augment, normalize
    from .models import build_model, init_orthogonal_, scaled_parameters

    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for model_name in models:
        base = build_model(**model_fields(model_name))
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
            trainers = {}
            for name in variants:
                for graph in ((False, True) if cuda_graph else (False,)):
                    try:
                        trainers[name, graph] = Trainer(base, VARIANTS[name], device, bf16, channels_last and resnet,
                                                        graph)
                    except ValueError as err:  # e.g. cuda_graph with a method that reads the host
                        if not graph:
                            raise
                        log(f"# {model_name} {name} with cuda_graph: {str(err).split(':')[0]}: skipped")
            for tr in trainers.values():  # warm-up: allocator, kernels, the first (warm-up) scaling step, capture
                for i in range(warmup):
                    tr.step(*batches[i % len(batches)])
            times: dict = {key: [] for key in trainers}
            for _ in range(rounds):  # alternate methods so drift hits all alike
                for key, tr in trainers.items():
                    times[key].append(time_steps(tr, batches, min_seconds, steps))
            base_ms = {g: 1e3 * statistics.median(times["none", g]) for g in (False, True) if ("none", g) in times}
            for (name, graph), tr in trainers.items():
                ms = 1e3 * statistics.median(times[name, graph])
                ref = base_ms.get(graph, base_ms.get(False, float("nan")))
                row = {"model": model_name, "method": name, "batch": bs, "graph": graph, "ms_per_step": ms,
                       "ms_min": 1e3 * min(times[name, graph]), "ms_max": 1e3 * max(times[name, graph]),
                       "ratio": ms / ref, "sigma_rel_err": tr.sigma_rel_err()}
                rows.append(row)
                log(format_step_row(row))
            del trainers
    return rows


STEP_HEADER = f"{'model':<11} {'method':<20} {'batch':>5} {'graph':>5} {'ms/step':>9} {'ratio':>7} {'sigma err':>9}"


def format_step_row(r: dict) -> str:
    err = "-" if math.isnan(r["sigma_rel_err"]) else f"{r['sigma_rel_err']:.1e}"
    return (f"{r['model']:<11} {r['method']:<20} {r['batch']:>5} {'on' if r['graph'] else 'off':>5} "
            f"{r['ms_per_step']:>9.2f} {r['ratio']:>6.2f}x {err:>9}")


def hard_regime(n: int, steps: int, device: torch.device, iters=(2, 3), lr: float = 3e-5, t: float = 0.4,
                precisions=("float32", "bfloat16")) -> list[dict]:
    """sigma_1 error of the spectral step's estimate in the tight-cluster regime, through NormScaler,
    with the estimator's products in each precision (``auto`` picks bfloat16 for large weights)."""
    from .linalg import as_matrix
    from .scaling import NormScaler

    rows = []
    for it, precision in itertools.product(iters, precisions):
        g = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(clustered_start(n, t, n // 4, g).to(device))
        scaler = NormScaler([("w", p)], method="spectral", power_iters=it, warmup_iters=10, seed=1,
                            power_precision=precision)
        scaler.method.targets, scaler.method.target_t = [t], [torch.tensor(t, device=device)]
        errors = []
        for step in range(steps):
            with torch.no_grad():
                p.add_(lr * torch.sign(torch.randn(n, n, generator=g)).to(device))
            est = scaler.estimate_sigmas()[0]
            exact = float(torch.linalg.matrix_norm(as_matrix(p.detach()).double(), 2))
            if step >= steps // 3:
                errors.append((exact - est) / exact)
            scaler.step()
        rows.append({"n": n, "power_iters": it, "precision": precision, "median": statistics.median(errors),
                     "max": max(errors)})
    return rows


def clustered_start(n: int, t: float, cluster: int, g: torch.Generator) -> torch.Tensor:
    """n x n: the top ``cluster`` singular values spread over [t, 1.01 t], the rest from 0.99 t down to 0.3 t."""
    top = t * (1 + 0.01 * torch.rand(cluster, generator=g)).sort(descending=True).values
    s = torch.cat([top, t * torch.linspace(0.99, 0.3, n - cluster)])
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    return (u * s) @ v.t()


def epoch_times(models, methods, size: Size, device: torch.device, bf16: bool, channels_last: bool,
                log=print) -> list[dict]:
    """Whole epochs through nslab's session (data on the device, augmentation there too), scaled to full size."""
    with synthetic_data(size.train_images, size.test_images) as folder:
        return _epoch_rows(models, methods, size, device, bf16, channels_last, folder, log)


@contextlib.contextmanager
def synthetic_data(train_images: int, test_images: int):
    """A temporary folder with a synthetic data set, removed afterwards together with its array cache
    (which would otherwise stay in ~/.cache/nslab, keyed by a path that no longer exists)."""
    from .data import write_synthetic

    saved = os.environ.get("NSLAB_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="nslab-bench-") as folder:
        write_synthetic(os.path.join(folder, "cifar100_uint8.npz"), n_train=train_images, n_test=test_images)
        os.environ["NSLAB_CACHE_DIR"] = os.path.join(folder, "array-cache")
        try:
            yield folder
        finally:
            if saved is None:
                os.environ.pop("NSLAB_CACHE_DIR", None)
            else:
                os.environ["NSLAB_CACHE_DIR"] = saved


def _epoch_rows(models, methods, size: Size, device: torch.device, bf16: bool, channels_last: bool, folder: str,
                log) -> list[dict]:
    from .config import RunConfig
    from .training import build_session

    rows = []
    for model in models:
        for method in methods:
            cfg = RunConfig(**model_fields(model), **VARIANTS[method], device=device.type, data_dir=folder,
                            batch_size=size.epoch_batch, bf16=bf16, channels_last=channels_last,
                            rank_method="gram", out_dir=folder)
            s = build_session(cfg)
            train_s, test_s, probe_s = time_epoch(s, epochs=2)
            full = train_s * FULL_TRAIN / size.train_images + test_s * FULL_TEST / size.test_images
            row = {"model": model, "method": method, "train_images": size.train_images, "train_s": train_s,
                   "test_s": test_s, "probe_s": probe_s, "epoch_s": full, "probe_pct": 100 * probe_s / full,
                   "run_200_epochs_min": EPOCHS * (full + probe_s) / 60}
            rows.append(row)
            log(f"{model:<11} {method:<10} epoch {full:8.2f} s (scaled from {size.train_images} images)  probes "
                f"{probe_s:.3f} s = {row['probe_pct']:.2f} %  200 epochs {row['run_200_epochs_min']:.1f} min")
            del s
    return rows


def time_epoch(s, epochs: int = 2) -> tuple[float, float, float]:
    """Seconds of (train, test, probes) of session ``s``'s last of ``epochs`` epochs (the first warms up)."""
    from .probing import probe_layers
    from .training import evaluate, train_one_epoch

    times = {"train": [], "test": [], "probe": []}
    for _ in range(epochs):
        for key, fn in (("train", lambda: train_one_epoch(s)), ("test", lambda: evaluate(s)),
                        ("probe", lambda: probe_layers(s, 1, with_spectra=True))):
            sync(s.device)
            t0 = time.perf_counter()
            fn()
            sync(s.device)
            times[key].append(time.perf_counter() - t0)
    return times["train"][-1], times["test"][-1], times["probe"][-1]


def projections(epochs: list[dict]) -> dict:
    """Minutes for the blog's 12-run grid and the 6 MLP runs of paper-mlp-fast, from the epoch rows."""
    by = {(r["model"], r["method"]): r["run_200_epochs_min"] for r in epochs}
    out = {}
    for name, models in (("grid_12", PAPER_MODELS), ("paper_mlp_fast_6", PAPER_MODELS[:2])):
        keys = [(m, k) for m in models for k in GRID_METHODS]
        missing = [k for k in keys if k not in by]
        out[name] = {"minutes": None if missing else sum(by[k] for k in keys),
                     "missing": [f"{m}/{k}" for m, k in missing]}
    return out


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        commit = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def goals(result: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) lines for the markdown."""
    steps, gpu = result["step"], result["environment"]["device"].startswith("cuda")
    out = []

    def ratio(method, batch=None):
        rs = [r["ratio"] for r in steps if r["method"] == method and (batch is None or r["batch"] == batch)
              and r["graph"] == gpu and r["model"] in PAPER_MODELS]
        return max(rs) if rs else None

    def verdict(value, limit):
        return "-" if value is None else ("met" if value <= limit else "NOT met")

    if gpu:
        for method, key in (("spectral", "spectral_ratio_gpu"), ("frobenius", "frobenius_ratio_gpu")):
            v = ratio(method)
            out.append((f"{method} <= {GOALS[key]}x, every paper model, batch 128 and 512",
                        "-" if v is None else f"worst {v:.2f}x", verdict(v, GOALS[key])))
    else:
        for method, batch, key in (("spectral", 512, "spectral_ratio_cpu_512"), ("spectral", 128, "spectral_ratio_cpu_128"),
                                   ("frobenius", None, "frobenius_ratio_cpu")):
            v = ratio(method, batch)
            out.append((f"CPU: {method} <= {GOALS[key]}x at MLP 5x2000" + (f", batch {batch}" if batch else ""),
                        "-" if v is None else f"{v:.2f}x", verdict(v, GOALS[key])))
    errs = [r["sigma_rel_err"] for r in steps if r["method"] == "spectral" and not math.isnan(r["sigma_rel_err"])]
    v = max(errs) if errs else None
    out.append(("sigma_1 error <= 1e-3 (benchmark steps)", "-" if v is None else f"{v:.1e}", verdict(v, GOALS["sigma_err"])))
    for r in result["hard_regime"]:
        out.append((f"sigma_1 error <= 1e-3, hard regime, power_iters={r['power_iters']}, {r['precision']} (n={r['n']})",
                    f"max {r['max']:.1e}", verdict(r["max"], GOALS["sigma_err"])))
    for model, key in (("resnet50", "resnet50_epoch_s"), ("resnet34", "resnet34_epoch_s")):
        es = [r["epoch_s"] for r in result["epoch"] if r["model"] == model and r["method"] == "spectral"]
        out.append((f"{model} CIFAR-100 epoch <= {GOALS[key]} s (spectral; the goal is for an H200)",
                    f"{es[0]:.2f} s" if es else "-", verdict(es[0] if es else None, GOALS[key])))
    probe = [r["probe_pct"] for r in result["epoch"]]
    out.append((f"probes <= {GOALS['probe_pct']} % of an epoch", f"worst {max(probe):.2f} %" if probe else "-",
                verdict(max(probe) if probe else None, GOALS["probe_pct"])))
    g = result["projections"]["grid_12"]["minutes"]
    out.append(("12-run x 200-epoch grid in about 1 GPU-hour", "-" if g is None else f"{g / 60:.2f} h",
                verdict(None if g is None else g / 60, GOALS["grid_gpu_h"])))
    p = result["projections"]["paper_mlp_fast_6"]["minutes"]
    out.append(("grids/paper-mlp-fast.yaml (6 runs x 200 epochs) under 10 min", "-" if p is None else f"{p:.1f} min",
                verdict(p, GOALS["paper_mlp_fast_min"])))
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# nslab bench: {env['device_name']} ({env['device']}), {env['date']}, commit {env['commit']}", "",
             f"torch {env['torch']}, {env['threads']} CPU threads, size `{result['size']}`, "
             f"{result['seconds']:.0f} s in all.", "", "## Goals", "", "| goal | measured | |", "| --- | --- | --- |"]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in goals(result)]
    lines += ["", "## Step overhead (median of rounds; ratio to the unscaled step in the same process)", "",
              "| model | method | batch | cuda graph | ms / step | min-max ms | ratio | sigma_1 err |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["step"]:
        err = "-" if math.isnan(r["sigma_rel_err"]) else f"{r['sigma_rel_err']:.1e}"
        lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {'on' if r['graph'] else 'off'} | "
                     f"{r['ms_per_step']:.2f} | {r['ms_min']:.2f}-{r['ms_max']:.2f} | {r['ratio']:.2f}x | {err} |")
    lines += ["", "## sigma_1 error in the hard regime (tight cluster above the target)", "",
              "| n | power_iters | products | median | max |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['n']} | {r['power_iters']} | {r['precision']} | {r['median']:.1e} | {r['max']:.1e} |"
              for r in result["hard_regime"]]
    lines += ["", f"## Epochs (timed on {result['epoch'][0]['train_images'] if result['epoch'] else 0} training "
              "images, scaled to 50,000 + 10,000)", "",
              "| model | method | epoch s | probes s | probes % | 200 epochs, min |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['method']} | {r['epoch_s']:.2f} | {r['probe_s']:.3f} | {r['probe_pct']:.2f} | "
              f"{r['run_200_epochs_min']:.1f} |" for r in result["epoch"]]
    lines += ["", "## Projections", ""]
    for name, p in result["projections"].items():
        lines.append(f"- {name}: " + (f"{p['minutes']:.1f} min" if p["minutes"] is not None else
                                      f"not projected (not measured: {', '.join(p['missing'])})"))
    return "\n".join(lines) + "\n"


def run_bench(device: str = "cpu", size: str = "tiny", out: str = "", bf16: bool | None = None,
              sections: tuple[str, ...] = ("step", "hard_regime", "epoch"), models: tuple[str, ...] = (),
              methods: tuple[str, ...] = (), log=print) -> dict:
    """Measure every section at ``size`` on ``device`` (``models``/``methods``: only these in the step
    section); write bench.json and bench.md to ``out``."""
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not allowed: choose one of {sorted(SIZES)}")
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        raise ValueError(f"methods={unknown!r} are not allowed: choose from {list(VARIANTS)}")
    for m in models:
        model_fields(m)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not allowed: 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is not allowed here: no CUDA device is available")
    unknown = [s for s in sections if s not in ("step", "hard_regime", "epoch")]
    if unknown:
        raise ValueError(f"sections={unknown!r} are not allowed: choose from step, hard_regime, epoch")
    dev, sz, t0 = torch.device(device), SIZES[size], time.perf_counter()
    sz = dataclasses.replace(sz, models=tuple(models) or sz.models, methods=tuple(methods) or sz.methods)
    fast = dev.type == "cuda" if bf16 is None else bf16
    out = out or os.path.join("outputs", "bench", f"{device}-{size}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out={out!r} is not allowed: it is a file (give a folder for bench.json and bench.md)")
    os.makedirs(out, exist_ok=True)
    env = environment(dev)
    log(f"# {env['device_name']}, torch {env['torch']}, {env['threads']} threads, {env['date']}, commit {env['commit']}")
    result = {"environment": env, "size": size, "step": [], "hard_regime": [], "epoch": []}
    if "step" in sections:
        log(STEP_HEADER)
        result["step"] = step_overhead(sz.models, sz.batches, sz.methods, dev, sz.steps, sz.warmup, sz.rounds,
                                       sz.min_seconds, bf16=fast, channels_last=True, cuda_graph=dev.type == "cuda",
                                       log=log)
    if "hard_regime" in sections:
        result["hard_regime"] = hard_regime(sz.cluster_n, sz.cluster_steps, dev)
        for r in result["hard_regime"]:
            log(f"hard regime n={r['n']} power_iters={r['power_iters']} {r['precision']}: median {r['median']:.1e}, "
                f"max {r['max']:.1e}")
    if "epoch" in sections:
        result["epoch"] = epoch_times(sz.epoch_models, sz.epoch_methods, sz, dev, fast, channels_last=True, log=log)
    result["projections"] = projections(result["epoch"])
    result["seconds"] = time.perf_counter() - t0
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(markdown(result))
    log(f"wrote {out}/bench.json and bench.md ({result['seconds']:.0f} s)")
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure every speed goal (step overhead, sigma error, epochs, projections)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--size", default="", help=f"one of {sorted(SIZES)} (default: full on cuda, tiny on cpu)")
    p.add_argument("--out", default="", help="folder for bench.json and bench.md (default outputs/bench/...)")
    p.add_argument("--sections", default="step,hard_regime,epoch", help="comma list of step, hard_regime, epoch")
    p.add_argument("--models", default="", help="comma list for the step section (mlpDxW or a ResNet; default: the size's)")
    p.add_argument("--methods", default="", help=f"comma list for the step section, of {list(VARIANTS)}")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    size = args.size or ("full" if args.device == "cuda" else "tiny")
    try:
        run_bench(args.device, size, args.out, sections=tuple(s for s in args.sections.split(",") if s),
                  models=tuple(m for m in args.models.split(",") if m),
                  methods=tuple(m for m in args.methods.split(",") if m))
    except (ValueError, OSError) as err:  # a bad option, or an --out that cannot be a folder: before measuring
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
