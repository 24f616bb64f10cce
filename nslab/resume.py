"""What a run folder must hold before a run resumes from it, or extends it.

Every check here runs while the folder's lock is held (nslab.training.train), so the decision "same
settings, same data, tables complete up to the checkpoint" cannot be overtaken by another process.
Each refusal is a ``ValueError`` that names the folder and what is wrong.
"""
from __future__ import annotations

import glob
import os

from .config import RunConfig, settings_differences
from .records import Run


def check_settings(run_dir: str, old: dict, config: RunConfig, device_type: str) -> None:
    """Refuse another configuration, or a device type whose generator states the checkpoints do not hold."""
    diff = settings_differences(old, config)
    if diff:
        raise ValueError(f"run folder {run_dir!r} holds a run with other settings ({', '.join(diff)}): "
                         f"start a new run with name='...' (or another out_dir), or delete that folder; "
                         f"only epochs may be raised, to extend the run")
    trained_on = str(old.get("device_resolved", device_type)).split(":")[0]
    if trained_on != device_type:
        raise ValueError(f"run folder {run_dir!r} was trained on {trained_on!r} and cannot resume on {device_type!r}: "
                         f"its checkpoints hold {trained_on} generator states; resume it on a {trained_on} device")


def check_data(run_dir: str, old: dict, fingerprint: dict) -> None:
    """Refuse to resume on data other than the data the run started with (another data_dir, file or subset)."""
    recorded = old.get("data_fingerprint")
    if not recorded:  # a folder written before fingerprints were recorded: nothing to compare
        return
    for split in ("train", "test"):
        if recorded.get(split) != fingerprint.get(split):
            raise ValueError(
                f"run folder {run_dir!r} was trained on other data: its {split} split was "
                f"{recorded.get(split)} (from {recorded.get('source')!r}), this data_dir gives {fingerprint.get(split)} "
                f"(from {fingerprint.get('source')!r}); resume with the original data_dir, or start a new run")


def missing_rows(run: Run, epoch: int, spectra_every: int, final_epochs: set[int],
                 op_spectra_every: int = 0) -> list[str]:
    """What the tables lack for a resume from the checkpoint of ``epoch`` (empty: complete).

    epochs.csv needs rows 1..epoch; layers.csv every layer at 0..epoch; spectra.parquet epoch 0, every
    ``spectra_every``-th epoch and any earlier final epoch (``final_epochs``: runs that were extended);
    op_spectra.parquet the same for ``op_spectra_every`` where it is on and the run has conv layers.
    """
    problems = []
    have = set(run.epochs.epoch.astype(int)) if len(run.epochs) else set()
    lost = sorted(set(range(1, epoch + 1)) - have)
    if lost:
        problems.append(f"epochs.csv lacks epoch(s) {_span(lost)}")
    layers = run.layers
    names = set(layers.layer) if len(layers) else set()
    if not names:
        problems.append("layers.csv has no rows")
    else:
        per_epoch = layers.groupby("epoch").layer.nunique()
        lost = sorted(e for e in range(0, epoch + 1) if per_epoch.get(e, 0) < len(names))
        if lost:
            problems.append(f"layers.csv lacks rows at epoch(s) {_span(lost)}")
    has_convs = len(layers) and layers.op_sigma_max.notna().any()
    for table, every, name in ((run.spectra, spectra_every, "spectra.parquet"),
                               (run.op_spectra, op_spectra_every if has_convs else 0, "op_spectra.parquet")):
        if every <= 0:
            continue
        wanted = {0} | set(range(every, epoch + 1, every)) | {e for e in final_epochs if e <= epoch}
        have = set(table.epoch.astype(int)) if len(table) else set()
        lost = sorted(wanted - have)
        if lost:
            problems.append(f"{name} lacks epoch(s) {_span(lost)}")
    return problems


def _span(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 6 else f"{values[0]}..{values[-1]} ({len(values)} epochs)"


def remove_orphans(run_dir: str) -> list[str]:
    """Delete temporary files a crash left behind (``.*.tmp`` in the folder and its checkpoints/).

    Only ever called under the folder's lock: a live writer's temporary file is never touched.
    """
    removed = []
    for pattern in (".*.tmp", os.path.join("checkpoints", ".*.tmp")):
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(path)
    return removed
