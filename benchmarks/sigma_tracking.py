"""How closely each spectral estimator tracks the exact sigma_1 during training.

Trains a preset (default ``quick``: MLP 3x512 on a CIFAR-100 subset) once per
estimator and, at every optimizer step, compares the sigma_1 the scaler uses for its
correction (``NormScaler.last_sigma``) with ``torch.linalg.matrix_norm(W, 2)`` of the
same W, computed just before the correction. Prints one row per estimator: the
largest and the median relative error over all steps and layers, the largest in
the last epoch and at the epoch-end checkpoints (what ``power_iter_rel_err`` records), the final
sigma_max per layer and the final test accuracy.

    NSLAB_DATA_DIR=/path/to/cifar100 python benchmarks/sigma_tracking.py --epochs 3

Without data (no ``NSLAB_DATA_DIR``) it writes and uses a small synthetic set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab.data import batches, write_synthetic  # noqa: E402
from nslab.models import scaled_parameters  # noqa: E402
from nslab.presets import preset  # noqa: E402
from nslab.scaling import NormScaler, matrix_view  # noqa: E402
from nslab.training import build_session, evaluate  # noqa: E402

# name -> NormScaler keyword arguments
ESTIMATORS = {
    "block32x2": dict(warm_start=True, block_size=32, power_iters=2),
    "block32x1": dict(warm_start=True, block_size=32, power_iters=1),
    "block64x2": dict(warm_start=True, block_size=64, power_iters=2),
    "block16x2": dict(warm_start=True, block_size=16, power_iters=2),
    "block8x2": dict(warm_start=True, block_size=8, power_iters=2),
    "naive1x2": dict(warm_start=True, block_size=1, power_iters=2),
    "seed500": dict(warm_start=False, power_iters=500),
    "seed100": dict(warm_start=False, power_iters=100),
}


def track(config, scaler_kwargs: dict) -> dict:
    """Train ``config`` with the given estimator; the per-step errors and final numbers."""
    s = build_session(config)
    s.scaler = NormScaler(scaled_parameters(s.model, config.scale_rule), method="spectral", targets=config.targets,
                          seed=config.seed, **scaler_kwargs)
    errors, checkpoint_errors, t_scale = [], [], 0.0
    for _ in range(config.epochs):
        s.model.train()
        for x, y in batches(s.train, config.batch_size, s.generator, shuffle=True, augmented=True):
            loss = torch.nn.functional.cross_entropy(s.model(x), y)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            exact = [float(torch.linalg.matrix_norm(matrix_view(w.detach()), 2)) for w in s.scaler.weights]
            t0 = time.perf_counter()
            s.scaler.step()
            t_scale += time.perf_counter() - t0
            errors.append([abs(float(e) - x) / x for e, x in zip(s.scaler.last_sigma, exact)])
        s.scheduler.step()
        # What the probes record at a checkpoint: the next step's estimate against svdvals.
        exact = [float(torch.linalg.svdvals(matrix_view(w.detach()))[0]) for w in s.scaler.weights]
        checkpoint_errors += [abs(e - x) / x for e, x in zip(s.scaler.estimate_sigmas(), exact)]
    err = torch.tensor(errors, dtype=torch.float64)  # (steps, layers)
    final = [float(torch.linalg.matrix_norm(matrix_view(w.detach()), 2)) for w in s.scaler.weights]
    return {"steps": len(errors), "max_rel_err": float(err.max()), "median_rel_err": float(err.median()),
            "max_rel_err_last_epoch": float(err[-len(errors) // config.epochs:].max()),
            "max_rel_err_checkpoints": max(checkpoint_errors), "final_sigma_max": final, "test_acc": evaluate(s)["test_acc"], "scaling_seconds": t_scale}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-iters", type=int, default=100, help="first-step block iterations of warm estimators")
    ap.add_argument("--train-subset", type=int, default=0, help="override the preset's training subset (0: keep)")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS), help=f"comma list of {list(ESTIMATORS)}")
    ap.add_argument("--json", default="", help="write the rows here")
    args = ap.parse_args(argv)
    data_dir = os.environ.get("NSLAB_DATA_DIR", "")
    if not data_dir:
        data_dir = tempfile.mkdtemp(prefix="nslab-synth-")
        write_synthetic(os.path.join(data_dir, "cifar100_uint8.npz"), n_train=5000, n_test=1000)
    config = preset(args.preset, epochs=args.epochs, device="cpu", data_dir=data_dir)
    if args.train_subset:
        config = config.replace(train_subset=args.train_subset)
    rows = []
    print(f"{'estimator':<10} {'steps':>5} {'max err':>9} {'median':>9} {'last ep':>9} {'ckpts':>9}  final sigma_max per layer"
          f"   test acc  scaling s")
    for name in args.estimators.split(","):
        kwargs = dict(ESTIMATORS[name])
        if kwargs["warm_start"]:
            kwargs["warmup_iters"] = args.warmup_iters
        r = {"estimator": name, **track(config, kwargs)}
        rows.append(r)
        print(f"{name:<10} {r['steps']:>5} {r['max_rel_err']:9.1e} {r['median_rel_err']:9.1e} "
              f"{r['max_rel_err_last_epoch']:9.1e} {r['max_rel_err_checkpoints']:9.1e}  {' '.join(f'{v:.4f}' for v in r['final_sigma_max']):<26}"
              f"  {100 * r['test_acc']:6.2f}%  {r['scaling_seconds']:8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
