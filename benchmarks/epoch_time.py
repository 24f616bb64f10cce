"""Whole-epoch times per model and method, and the paper grid extrapolated from them.

Uses nslab's own training functions (``build_session``, ``train_one_epoch``,
``evaluate``, ``probe_layers``) with the scaler each method asks for. An epoch is
timed on ``--train-images`` training and ``--test-images`` test images (real
CIFAR-100 from ``NSLAB_DATA_DIR``, else a synthetic set of that size) and scaled per
image to the full 50,000 + 10,000; the per-epoch probes (svdvals of every scaled
layer) are timed separately. The grid line: 4 architectures x 3 methods x 200
epochs, from the rows measured (architectures or methods not measured are left out
and said so).

    python benchmarks/epoch_time.py                                     # CPU, small sizes
    python benchmarks/epoch_time.py --device cuda --models mlp5x2000,mlp7x4000,resnet34,resnet50 \\
        --train-images 50000 --test-images 10000 --bf16 --channels-last --json gpu_epochs.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab.config import RunConfig  # noqa: E402
from nslab.models import scaled_parameters  # noqa: E402
from nslab.scaling import NormScaler  # noqa: E402
from nslab.training import build_session  # noqa: E402

from nslab.bench import VARIANTS as METHODS, cpu_name as _cpu_name, model_fields, synthetic_data, time_epoch as timed_epoch  # noqa: E402

FULL_TRAIN, FULL_TEST, EPOCHS, GRID_METHODS = 50_000, 10_000, 200, ("none", "frobenius", "spectral")


def time_epoch(model: str, method: str, data_dir: str, args) -> dict:
    cfg = RunConfig(**model_fields(model), method=METHODS[method]["method"], device=args.device,
                    data_dir=data_dir, train_subset=args.train_images, test_subset=args.test_images,
                    batch_size=args.batch, bf16=args.bf16, channels_last=args.channels_last,
                    rank_method=args.rank_method)
    s = build_session(cfg)
    s.scaler = NormScaler(scaled_parameters(s.model, cfg.scale_rule), seed=cfg.seed, **METHODS[method])
    train_s, test_s, probe_s = timed_epoch(s, args.epochs)
    full = train_s * FULL_TRAIN / args.train_images + test_s * FULL_TEST / args.test_images
    return {"model": model, "method": method, "train_images": args.train_images, "test_images": args.test_images,
            "train_s": train_s, "test_s": test_s, "probe_s": probe_s, "full_epoch_s": full,
            "probe_pct_of_full_epoch": 100 * probe_s / full, "run_200_epochs_h": EPOCHS * (full + probe_s) / 3600}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="mlp3x512,resnet18")
    ap.add_argument("--methods", default="none,frobenius,spectral", help=f"comma list of {list(METHODS)}")
    ap.add_argument("--train-images", type=int, default=2048)
    ap.add_argument("--test-images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed; the last is reported")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--rank-method", default="svd", choices=["svd", "gram"])
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if os.environ.get("NSLAB_DATA_DIR"):
        return measure(args, os.environ["NSLAB_DATA_DIR"])
    with synthetic_data(args.train_images, args.test_images) as folder:
        return measure(args, folder)


def measure(args, data_dir: str) -> list[dict]:
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    print(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, data "
          f"{'real' if os.environ.get('NSLAB_DATA_DIR') else 'synthetic'}, {time.strftime('%Y-%m-%d')}")
    print(f"{'model':<11} {'method':<17} {'train s':>8} {'test s':>7} {'probe s':>8} {'full epoch s':>12} "
          f"{'probe %':>8} {'200 ep h':>9}")
    rows = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            r = time_epoch(model, method, data_dir, args)
            rows.append(r)
            print(f"{model:<11} {method:<17} {r['train_s']:8.2f} {r['test_s']:7.2f} {r['probe_s']:8.3f} "
                  f"{r['full_epoch_s']:12.1f} {r['probe_pct_of_full_epoch']:7.2f}% {r['run_200_epochs_h']:9.2f}",
                  flush=True)
    grid = [r for r in rows if r["method"] in GRID_METHODS]
    total = sum(r["run_200_epochs_h"] for r in grid)
    paper = {"mlp5x2000", "mlp7x4000", "resnet34", "resnet50"}
    measured = sorted({r["model"] for r in grid} & paper)
    print(f"{len(grid)} measured configurations x {EPOCHS} epochs = {total:.1f} h on this device; the paper grid is "
          f"{sorted(paper)} x {list(GRID_METHODS)}" + (f" (measured here: {measured})" if measured else
                                                      " (none of its architectures measured here)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device_name": name, "args": vars(args), "rows": rows, "grid_hours": total,
                       "grid_configs": len(grid)}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
