"""Checkpoints: everything needed to resume a run exactly, written atomically."""
from __future__ import annotations

import glob
import os
import re

import torch

from .records import atomic_path

_PATTERN = re.compile(r"epoch_(\d+)\.pt$")


def checkpoint_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"epoch_{epoch:04d}.pt")


def save_checkpoint(run_dir: str, epoch: int, state: dict) -> str:
    """``state``: model, optimizer, scheduler, scaler and generator states (any picklable dict)."""
    path = checkpoint_path(run_dir, epoch)
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, **state}, tmp)
    return path


def latest_checkpoint(run_dir: str) -> tuple[int, str] | None:
    """(epoch, path) of the newest checkpoint, or None."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "epoch_*.pt")):
        m = _PATTERN.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return max(found) if found else None


def load_checkpoint(path: str) -> dict:
    """Load on the CPU: generator states must stay CPU tensors; load_state_dict moves the rest."""
    # weights_only=False: the file holds plain Python containers this module wrote itself.
    return torch.load(path, map_location="cpu", weights_only=False)
