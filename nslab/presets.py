"""Named configurations: the blog's 12 runs and a CPU-sized quick run.

``PAPER`` is the seed code's behaviour (NOTES.md): first-layer spectral targets,
500 cold power iterations, augmented test set, 'medium' float32 matmuls, and the
seed's rule for which weights are scaled. The 12 presets are
``<arch>-<method>``, e.g. ``mlp5x2000-spectral`` or ``resnet50-frobenius``.
"""
from __future__ import annotations

from typing import Any

from .config import BLOG_METHODS, RunConfig

PAPER: dict[str, Any] = {
    "epochs": 200, "batch_size": 512, "lr": 1e-3, "milestones": (60, 120), "gamma": 0.1, "seed": 1,
    "targets": "first_layer", "power_iters": 500, "warm_start": False, "augment_test": True,
    "matmul_precision": "medium", "scale_rule": "seed", "spectra_every": 10, "checkpoint_every": 10,
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp5x2000": {"model": "mlp", "depth": 5, "width": 2000},
    "mlp7x4000": {"model": "mlp", "depth": 7, "width": 4000},
    "resnet34": {"model": "resnet34"},
    "resnet50": {"model": "resnet50"},
}

QUICK: dict[str, Any] = {
    "model": "mlp", "depth": 3, "width": 512, "method": "spectral", "epochs": 10, "batch_size": 256,
    "train_subset": 10000, "test_subset": 2000, "milestones": (60, 120), "spectra_every": 1,
    "checkpoint_every": 5,
}

PRESETS: dict[str, dict[str, Any]] = {"quick": QUICK}
for _arch, _fields in ARCHITECTURES.items():
    for _method in BLOG_METHODS:  # new methods get no paper presets
        PRESETS[f"{_arch}-{_method}"] = {**PAPER, **_fields, "method": _method, "name": f"{_arch}-{_method}"}


def preset(name: str, **overrides: Any) -> RunConfig:
    """The named preset as a RunConfig, with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed: choose one of {sorted(PRESETS)}")
    return RunConfig.from_dict({**PRESETS[name], **overrides})
