"""Cost of exact spectra: ``svdvals`` against Gram + ``eigvalsh`` (nslab.probes.singular_values).

    python benchmarks/probe_cost.py                         # CPU: 2000x2000 and 4000x4000
    python benchmarks/probe_cost.py --device cuda --sizes 2000,4000,3072x2000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nslab.probes import singular_values  # noqa: E402

from nslab.bench import cpu_name as _cpu_name, sync as _sync  # noqa: E402


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default="2000,4000", help="N (square) or MxN, comma separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    print(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':<11} {'svd s':>8} {'gram s':>8} {'max |diff|/sigma_1':>19}")
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for size in args.sizes.split(","):
        m, n = (int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
        w = torch.randn(m, n, generator=gen, device=dev) / n ** 0.5
        row = {"shape": f"{m}x{n}"}
        out = {}
        for method in ("svd", "gram"):
            best = float("inf")
            for _ in range(args.repeats):
                _sync(dev)
                t0 = time.perf_counter()
                out[method] = singular_values(w, method)
                _sync(dev)
                best = min(best, time.perf_counter() - t0)
            row[f"{method}_s"] = best
        row["max_rel_diff"] = float((out["svd"].double() - out["gram"].double()).abs().max() / out["svd"][0])
        rows.append(row)
        print(f"{row['shape']:<11} {row['svd_s']:8.3f} {row['gram_s']:8.3f} {row['max_rel_diff']:19.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device_name": name, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
