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
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ._version import __version__
from .checkpoint import load_latest, save_checkpoint
from .config import RunConfig, arch_name
from .conv_spectra import conv_geometry
from .data import ARRAY_FILE, NUM_CLASSES, Split, batches, load_cifar100
from .locks import exclusive
from .models import build_model, init_orthogonal_, scaled_parameters
from .probing import probe_layers
from .progress import Progress
from .records import Run, RunRecorder, load_run, read_json, read_status
from .resume import check_data, check_settings, missing_rows, remove_orphans
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
    geometry: dict  # conv weight name -> ConvGeometry (the input size each conv sees); {} for an MLP

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def data_fingerprint(self) -> dict:
        """What config.json records of the data: its source and a hash of each split as used."""
        path = os.path.join(self.config.resolved_data_dir, ARRAY_FILE)
        source = {"source": os.path.abspath(path), "bytes": os.path.getsize(path)} if os.path.exists(path) else \
            {"source": os.path.abspath(self.config.resolved_data_dir), "bytes": None}
        return {**source, "train": self.train.fingerprint, "test": self.test.fingerprint}

    def batches_per_epoch(self) -> int:
        return -(-len(self.train) // self.config.batch_size)

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
    geometry = conv_geometry(model, train_split.x.shape[-1])  # before a parametrization renames the weights
    scaler = make_scaler(model, config, geometry)  # before the optimizer: a parametrization re-registers weights
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    # The compiled wrapper shares the model's parameters, so the scaler and checkpoints use `model`.
    forward = torch.compile(model) if config.compile else model
    return Session(config, device, model, forward, optimizer, scheduler, scaler, generator, train_split, test_split,
                   geometry)


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Adam (the seed's), or AdamW with decoupled weight decay on the weights of 2 or more dims
    (biases and norm scales are not decayed, as in nanoGPT) when ``weight_decay > 0``."""
    if config.weight_decay <= 0:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _channels_last(config: RunConfig, device: torch.device) -> bool:
    """channels_last is for convolutions (fastest on CUDA; it also runs on the CPU); an MLP would only
    copy its input twice."""
    return config.channels_last and config.model != "mlp"


def _autocast(bf16: bool):
    if bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
               scaler: NormScaler, x: torch.Tensor, y: torch.Tensor, bf16: bool = False):
    """One training step: forward (bf16 autocast on CUDA if asked), cross-entropy, backward, the
    optimizer's step, then the norm scaling. Returns (loss, logits), not synchronised with the host.
    Training and the benchmarks (nslab.bench) time exactly this."""
    with _autocast(bf16):
        logits = forward(x)
        loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scaler.step()
    return loss, logits


def train_one_epoch(s: Session, on_batch: Callable[[], None] | None = None) -> dict:
    """One pass over the training set, scaling after every optimizer step; returns loss and accuracy."""
    s.model.train()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    cl = _channels_last(s.config, s.device)
    for x, y in batches(s.train, s.config.batch_size, s.generator, shuffle=True, augmented=True, channels_last=cl):
        loss, logits = train_step(s.forward, s.optimizer, s.scaler, x, y, s.config.bf16)
        # Accumulate on the device: one host sync per epoch, not per step.
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        if on_batch is not None:
            on_batch()
    n = len(s.train)
    return {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}


@torch.no_grad()
def evaluate(s: Session, augmented: bool | None = None) -> dict:
    """Loss and accuracy on the test set (augmented where ``augment_test``, as the seed code, unless
    ``augmented`` says otherwise; the clean pass draws no random numbers)."""
    augmented = s.config.augment_test if augmented is None else augmented
    s.model.eval()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    cl = _channels_last(s.config, s.device)
    for x, y in batches(s.test, s.config.batch_size, s.generator, shuffle=False, augmented=augmented,
                        channels_last=cl):
        with _autocast(s.config.bf16):
            logits = s.forward(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(s.test)
    return {"test_loss": float(loss_sum) / n, "test_acc": float(correct) / n}


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


def train(config: RunConfig, log: Callable[[str], None] = print, progress: bool | None = None) -> Run:
    """Train one configuration into ``config.run_dir``, resuming if a run is already there.

    Returns the run folder read back. A completed (or diverged) run is not trained again, unless
    ``config.epochs`` is larger than its epochs: then it is extended from its last checkpoint.
    ``progress``: tqdm bars (None: where someone watches, see nslab.progress); ``log`` gets one line per
    epoch either way.
    """
    run_dir = config.run_dir
    log(f"run folder: {os.path.abspath(run_dir)}")
    device = resolve_device(config.device)
    # Cheap checks first, so a refusal costs no data loading; repeated under the lock, where they count.
    early = _decide(config, device.type, log)
    if early is not None:
        return early
    log(f"loading CIFAR-100 from {config.resolved_data_dir} "
        f"({config.train_subset or 'all'} train / {config.test_subset or 'all'} test images), building "
        f"{arch_name(config.to_dict())} with method {config.method} on {device.type}")
    _warn_first_layer_targets(config, log)
    session = build_session(config)  # validates data and sizes before anything is written
    with exclusive(run_dir):  # two writers would interleave tables and checkpoints
        done = _decide(config, device.type, log)
        if done is not None:
            return done
        return _train(session, log, progress)


def _decide(config: RunConfig, device_type: str, log: Callable[[str], None]) -> Run | None:
    """The run folder read back if there is nothing to train; raises if the folder holds another run."""
    path = os.path.join(config.run_dir, "config.json")
    if not os.path.exists(path):
        return None
    old = read_json(path)
    check_settings(config.run_dir, old, config, device_type)
    status = read_status(config.run_dir).get("status", "")
    # A diverged run would diverge again, identically, however many epochs are asked for.
    if status == "diverged" or (status == "completed" and config.epochs <= int(old.get("epochs", 0))):
        log(f"{config.run_name}: already {status} in {config.run_dir}; not training again")
        return load_run(config.run_dir)
    return None


def _warn_first_layer_targets(config: RunConfig, log: Callable[[str], None]) -> None:
    """First-layer targets follow the first layer's shape: at widths the blog did not use, they squash."""
    if config.targets != "first_layer" or config.method == "none" or config.model != "mlp":
        return
    target = math.sqrt((100 if config.depth == 1 else config.width) / 3072)
    blog = {(5, 2000): 0.807, (7, 4000): 1.141}.get((config.depth, config.width))
    if blog is None:
        log(f"warning: targets='first_layer' gives every layer the first layer's target {target:.3f} "
            f"(sqrt({config.width}/3072)); the blog's widths gave 0.807 (5x2000) and 1.141 (7x4000). A product of "
            f"{config.depth} layers at {target:.3f} can squash the logits to near-chance loss")


def _train(session: Session, log: Callable[[str], None], progress: bool | None) -> Run:
    config, run_dir = session.config, session.config.run_dir
    recorder = RunRecorder(run_dir)
    for path in remove_orphans(run_dir):
        log(f"removed {path}, left by a crash")
    old = read_json(os.path.join(run_dir, "config.json")) if os.path.exists(os.path.join(run_dir, "config.json")) else None
    fingerprint = session.data_fingerprint()
    start, finals = 1, list(old.get("earlier_final_epochs", [])) if old else []
    if old is not None:
        check_data(run_dir, old, fingerprint)
        found = load_latest(run_dir, log)
        if found:
            epoch, state = found
            if epoch == int(old.get("epochs", 0)) and config.epochs > epoch:
                finals.append(epoch)
                log(f"{config.run_name}: extending from {epoch} to {config.epochs} epochs (the learning-rate "
                    f"schedule continues: milestones {list(config.milestones)})")
            run = load_run(run_dir)
            missing = missing_rows(run, epoch, config.spectra_every, set(finals), config.op_spectra_every)
            if missing:
                raise ValueError(f"run folder {run_dir!r} cannot resume from its checkpoint of epoch {epoch}: "
                                 f"{'; '.join(missing)}. Restore those files, or delete the folder to start afresh")
            session.load_state_dict(state)
            recorder.resume_from(run, epoch)
            start = epoch + 1
            log(f"{config.run_name}: resuming from the checkpoint of epoch {epoch}")
        else:
            recorder.clear()  # an earlier attempt stopped before its first checkpoint: start afresh
    recorder.write_config({**provenance(config, session.device), "data_fingerprint": fingerprint,
                           "target_norm": session.scaler.target_norm, "earlier_final_epochs": finals})
    recorder.set_status("running", f"epoch {start - 1} of {config.epochs} done", start - 1)
    bars = Progress(config.epochs, start - 1, session.batches_per_epoch(), progress, desc=config.run_name)
    say = bars.write if bars.enabled and log is print else log
    done = start - 1  # the last epoch whose rows are recorded
    try:
        if start == 1:
            recorder.add_probe(probe_layers(session, 0, True, config.op_spectra_every > 0))
        for epoch in range(start, config.epochs + 1):
            _run_epoch(session, recorder, epoch, say, bars)
            done = epoch
            if epoch < config.epochs:
                recorder.set_status("running", f"epoch {epoch} of {config.epochs} done", epoch)
    except Diverged as err:
        recorder.set_status("diverged", str(err), done + 1)
        say(f"{config.run_name}: diverged: {err}")
        return load_run(run_dir)
    except KeyboardInterrupt:
        _record_stop(recorder, "interrupted", f"interrupted after epoch {done}; run again to resume", done)
        raise
    except BaseException as err:
        _record_stop(recorder, "failed", f"{type(err).__name__}: {err}", done)
        raise
    finally:
        bars.close()
    recorder.set_status("completed", f"{config.epochs} epochs", config.epochs)
    return load_run(run_dir)


def _record_stop(recorder: RunRecorder, status: str, message: str, epoch: int) -> None:
    """Say why the run stopped in status.json, and on stderr too: with a full disk the file may not be written."""
    print(f"{os.path.basename(recorder.run_dir)}: {status}: {message}", file=sys.stderr, flush=True)
    try:
        recorder.set_status(status, message, epoch)
    except OSError as err:
        print(f"{recorder.run_dir}: could not record the status ({err})", file=sys.stderr, flush=True)


def _run_epoch(s: Session, recorder: RunRecorder, epoch: int, log: Callable[[str], None], bars: Progress) -> None:
    cfg = s.config
    t0 = time.perf_counter()
    lr = s.optimizer.param_groups[0]["lr"]
    bars.start_epoch(epoch)
    row = {"epoch": epoch, "lr": lr, **train_one_epoch(s, on_batch=bars.batch)}
    s.scheduler.step()
    row.update(evaluate(s))
    if cfg.augment_test:  # the seed's augmented test set, and the clean one beside it
        row.update({f"clean_{k}": v for k, v in evaluate(s, augmented=False).items()})
    row["seconds"] = time.perf_counter() - t0
    recorder.add_epoch(row)
    line = format_progress(row, cfg.epochs)
    log(line)
    bars.end_epoch(f"test acc {100 * row['test_acc']:.2f}%")
    if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
        raise Diverged(f"non-finite loss at epoch {epoch} (train {row['train_loss']}, test {row['test_loss']})")
    last = epoch == cfg.epochs
    op_every = cfg.op_spectra_every
    recorder.add_probe(probe_layers(s, epoch, last or epoch % cfg.spectra_every == 0,
                                    op_every > 0 and (last or epoch % op_every == 0)))
    if last or epoch % cfg.checkpoint_every == 0:
        save_checkpoint(recorder.run_dir, epoch, s.state_dict())
