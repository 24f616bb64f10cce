"""Training: small functions that return data; ``train(config)`` writes the run folder.

``train_one_epoch`` returns a row, ``evaluate`` returns a row, ``probe_layers``
returns rows; ``train`` strings them together, records them, checkpoints, and
resumes from the last checkpoint when the run folder already holds a run.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import nn

from . import __version__
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, settings_differences
from .data import NUM_CLASSES, Split, batches, load_cifar100
from .models import build_model, init_orthogonal_, scaled_parameters
from .probes import layer_stats
from .locks import exclusive
from .records import Run, RunRecorder, load_run, read_json, read_status
from .scaling import NormScaler, make_scaler


class Diverged(RuntimeError):
    """A non-finite loss: the run stops with status ``diverged``."""


@dataclass
class Session:
    """Everything a run mutates, in one place so it can be checkpointed as a whole."""

    config: RunConfig
    device: torch.device
    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: NormScaler
    generator: torch.Generator  # shuffling and augmentation
    train: Split
    test: Split

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is not allowed here: no CUDA device is available (use 'cpu' or 'auto')")
    return torch.device(name)


def build_session(config: RunConfig) -> Session:
    """Load data, build and initialise the model, optimizer, scheduler and scaler."""
    device = resolve_device(config.device)
    if config.bf16 and device.type != "cuda":  # device='auto' on a machine without CUDA
        raise ValueError(f"bf16=True is not allowed on device {device.type!r}: bf16 autocast is a CUDA option")
    torch.set_float32_matmul_precision(config.matmul_precision)
    train_split, test_split = load_cifar100(config.resolved_data_dir, device, config.train_subset,
                                            config.test_subset, config.seed)
    torch.manual_seed(config.seed)
    # Input size from the data; the class count is the data set's (CIFAR-100).
    model = build_model(config.model, config.depth, config.width, train_split.x[0].numel(), NUM_CLASSES)
    init_orthogonal_(scaled_parameters(model, config.scale_rule), torch.Generator().manual_seed(config.seed))
    model.to(device)
    if _channels_last(config, device):
        model.to(memory_format=torch.channels_last)
    scaler = make_scaler(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    # The compiled wrapper shares the model's parameters, so the scaler and checkpoints use `model`.
    forward = torch.compile(model) if config.compile else model
    return Session(config, device, model, forward, optimizer, scheduler, scaler, generator, train_split, test_split)


def _channels_last(config: RunConfig, device: torch.device) -> bool:
    """channels_last helps convolutions on CUDA; an MLP would only copy its input twice."""
    return config.channels_last and device.type == "cuda" and config.model != "mlp"


def _autocast(session: Session):
    if session.config.bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(s: Session) -> dict:
    """One pass over the training set, scaling after every optimizer step; returns loss and accuracy."""
    s.model.train()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    cl = _channels_last(s.config, s.device)
    for x, y in batches(s.train, s.config.batch_size, s.generator, shuffle=True, augmented=True, channels_last=cl):
        with _autocast(s):
            logits = s.forward(x)
            loss = nn.functional.cross_entropy(logits, y)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        s.scaler.step()
        # Accumulate on the device: one host sync per epoch, not per step.
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
    n = len(s.train)
    return {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}


@torch.no_grad()
def evaluate(s: Session) -> dict:
    """Loss and accuracy on the test set (augmented only where ``augment_test``, as the seed code)."""
    s.model.eval()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    cl = _channels_last(s.config, s.device)
    for x, y in batches(s.test, s.config.batch_size, s.generator, shuffle=False,
                        augmented=s.config.augment_test, channels_last=cl):
        with _autocast(s):
            logits = s.forward(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(s.test)
    return {"test_loss": float(loss_sum) / n, "test_acc": float(correct) / n}


@torch.no_grad()
def probe_layers(s: Session, epoch: int, with_spectra: bool) -> tuple[list[dict], pd.DataFrame | None]:
    """One ``layers.csv`` row per scaled weight, and the long-format spectra when asked."""
    estimates = s.scaler.estimate_sigmas()
    rows, spectra = [], []
    for name, w, target, est in zip(s.scaler.names, s.scaler.weights, s.scaler.targets, estimates):
        row, sv = layer_stats(w, s.config.rank_rtol, s.config.rank_method)
        rel_err = abs(est - row["sigma_max"]) / row["sigma_max"] if s.config.method == "spectral" else float("nan")
        rows.append({"epoch": epoch, "layer": name, **row,
                     "target": target if s.config.method != "none" else float("nan"),
                     "power_iter_rel_err": rel_err})
        if with_spectra:
            values = sv.double().cpu().numpy()
            spectra.append(pd.DataFrame({"epoch": epoch, "layer": name, "index": range(len(values)), "sigma": values}))
    return rows, (pd.concat(spectra, ignore_index=True) if with_spectra else None)


def provenance(config: RunConfig, device: torch.device) -> dict:
    """config.json: the resolved configuration plus what made the run."""
    return {**config.to_dict(), "run_name": config.run_name, "data_dir_resolved": config.resolved_data_dir,
            "device_resolved": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "nslab_version": __version__, "torch_version": torch.__version__, "python_version": platform.python_version(),
            "git_revision": _git_revision(), "rank_tolerance": f"sigma_i > {config.rank_rtol} * sigma_max"}


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def format_progress(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.1e}  "
            f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:5.2f}%  "
            f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:5.2f}%  {row['seconds']:.1f}s")


def _check_resumable(run_dir: str, config: RunConfig, device: torch.device) -> None:
    old = read_json(os.path.join(run_dir, "config.json"))
    diff = settings_differences(old, config)
    if diff:
        raise ValueError(f"run folder {run_dir!r} holds a run with other settings ({', '.join(diff)}): "
                         f"choose another name or out_dir, or delete that folder")
    trained_on = str(old.get("device_resolved", device.type)).split(":")[0]
    if trained_on != device.type:
        raise ValueError(f"run folder {run_dir!r} was trained on {trained_on!r} and cannot resume on {device.type!r}: "
                         f"its checkpoints hold {trained_on} generator states; resume it on a {trained_on} device")


def train(config: RunConfig, log: Callable[[str], None] = print) -> Run:
    """Train one configuration into ``config.run_dir``, resuming if a run is already there.

    Returns the run folder read back. A completed run is not trained again.
    """
    run_dir = config.run_dir
    existing = os.path.exists(os.path.join(run_dir, "config.json"))
    if existing:
        _check_resumable(run_dir, config, resolve_device(config.device))
        status = read_status(run_dir).get("status", "")
        if status in ("completed", "diverged"):  # a diverged run would diverge again, identically
            log(f"{config.run_name}: already {status} in {run_dir}; not training again")
            return load_run(run_dir)
    session = build_session(config)  # validates data and sizes before anything is written
    with exclusive(run_dir):  # two writers would interleave tables and checkpoints
        return _train(session, existing, log)


def _train(session: Session, existing: bool, log: Callable[[str], None]) -> Run:
    config, run_dir = session.config, session.config.run_dir
    recorder = RunRecorder(run_dir)
    start = 1
    found = latest_checkpoint(run_dir) if existing else None
    if found:
        epoch, path = found
        session.load_state_dict(load_checkpoint(path))
        recorder.resume_from(epoch)
        start = epoch + 1
        log(f"{config.run_name}: resuming from the checkpoint of epoch {epoch}")
    elif existing:
        recorder.clear()  # an earlier attempt stopped before its first checkpoint: start afresh
    recorder.write_config(provenance(config, session.device))
    recorder.set_status("running", f"epoch {start - 1} of {config.epochs} done", start - 1)
    epoch = start - 1
    try:
        if start == 1:
            recorder.add_layers(*probe_layers(session, 0, with_spectra=True))
        for epoch in range(start, config.epochs + 1):
            _run_epoch(session, recorder, epoch, log)
    except Diverged as err:
        recorder.set_status("diverged", str(err), epoch)
        log(f"{config.run_name}: diverged: {err}")
        return load_run(run_dir)
    except BaseException as err:  # KeyboardInterrupt too: the folder must say the run stopped
        recorder.set_status("failed", f"{type(err).__name__}: {err}", epoch)
        raise
    recorder.set_status("completed", f"{config.epochs} epochs", config.epochs)
    return load_run(run_dir)


def _run_epoch(s: Session, recorder: RunRecorder, epoch: int, log: Callable[[str], None]) -> None:
    cfg = s.config
    t0 = time.perf_counter()
    lr = s.optimizer.param_groups[0]["lr"]
    row = {"epoch": epoch, "lr": lr, **train_one_epoch(s)}
    s.scheduler.step()
    row.update(evaluate(s))
    row["seconds"] = time.perf_counter() - t0
    recorder.add_epoch(row)
    log(format_progress(row, cfg.epochs))
    if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
        raise Diverged(f"non-finite loss at epoch {epoch} (train {row['train_loss']}, test {row['test_loss']})")
    last = epoch == cfg.epochs
    recorder.add_layers(*probe_layers(s, epoch, with_spectra=last or epoch % cfg.spectra_every == 0))
    if last or epoch % cfg.checkpoint_every == 0:
        save_checkpoint(recorder.run_dir, epoch, s.state_dict())
