"""Cost of norm scaling per training step, against the same step without it (nslab.bench's step section).

For each model and batch size, one process builds a model per method (same init), then times
nslab's training step (forward, backward, Adam, ``NormScaler.step()``) in alternating rounds, so
every ratio compares steps measured side by side. The sigma_1 error column is the estimate the
next step would make against ``svdvals``, the largest over layers, after the timed steps.

    python benchmarks/step_overhead.py --models mlp5x2000 --batch 512,128        # the CPU goal
    python benchmarks/step_overhead.py --device cuda --models mlp5x2000,mlp7x4000,resnet34,resnet50 \\
        --batch 128,512 --bf16 --channels-last --cuda-graph --json gpu.json      # paper sizes

``python -m nslab bench`` runs this with every other speed measurement. Models: ``mlpDxW`` or a ResNet.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab.bench import STEP_HEADER, VARIANTS, environment, step_overhead  # noqa: E402

CPU_DEFAULTS = dict(models="mlp3x512,resnet18", batch="64")
GPU_DEFAULTS = dict(models="mlp5x2000,mlp7x4000,resnet34,resnet50", batch="128,512")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="", help=f"comma list; CPU default {CPU_DEFAULTS['models']}, "
                                                 f"CUDA default {GPU_DEFAULTS['models']}")
    ap.add_argument("--batch", default="", help="comma list of batch sizes")
    ap.add_argument("--methods", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=20, help="most timed steps per method and round")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="time each method this long per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last ResNets")
    ap.add_argument("--cuda-graph", action="store_true", help="also time the scaling step captured as a CUDA graph")
    ap.add_argument("--json", default="", help="write the table and environment here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    models = (args.models or defaults["models"]).split(",")
    batch = [int(b) for b in (args.batch or defaults["batch"]).split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; allowed are {list(VARIANTS)}")
    env = environment(device)
    print(f"# {env['device_name']}, torch {env['torch']}, {env['threads']} threads, {env['date']}, "
          f"commit {env['commit']}")
    print(STEP_HEADER)
    rows = step_overhead(models, batch, methods, device, args.steps, args.warmup, args.rounds, args.min_seconds,
                         args.bf16, args.channels_last, args.cuda_graph)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
