"""Conv layers as operators (nslab.conv_spectra, nslab.conv_operator): per-layer norms, and what the probes cost.

For every conv weight of the model at the input size it sees (``conv_geometry``, 32x32 images):

* the layer table: the reshape's sigma_max (``(out, in*kh*kw)``, what layers.csv records), the
  operator norm with circular padding (exact, Sedghi et al.), the upper bound for zero padding, and
  the zero-padded operator's own norm (the top Ritz value of ``ConvTopTriple`` after
  ``--zeros-iters`` block iterations, a lower bound), with the ratios operator / reshape;
* the cost of a probe over all conv layers: the full operator spectrum (``svd`` and ``gram``) and
  the top value only (``conv_operator_stats``: Lanczos with ``--steps``, and ``steps=None``, exact),
  with the Lanczos value's largest relative error against the exact top;
* with ``--step-batch B``, the cost of the ``operator`` correction (``ConvTopTriple.project_``, 2
  iterations, block 8, on every conv) against one training step (forward, backward, Adam) at batch B;
* with ``--alpha``, the cost of ``heavy_tail.fit_alpha`` on each scaled layer's spectrum of the
  named models with PyTorch's default init (an orthogonal init is flat: no fit), and of
  ``powerlaw.Fit`` where installed.

    python benchmarks/op_probe_cost.py                                   # resnet34 at init, CPU
    python benchmarks/op_probe_cost.py --model resnet18 --checkpoint RUN/checkpoints/epoch_0002.pt
    python benchmarks/op_probe_cost.py --alpha mlp5x2000,mlp7x4000 --skip-layers --skip-cost
    python benchmarks/op_probe_cost.py --device cuda --epoch-seconds 2.2 --json gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab.checkpoint import load_checkpoint  # noqa: E402
from nslab.conv_operator import ConvTopTriple  # noqa: E402
from nslab.conv_spectra import conv_geometry, conv_operator_stats, conv_singular_values  # noqa: E402
from nslab.heavy_tail import fit_alpha  # noqa: E402
from nslab.models import init_orthogonal_, scaled_parameters  # noqa: E402
from nslab.probes import singular_values  # noqa: E402

from nslab.bench import cpu_name as _cpu_name, model_fields, sync as _sync  # noqa: E402
from nslab.models import build_model  # noqa: E402


def timed(fn, device, repeats):
    """(best seconds over ``repeats``, the last result).

    On a CPU, the process's CPU time (run with one thread: what a quiet core takes; wall time on a
    shared machine also counts other jobs); on a GPU, wall time.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        out = fn()
        _sync(device)
        best = min(best, clock() - t0)
    return best, out


def load_model(name: str, checkpoint: str, device: torch.device) -> torch.nn.Module:
    model = build_model(**model_fields(name))
    init_orthogonal_(scaled_parameters(model), torch.Generator().manual_seed(1))
    if checkpoint:
        model.load_state_dict(load_checkpoint(checkpoint)["model"])
    return model.to(device)


def layer_table(weights, geometry, zeros_iters: int) -> list[dict]:
    rows = []
    for name, w in weights.items():
        g = geometry[name]
        reshape = float(torch.linalg.matrix_norm(w.detach().flatten(1).double(), 2))
        circular = float(conv_singular_values(w, **g.kwargs())[0])
        bound = float(conv_singular_values(w, **g.kwargs(), padding_mode="zeros")[0])
        row = {"layer": name, "shape": "x".join(map(str, w.shape)), "input": g.input_size[0],
               "stride": g.stride[0], "reshape": reshape, "op_circular": circular, "op_zeros_bound": bound,
               "ratio_circular": circular / reshape}
        if zeros_iters:
            sigma = float(ConvTopTriple(w, g, "zeros", warmup_iters=zeros_iters).estimate()[0])
            row.update(op_zeros=sigma, ratio_zeros=sigma / reshape)
        rows.append(row)
    return rows


def probe_costs(weights, geometry, device, steps: int, repeats: int) -> dict:
    out = {}
    for method in ("svd", "gram"):
        out[f"full_{method}_s"], full = timed(
            lambda: {n: conv_singular_values(w, **geometry[n].kwargs(), method=method)[0] for n, w in weights.items()},
            device, repeats)
    exact = {n: float(v) for n, v in full.items()}
    out["top_lanczos_s"], top = timed(lambda: conv_operator_stats(weights, geometry, steps=steps), device, repeats)
    out["top_exact_s"], _ = timed(lambda: conv_operator_stats(weights, geometry, steps=None), device, repeats)
    out["lanczos_max_rel_err"] = max(abs(top[n]["op_sigma_max"] - exact[n]) / exact[n] for n in weights)
    out["layers"], out["steps"] = len(weights), steps
    return out


def step_costs(model, geometry, weights, device, batch: int, repeats: int) -> dict:
    """One training step at ``batch`` and one operator correction of every conv, after a warm-up."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    with torch.no_grad():
        ests = {n: ConvTopTriple(w, geometry[n], "circular", warmup_iters=5) for n, w in weights.items()}
        targets = {n: float(est.estimate()[0]) for n, est in ests.items()}  # hold today's norms

    def correct():
        for n, est in ests.items():
            est.project_(targets[n], iters=2)

    out = {"batch": batch}
    out["train_step_s"], _ = timed(train_step, device, repeats)
    out["operator_correction_s"], _ = timed(correct, device, repeats)
    out["ratio"] = out["operator_correction_s"] / out["train_step_s"]
    return out


def alpha_costs(models: list[str], device: torch.device, repeats: int) -> list[dict]:
    try:
        import powerlaw
    except ImportError:
        powerlaw = None
    rows = []
    for name in models:
        model = build_model(**model_fields(name)).to(device)  # PyTorch's default init: spectra with a spread
        for layer, w in scaled_parameters(model):
            sv = singular_values(w, "gram")
            seconds, fit = timed(lambda: fit_alpha(sv), device, repeats)
            row = {"model": name, "layer": layer, "evals": fit.n_evals, "alpha": fit.alpha, "fit_alpha_s": seconds}
            if powerlaw is not None:
                evals = (sv.double() ** 2).cpu().numpy()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row["powerlaw_s"], ref = timed(lambda: powerlaw.Fit(evals[evals > 1e-5], verbose=False,
                                                                        parameter_ranges={"alpha": [1, None]}),
                                                   torch.device("cpu"), 1)
                row["powerlaw_alpha"] = float(ref.alpha)
            rows.append(row)
            print(f"{name:<10} {layer:<12} {row['evals']:>5} evals  alpha {fit.alpha:8.3f}  fit_alpha "
                  f"{seconds:6.3f} s" + (f"  powerlaw {row['powerlaw_s']:6.2f} s (alpha {row['powerlaw_alpha']:.3f})"
                                         if "powerlaw_s" in row else ""), flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet34", help="resnet18, resnet34 or resnet50")
    ap.add_argument("--checkpoint", default="", help="a run's checkpoint to load (else orthogonal init, seed 1)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--only", default="", help="only conv weights whose name contains this")
    ap.add_argument("--steps", type=int, default=32, help="Lanczos steps of the top-only probe")
    ap.add_argument("--zeros-iters", type=int, default=100, help="ConvTopTriple iterations on the zero-padded "
                    "operator (0: skip)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epoch-seconds", type=float, default=0.0, help="an epoch's time on this device, for percents")
    ap.add_argument("--step-batch", type=int, default=0, help="time the operator correction against a training "
                    "step at this batch size (0: skip)")
    ap.add_argument("--alpha", default="", help="models (e.g. mlp5x2000,mlp7x4000) whose layers' alpha fit is timed")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    print(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; times are "
          + ("wall seconds" if dev.type == "cuda" else "CPU seconds of this process"))
    result: dict = {"device_name": name, "model": args.model, "checkpoint": args.checkpoint}
    if not (args.skip_layers and args.skip_cost):
        model = load_model(args.model, args.checkpoint, dev)
        geometry = conv_geometry(model, args.image_size)
        weights = {n: p for n, p in model.named_parameters() if n in geometry and args.only in n}
        if not args.skip_layers:
            result["layers"] = layer_table(weights, geometry, args.zeros_iters)
            print(f"{'layer':<28} {'shape':<12} {'in':>3} {'s':>2} {'reshape':>8} {'op circ':>8} {'op zeros':>8} "
                  f"{'zero bnd':>8} {'circ/resh':>9} {'zero/resh':>9}")
            for r in result["layers"]:
                print(f"{r['layer']:<28} {r['shape']:<12} {r['input']:>3} {r['stride']:>2} {r['reshape']:8.4f} "
                      f"{r['op_circular']:8.4f} {r.get('op_zeros', float('nan')):8.4f} {r['op_zeros_bound']:8.4f} "
                      f"{r['ratio_circular']:9.3f} {r.get('ratio_zeros', float('nan')):9.3f}", flush=True)
        if not args.skip_cost:
            cost = probe_costs(weights, geometry, dev, args.steps, args.repeats)
            result["cost"] = cost
            print(f"probe over {cost['layers']} conv layers (best of {args.repeats}): full spectrum svd "
                  f"{cost['full_svd_s']:.2f} s, gram {cost['full_gram_s']:.2f} s; top only: Lanczos {args.steps} "
                  f"steps {cost['top_lanczos_s']:.2f} s (max rel err {cost['lanczos_max_rel_err']:.1e}), exact "
                  f"{cost['top_exact_s']:.2f} s")
            if args.epoch_seconds:
                print(f"as % of a {args.epoch_seconds} s epoch: " + ", ".join(
                    f"{k[:-2]} {100 * cost[k] / args.epoch_seconds:.2f} %"
                    for k in ("full_svd_s", "full_gram_s", "top_lanczos_s", "top_exact_s")))
    if args.step_batch:
        model = load_model(args.model, args.checkpoint, dev)
        geometry = conv_geometry(model, args.image_size)
        weights = {n: p for n, p in model.named_parameters() if n in geometry and args.only in n}
        result["step"] = step = step_costs(model, geometry, weights, dev, args.step_batch, args.repeats)
        print(f"training step at batch {step['batch']}: {step['train_step_s']:.3f} s; operator correction of "
              f"{len(weights)} convs (2 iterations, block 8): {step['operator_correction_s']:.3f} s "
              f"({100 * step['ratio']:.1f} % of the step)")
    if args.alpha:
        result["alpha"] = alpha_costs(args.alpha.split(","), dev, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
