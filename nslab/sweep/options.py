"""Engine options: which engine runs the sweep and the resources each run asks of a cluster.

Validated here, before anything is submitted, whether they come from the command line or from a
grid file's ``slurm:`` block (the command line wins). Errors name the option, the value and what
is allowed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

ENGINES = ("local", "slurm", "ray")
# sbatch options nslab (or submitit) sets itself: --slurm-extra may not override them.
MANAGED_SBATCH = ("partition", "time", "mem", "cpus-per-task", "gpus-per-node", "gres", "job-name", "output",
                  "error", "array", "signal", "open-mode", "wrap")
_TIME = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})")
_MEM = re.compile(r"[1-9]\d*[KMGT]?")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEY = re.compile(r"[a-z][a-z0-9-]*")
MAX_PER_RUN = 1024


class SweepError(ValueError):
    """Options or a sweep folder that cannot be used; the message names what and why."""


@dataclass(frozen=True)
class ClusterOptions:
    """Per-run resources on a cluster, and where the cluster is.

    gpus_per_run: None = 1 where the partition (SLURM) or cluster (Ray) has GPUs and the run may use
    one (device != 'cpu'), else 0. cpus_per_run: also the run's thread count (OMP_NUM_THREADS).
    mem, time: SLURM's own formats (``16G``; ``1-00:00:00``, ``90``); time "" = the partition's limit.
    extra: further ``#SBATCH --key=value`` lines. address (Ray): "" starts a local Ray instance,
    ``auto`` joins the one ``ray start`` started on this machine, else ``host:port``.
    """

    partition: str = ""
    gpus_per_run: int | None = None
    cpus_per_run: int = 1
    mem: str = ""
    time: str = ""
    extra: tuple = ()
    address: str = ""

    def updated(self, values: dict, label=None) -> "ClusterOptions":
        """These options with ``values`` (keys: field names; None = keep) validated on top.

        label: how an error names an option (the command line's ``--cpus-per-run``, a grid's ``slurm.time``).
        """
        label = label or flag
        given = {k: v for k, v in values.items() if v is not None}
        checked = {k: _CHECKS[k](v, label(k)) for k, v in given.items()}
        if "extra" in checked:  # several sources add up; a key given twice takes the later value
            checked["extra"] = tuple({**dict(self.extra), **dict(checked["extra"])}.items())
        return replace(self, **checked)


def flag(key: str) -> str:
    """The command-line option of a ClusterOptions field: ``cpus_per_run`` -> ``--cpus-per-run``."""
    return "--slurm-extra" if key == "extra" else "--" + key.replace("_", "-")


def _count(least: int):
    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise SweepError(f"{name}={value!r} is not allowed: expected a whole number >= {least}")
        number = int(value)
        if not least <= number <= MAX_PER_RUN:
            raise SweepError(f"{name}={value!r} is not allowed: must be between {least} and {MAX_PER_RUN}")
        return number
    return check


def _pattern(regex: re.Pattern, allowed: str, words: tuple = ()):
    def check(value: Any, name: str) -> str:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or not (regex.fullmatch(text) or text.upper() in words):
            raise SweepError(f"{name}={value!r} is not allowed: {allowed}")
        return text
    return check


def _extra(value: Any, name: str) -> tuple:
    """KEY=VALUE strings (command line) or a mapping (grid file) of further sbatch options."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if isinstance(item, tuple) and len(item) == 2:
                items.append(item)
            elif isinstance(item, str) and "=" in item:
                items.append(tuple(item.split("=", 1)))
            else:
                raise SweepError(f"{name}={item!r} is not allowed: expected KEY=VALUE, e.g. account=myproject")
    else:
        raise SweepError(f"{name}={value!r} is not allowed: expected KEY=VALUE pairs or a mapping")
    checked = []
    for key, val in items:
        key = str(key).strip().lstrip("-").replace("_", "-")
        if not _KEY.fullmatch(key):
            raise SweepError(f"{name}: key {key!r} is not allowed: an sbatch option name such as account or qos")
        if key in MANAGED_SBATCH:
            raise SweepError(f"{name}: {key} is not allowed here: nslab sets --{key} itself "
                             f"(use --partition, --time, --mem, --cpus-per-run or --gpus-per-run)")
        text = "" if val is True else str(val)
        if val is None or isinstance(val, (dict, list)) or any(ord(c) < 32 for c in text):
            raise SweepError(f"{name}: {key}={val!r} is not allowed: one line of text")
        checked.append((key, text))
    return tuple(checked)


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 32 for c in value):
        raise SweepError(f"{name}={value!r} is not allowed: auto, host:port or ray://host:port")
    return value


_CHECKS = {
    "partition": _pattern(_NAME, "a partition name (letters, digits, _ . -)"),
    "gpus_per_run": _count(0),
    "cpus_per_run": _count(1),
    "mem": _pattern(_MEM, "memory per run in SLURM's format, e.g. 16G or 4000M"),
    "time": _pattern(_TIME, "a SLURM time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, "
                            "or UNLIMITED", ("UNLIMITED", "INFINITE")),
    "extra": _extra,
    "address": _address,
}


GRID_KEYS = ("partition", "gpus_per_run", "cpus_per_run", "mem", "time", "extra")


NO_LIMIT_MIN = 365 * 24 * 60  # what "UNLIMITED" becomes: submitit counts a job's time in whole minutes


def minutes(limit: str) -> int:
    """A SLURM time limit in whole minutes (rounded up), e.g. ``1-02:30:00`` -> 1590; UNLIMITED -> a year.

    Formats (sbatch --time): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
    """
    text = limit.strip().upper()
    if text in ("UNLIMITED", "INFINITE"):
        return NO_LIMIT_MIN
    if not _TIME.fullmatch(text):
        raise SweepError(f"time={limit!r} is not allowed: a SLURM time limit such as 90 or 1-00:00:00")
    days, _, clock = text.rpartition("-") if "-" in text else ("", "", text)
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-H, D-H:M, D-H:M:S
        parts += [0] * (3 - len(parts))
        hours, mins, secs = parts
        total = int(days) * 1440 + hours * 60 + mins
    elif len(parts) == 3:  # H:M:S
        hours, mins, secs = parts
        total = hours * 60 + mins
    else:  # M or M:S
        mins, secs = (parts + [0])[:2]
        total = mins
    return max(1, total + (secs > 0))


def grid_block(value: Any) -> dict:
    """A grid file's ``slurm:`` block, checked: a mapping with keys :data:`GRID_KEYS`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"slurm: expected a mapping such as {{partition: gpu, time: '1-00:00:00'}}, got {value!r}")
    unknown = [k for k in value if k not in GRID_KEYS]
    if unknown:
        raise SweepError(f"slurm: unknown key {unknown[0]!r}: allowed are {list(GRID_KEYS)}")
    ClusterOptions().updated(value, lambda key: f"slurm.{key}")
    return dict(value)
