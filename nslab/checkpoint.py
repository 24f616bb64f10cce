"""Checkpoints: everything needed to resume a run exactly, written atomically, read without running code.

A run folder may come from someone else, so checkpoints are read with ``torch.load(weights_only=True)``:
tensors and plain containers load, anything else (a pickle that would call a function) is refused.
What nslab saves (model, optimizer, scheduler, scaler and generator states) is all of that kind.
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import warnings
import zipfile

import torch

from .records import atomic_path

_PATTERN = re.compile(r"epoch_(\d+)\.pt$")
CORRUPT_SUFFIX = ".corrupt"


class ForeignCheckpoint(ValueError):
    """A checkpoint that holds objects nslab never writes: refused, never unpickled."""


def checkpoint_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"epoch_{epoch:04d}.pt")


def save_checkpoint(run_dir: str, epoch: int, state: dict) -> str:
    """``state``: model, optimizer, scheduler, scaler and generator states (tensors and plain containers)."""
    path = checkpoint_path(run_dir, epoch)
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, **state}, tmp)
    return path


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of every checkpoint, oldest first."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "epoch_*.pt")):
        m = _PATTERN.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> tuple[int, str] | None:
    """(epoch, path) of the newest checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str) -> dict:
    """Load on the CPU (generator states must stay CPU tensors; load_state_dict moves the rest).

    Raises :class:`ForeignCheckpoint` for a file holding objects other than tensors and containers,
    and ``ValueError`` naming the file for one that is truncated or not a checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # A named global (a function or class to call) is someone else's object; an unknown opcode is a
        # damaged file (or a pickle that is not torch's format): that one is treated as corrupt.
        if "GLOBAL" in text or "Unsupported global" in text or "Unsupported class" in text:
            detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
            raise ForeignCheckpoint(f"checkpoint {path} holds objects nslab never writes ({detail}); it was "
                                    f"refused and nothing in it ran: delete it, or move it out of checkpoints/ "
                                    f"to resume from an earlier one") from None
        raise ValueError(f"checkpoint {path} is not readable ({text.splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else 'empty file'})") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"checkpoint {path} is not an nslab checkpoint (no epoch entry)")
    return state


def load_latest(run_dir: str, log=print) -> tuple[int, dict] | None:
    """The newest checkpoint that loads, as (epoch, state); None if there is none.

    A truncated or corrupt file (a crash mid-copy, a full disk) is renamed aside to ``*.corrupt``, with a
    warning naming it, and the previous checkpoint is tried. A foreign file is refused
    (:class:`ForeignCheckpoint`): nslab does not guess past a file someone planted.
    """
    for epoch, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except ForeignCheckpoint:
            raise
        except ValueError as err:
            aside = path + CORRUPT_SUFFIX
            os.replace(path, aside)
            message = f"{err}; kept as {aside}, trying the previous checkpoint"
            warnings.warn(message, stacklevel=2)
            log(f"warning: {message}")
            continue
        if int(state["epoch"]) != epoch:
            raise ValueError(f"checkpoint {path} says epoch {state['epoch']}, its name says {epoch}")
        return epoch, state
    return None
