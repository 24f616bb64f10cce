"""Grid files: a base configuration and the values to vary, expanded into validated RunConfigs.

A grid file is YAML::

    sweep: quick                 # the sweep's name, its folder outputs/<sweep>/ (default: the file's stem)
    description: three methods on a small MLP
    base:                        # a preset and/or RunConfig fields, shared by every run
      preset: quick
      epochs: 3
    vary:                        # every combination of these values (a product, in file order)
      method: [none, frobenius, spectral]
      seed: [1, 2]
    runs:                        # explicit configurations, each on top of base (and crossed with vary)
      - {preset: resnet34-none}
      - {model: mlp, depth: 7, width: 4000}
    slurm:                       # resources per run for --engine slurm (the command line wins)
      partition: gpu
      time: "1-00:00:00"
      cpus_per_run: 8
      extra: {account: myproject}

A run's fields are, later ones winning: its preset (from vary, else its ``runs`` entry,
else base), base's fields, its ``runs`` entry, its varied values. ``out_dir`` is the
sweep's folder and cannot be set here. A run's folder name is ``name`` where given
(a template over the run's fields, e.g. ``"{model}-lr{lr}"``), else
:attr:`RunConfig.run_name` (e.g. ``mlp3x512-spectral-s1``) followed by ``-field=value``
for each other field that differs between the sweep's unnamed runs. Preset names are not used:
they name single runs. Everything is validated before any run starts; errors name the
file, where in it, the field and the value. A file that names no configuration (empty, or
without base, vary and runs) is refused, and so is a key given twice in one mapping.
"""
from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from .config import RunConfig, field_names
from .presets import PRESETS
from .sweep.options import grid_block

TOP_KEYS = ("sweep", "description", "base", "vary", "runs", "slurm")
FIELDS = tuple(f.name for f in fields(RunConfig))
CONFIG_KEYS = ("preset",) + tuple(f for f in FIELDS if f != "out_dir")
# Fields RunConfig.run_name already shows (depth and width for MLPs), and fields that never name a run.
_IN_RUN_NAME = set(field_names("named"))
_NOT_IN_NAME = set(field_names("location"))


class GridError(ValueError):
    """A grid file that cannot be run; the message names the file, the place, the field and the value."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base loader reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key] + 1}): give each key once",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


@dataclass(frozen=True)
class Grid:
    """A grid file expanded: the sweep's name and one validated RunConfig per run (``out_dir`` unset)."""

    path: str
    name: str
    description: str
    configs: tuple[RunConfig, ...]
    slurm: dict = field(default_factory=dict)  # the file's slurm: block, checked (see nslab.sweep.options)

    def varied_fields(self) -> list[str]:
        """Fields whose values differ between runs, in RunConfig order."""
        return [f for f in FIELDS if f not in _NOT_IN_NAME
                and len({repr(getattr(c, f)) for c in self.configs}) > 1]


def load_grid(path: str) -> Grid:
    """Read, expand and validate a grid file; raise :class:`GridError` before anything runs."""
    try:
        with open(path) as f:
            doc = yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as err:
        raise GridError(f"{path}: cannot read the grid file ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML: {err}") from err
    return expand(doc, path)


def expand(doc: Any, path: str = "<grid>") -> Grid:
    """Expand a parsed grid document (see the module docstring) into a :class:`Grid`."""
    def fail(where: str, message: str):
        raise GridError(f"{path}: {where}: {message}")

    if not isinstance(doc, dict):
        fail("top level", f"expected a mapping with keys {list(TOP_KEYS)}, got "
                          + ("an empty file" if doc is None else type(doc).__name__))
    _check_keys(doc, TOP_KEYS, "top level", fail)
    if not any(doc.get(k) for k in ("base", "vary", "runs")):  # else it would run RunConfig's 200-epoch default
        fail("top level", "the grid names no configuration: give base, vary or runs (e.g. base: {preset: quick})")
    try:
        slurm = grid_block(doc.get("slurm"))
    except ValueError as err:
        raise GridError(f"{path}: {err}") from None
    name = doc.get("sweep", os.path.splitext(os.path.basename(path))[0] if path != "<grid>" else "sweep")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name) or name in (".", ".."):
        fail("sweep", f"sweep={name!r} is not allowed: a plain folder name (letters, digits, . _ + -)")
    base = _mapping(doc.get("base", {}), "base", fail)
    vary = _mapping(doc.get("vary", {}), "vary", fail)
    runs = doc.get("runs", [{}])
    if not isinstance(runs, list) or not runs:
        fail("runs", "expected a non-empty list of mappings (each a preset and/or fields)")
    entries = [_mapping(r, f"runs[{i}]", fail) for i, r in enumerate(runs)]
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            fail(f"vary.{key}", f"expected a non-empty list of values, got {values!r}")
        for i, entry in enumerate(entries):
            if key in entry:
                fail(f"runs[{i}].{key}", f"{key} is also in vary: set it in one place")

    # Each value alone first, so an error points at the line that holds it.
    _build(base, {}, {}, f"base", fail)
    for i, entry in enumerate(entries):
        _build(base, entry, {}, f"runs[{i}]", fail)
    for key, values in vary.items():
        for j, value in enumerate(values):
            _build(base, {}, {key: value}, f"vary.{key}[{j}]", fail)

    keys = list(vary)
    configs, where = [], []
    for i, entry in enumerate(entries):
        for combo in itertools.product(*(vary[k] for k in keys)):
            chosen = dict(zip(keys, combo))
            label = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
            at = (f"runs[{i}]" if len(entries) > 1 else "run") + (f" ({label})" if label else "")
            configs.append(_build(base, entry, chosen, at, fail))
            where.append(at)
    return Grid(path, name, str(doc.get("description", "")), tuple(_name_runs(configs, where, fail)), slurm)


def _check_keys(mapping: dict, allowed: tuple, where: str, fail) -> None:
    for key in mapping:
        if key not in allowed:
            if key == "out_dir":
                fail(f"{where}.out_dir", "out_dir is the sweep's folder: choose it with --out, not in the grid")
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(where, f"unknown key {key!r}{hint}: allowed are {list(allowed)}")


def _mapping(value: Any, where: str, fail) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(where, f"expected a mapping of field: value, got {value!r}")
    _check_keys(value, CONFIG_KEYS, where, fail)
    return value


def _build(base: dict, entry: dict, varied: dict, where: str, fail) -> RunConfig:
    preset = varied.get("preset", entry.get("preset", base.get("preset")))
    if preset is not None and preset not in PRESETS:
        fail(where, f"preset={preset!r} is not allowed: choose one of {sorted(PRESETS)}")
    values = {k: v for k, v in PRESETS.get(preset, {}).items() if k != "name"}
    for layer in (base, entry, varied):
        values.update({k: v for k, v in layer.items() if k != "preset"})
    try:
        return RunConfig.from_dict(values)
    except ValueError as err:
        fail(where, str(err))


def _name_runs(configs: list[RunConfig], where: list[str], fail) -> list[RunConfig]:
    unnamed = [c for c in configs if not c.name]
    differing = [f for f in FIELDS if f not in _IN_RUN_NAME | _NOT_IN_NAME
                 and len({repr(getattr(c, f)) for c in unnamed}) > 1]
    named, seen = [], {}
    for config, at in zip(configs, where):
        if config.name:
            try:
                run = config.name.format(**config.to_dict())
            except (KeyError, IndexError, ValueError) as err:
                fail(at, f"name={config.name!r} is not a usable template ({type(err).__name__}: {err}); "
                         f"use fields in braces, e.g. '{{model}}-{{method}}-s{{seed}}'")
        else:
            run = config.replace(name="").run_name
            run += "".join(f"-{f}={_label(getattr(config, f))}" for f in differing)
        run = re.sub(r"[^A-Za-z0-9._,=+-]", "_", run)
        if run in seen:
            fail(at, f"run name {run!r} is also the name of {seen[run]}: run names must be unique; "
                     f"vary a field that names runs or set name to a template such as '{{model}}-{{method}}-lr{{lr}}'")
        seen[run] = at
        named.append(config.replace(name=run))
    return named


def _label(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
