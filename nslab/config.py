"""Run configuration: one frozen dataclass with flat literal fields.

The papermill ``parameters`` cell of ``notebooks/01_reproduce.ipynb`` mirrors
:class:`RunConfig` name for name, so a notebook parameter and a config field are
the same thing. All validation lives here: a bad value raises ``ValueError``
naming the field, the value and what is allowed, before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .methods import METHODS as _METHOD_CLASSES
from .estimators import PRECISIONS
from .methods import TARGETS
from .models import MODELS as _MODEL_BUILDERS
from .models import SCALE_RULES
from .probes import RANK_METHODS

MODELS = tuple(_MODEL_BUILDERS)  # the registry of nslab.models: a new model shows up here
METHODS = tuple(_METHOD_CLASSES)  # the registry of nslab.methods: a new method class shows up here
BLOG_METHODS = ("none", "frobenius", "spectral")
CONV_NORMS = ("reshape", "operator")
DEVICES = ("auto", "cpu", "cuda")
MATMUL_PRECISIONS = ("highest", "high", "medium")
# Bounds that catch typos before a process tries to allocate them (an MLP of width 65536 is 4e9 weights
# per hidden layer already); a folder name is at most 255 bytes on Linux filesystems.
MAX_SEED = 2**62
MAX_DEPTH, MAX_WIDTH, MAX_ITERS, MAX_BATCH = 1024, 65536, 100_000, 1 << 20
MAX_NAME_BYTES = 255


def _f(default: Any, help: str = "", *, resumable: bool = False, configuration: bool = True,
       named: bool = False, location: bool = False):
    """A RunConfig field with its classification (``dataclasses.fields(RunConfig)[i].metadata``).

    help: the one-line comment shown in ``--help`` and the notebook's parameters cell.
    resumable: may differ between a run folder and the run that resumes it (where it is kept or run).
    configuration: makes runs different configurations (False: seeds and places, averaged or ignored).
    named: shown in the derived run name (``mlp5x2000-spectral-s1``).
    location: where the run is kept; never part of a name or a comparison.
    """
    return field(default=default, metadata={"help": help, "resumable": resumable, "configuration": configuration,
                                            "named": named, "location": location})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run.

    Defaults are the blog's recipe (NOTES.md) with nslab's own choices where the
    blog's text and its authors' code differ: per-layer spectral targets and a
    warm-started power iteration. ``presets.PRESETS['paper-*']`` switch to the
    seed code's exact behaviour. Each field's classification is in its metadata
    (see :func:`_f` and :func:`field_names`).
    """

    # identity
    name: str = _f("", "run folder name under out_dir, empty: derived from the config", resumable=True,
                   configuration=False, location=True)
    # model
    model: str = _f("mlp", "mlp or resnet18/34/50: any name in nslab.models.MODELS", named=True)
    depth: int = _f(5, "MLP: number of Linear layers", named=True)
    width: int = _f(2000, "MLP: hidden width", named=True)
    scale_rule: str = _f("all", "all: every weight of 2 or more dims; seed: skip bn, bias, downsample; "
                                "layers: Linear and Conv weights only")
    # norm scaling (applied after every optimizer step)
    method: str = _f("none", "none, frobenius, spectral (the blog's), or any name in nslab.methods.METHODS",
                     named=True)
    targets: str = _f("per_layer", "spectral targets: per_layer sqrt(d_out/d_in), first_layer (the seed code), "
                                   "channels sqrt(c_out/c_in) for convs")
    power_iters: int = _f(2, "iterations per optimizer step (warm: block iterations, cold: the seed used 500)")
    warm_start: bool = _f(True, "keep singular vectors between steps (False: fresh random, as the seed)")
    power_tol: float = _f(0.0, "> 0: stop iterating once sigma changes by less (costs a host sync)")
    power_block: int = _f(32, "warm start: vectors tracked per layer (block iteration, see nslab.estimators)")
    power_precision: str = _f("auto", "warm start: the estimator's large products in float32, bfloat16, or auto "
                                      "(bfloat16 where the device multiplies it in hardware); sigma stays float32")
    conv_norm: str = _f("reshape", "convs: reshape (the blog: the (out, in*kh*kw) matrix) or operator (the conv's "
                                   "operator norm, spectral and spectral_cap)")
    cuda_graph: bool = _f(False, "capture the scaling step as a CUDA graph (CUDA, warm start only)")
    # optimisation (seed recipe)
    epochs: int = _f(200, "training epochs (raise it to extend a finished run)")
    batch_size: int = _f(512, "images per optimizer step")
    lr: float = _f(1e-3, "Adam learning rate")
    weight_decay: float = _f(0.0, "> 0: AdamW's decoupled weight decay on every weight of 2 or more dims")
    milestones: tuple = _f((60, 120), "MultiStepLR epochs")
    gamma: float = _f(0.1, "learning-rate factor at each milestone")
    seed: int = _f(1, "seeds init, data order, augmentation and subsets", configuration=False, named=True)
    # data
    data_dir: str = _f("", "empty: $NSLAB_DATA_DIR, else data/", resumable=True, configuration=False)
    train_subset: int = _f(0, "0 for all, else a seeded random subset")
    test_subset: int = _f(0, "0 for all, else a seeded random subset")
    augment_test: bool = _f(False, "the seed code also augmented the test set")
    # hardware
    device: str = _f("auto", "auto: cuda if available, else cpu", resumable=True, configuration=False)
    bf16: bool = _f(False, "bf16 autocast (CUDA only)")
    matmul_precision: str = _f("highest", "the seed code used medium")
    channels_last: bool = _f(False, "ResNets in channels_last memory format (usually faster on CUDA)")
    compile: bool = _f(False, "torch.compile the model's forward and backward")
    # records
    out_dir: str = _f("outputs", "run folders go to out_dir/<name>/", resumable=True, configuration=False,
                      location=True)
    spectra_every: int = _f(10, "full singular values every N epochs (and at epoch 0 and the end)")
    op_spectra_every: int = _f(0, "convs: the full operator spectrum every N epochs (0: never; it is large)")
    checkpoint_every: int = _f(10, "checkpoint every N epochs (and at the end)")
    rank_rtol: float = _f(1e-3, "numerical rank counts sigma_i > rank_rtol * sigma_1")
    rank_method: str = _f("gram", "exact singular values: gram (eigvalsh in float64, cheapest) or svd (svdvals)")

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), f.default))
        self._validate()

    # -- validation ------------------------------------------------------------
    def _validate(self) -> None:
        _choice("model", self.model, MODELS)
        _choice("method", self.method, METHODS)
        _choice("targets", self.targets, TARGETS)
        _choice("scale_rule", self.scale_rule, SCALE_RULES)
        _choice("device", self.device, DEVICES)
        _choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
        _choice("rank_method", self.rank_method, RANK_METHODS)
        _choice("power_precision", self.power_precision, PRECISIONS)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name}={value!r} is not allowed: must be a finite number")
            if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError(f"{f.name}={value!r} is not allowed: control characters (newline, tab, ...) "
                                 f"cannot be part of a name or path")
        for name in ("depth", "width", "epochs", "batch_size", "power_iters", "power_block", "spectra_every",
                     "checkpoint_every"):
            _positive(name, getattr(self, name))
        for name in ("lr", "gamma", "rank_rtol"):
            _positive(name, getattr(self, name))
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} is not allowed: must be >= 0 (0: plain Adam)")
        method = _METHOD_CLASSES[self.method]
        if method.needs_block and not self.warm_start:
            raise ValueError(f"method={self.method!r} is not allowed with warm_start=False: it corrects the Ritz "
                             f"values of the warm block")
        _choice("conv_norm", self.conv_norm, CONV_NORMS)
        if self.conv_norm == "operator" and not method.operator_norm:
            raise ValueError(f"conv_norm='operator' is not allowed with method={self.method!r}: only "
                             f"{[n for n, m in _METHOD_CLASSES.items() if m.operator_norm]} correct a conv's operator")
        if self.conv_norm == "operator" and not self.warm_start:
            raise ValueError("conv_norm='operator' is not allowed with warm_start=False: the operator's top triple "
                             "is tracked by a warm block")
        for name in ("train_subset", "test_subset", "seed", "op_spectra_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: must be >= 0")
        if self.seed > MAX_SEED:
            raise ValueError(f"seed={self.seed!r} is not allowed: must be at most {MAX_SEED} (2**62)")
        for name, most in (("depth", MAX_DEPTH), ("width", MAX_WIDTH), ("power_iters", MAX_ITERS),
                           ("batch_size", MAX_BATCH), ("power_block", MAX_WIDTH)):
            if getattr(self, name) > most:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: must be at most {most}")
        if self.power_tol < 0:
            raise ValueError(f"power_tol={self.power_tol!r} is not allowed: must be >= 0 (0 disables early stopping)")
        if any(m <= 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones={self.milestones!r} is not allowed: positive epochs in increasing order")
        if self.bf16 and self.device == "cpu":
            raise ValueError("bf16=True is not allowed with device='cpu': bf16 autocast is a CUDA option")
        if self.cuda_graph and self.device == "cpu":
            raise ValueError("cuda_graph=True is not allowed with device='cpu': it needs a CUDA device")
        if self.cuda_graph and (method.syncs_host or method.in_forward):
            raise ValueError(f"cuda_graph=True is not allowed with method={self.method!r}: its step "
                             + ("lives in the forward pass" if method.in_forward else "waits for the host"))
        if self.cuda_graph and method.uses_estimator and (not self.warm_start or self.power_tol > 0):
            raise ValueError(f"cuda_graph=True is not allowed with warm_start={self.warm_start!r}, "
                             f"power_tol={self.power_tol!r}: capture needs warm_start=True and power_tol=0")
        if self.name and (os.sep in self.name or self.name in (".", "..")):
            raise ValueError(f"name={self.name!r} is not allowed: a plain folder name without '{os.sep}'")
        if len(self.run_name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"name={self.run_name!r} is not allowed: a folder name has at most {MAX_NAME_BYTES} "
                             f"bytes, this one {len(self.run_name.encode())}")

    # -- derived ---------------------------------------------------------------
    @property
    def run_name(self) -> str:
        """The run folder's name: ``name`` if set, else e.g. ``mlp5x2000-spectral-s1``."""
        if self.name:
            return self.name
        return f"{arch_name(self.to_dict())}-{self.method}-s{self.seed}"

    @property
    def resolved_data_dir(self) -> str:
        return self.data_dir or os.environ.get("NSLAB_DATA_DIR", "") or "data"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out_dir, self.run_name)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}: allowed are {sorted(known)}")
        return cls(**values)


def field_names(flag: str, value: bool = True) -> tuple[str, ...]:
    """RunConfig's fields whose metadata ``flag`` is ``value``, in declaration order (see :func:`_f`)."""
    return tuple(f.name for f in fields(RunConfig) if f.metadata[flag] == value)


def arch_name(config: Mapping[str, Any]) -> str:
    """The architecture as runs, tables and the blog name it: ``mlp5x2000`` for an MLP, else the model."""
    if config.get("model", "mlp") == "mlp":
        return f"mlp{config.get('depth')}x{config.get('width')}"
    return str(config["model"])


def settings_differences(old: Mapping[str, Any], new: "RunConfig") -> list[str]:
    """What differs between a run folder's config.json and ``new``, as 'field: X there, Y here'.

    Resumable fields (where a run is kept or run) may differ; so may ``epochs`` when ``new`` raises it
    (the run is extended). The resolved device type and the data are compared separately.
    """
    values = new.to_dict()
    resumable = field_names("resumable")
    old = {**BEFORE_THE_FIELD, **old}
    return [f"{k}: {old.get(k)!r} there, {v!r} here" for k, v in values.items()
            if k not in resumable and old.get(k) != v
            and not (k == "epochs" and isinstance(old.get(k), int) and v > old[k])]


# What a run folder written before a field existed did (its config.json lacks the key): such a run
# resumes with these values and differs from others, e.g. power_precision="auto".
BEFORE_THE_FIELD = {"power_precision": "float32", "weight_decay": 0.0, "conv_norm": "reshape",
                    "op_spectra_every": 0}


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {list(allowed)}")


def _positive(name: str, value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r} is not allowed: must be > 0")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Coerce a value to its field's type where that is safe.

    Papermill and the command line hand over ``-p lr 1`` as int and ``-p width abc``
    as str; ints widen to float, numeric strings parse, anything else is an error.
    """
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{name}={value!r} is not allowed: expected true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is not allowed: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name}={value!r} is not allowed: expected an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name}={value!r} is not allowed: expected a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name}={value!r} is not allowed: expected a string")
    if kind is tuple:
        items = value
        if isinstance(value, str):
            items = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if isinstance(items, (list, tuple)):
            try:
                return tuple(_coerce(name, v, 0) for v in items)
            except ValueError:
                pass
        raise ValueError(f"{name}={value!r} is not allowed: expected a list of integers such as 60,120")
    return value
