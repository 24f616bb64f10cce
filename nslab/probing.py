"""The per-epoch probes of a training session: one ``layers.csv`` row per scaled weight, and the
long spectra tables on the epochs that ask for them. Pure numbers come from nslab.probes,
nslab.conv_spectra and nslab.heavy_tail; this module decides what is measured on which weight.

* Rows describe the weight the model computes with (the effective weight of a parametrization).
* ``power_iter_rel_err``: the method's estimate against the exact sigma_max of what it estimates
  (the matrix, or for an operator-corrected conv its operator norm).
* ``n_above_target``, ``excess``: against a spectral-norm target, on the weight's matrix spectrum
  (NaN for convs whose operator norm is corrected: compare ``op_sigma_max`` with ``target`` there).
* ``op_sigma_max``, ``op_stable_rank``: conv layers as operators at the input size each sees
  (circular padding, Sedghi et al. 2019; 32 Lanczos steps, error ~3e-7 measured), every epoch.
* ``alpha``: the heavy-tail exponent of the matrix spectrum, on spectra epochs only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from .conv_spectra import conv_operator_stats, conv_singular_values
from .heavy_tail import alpha
from .probes import layer_stats, singular_values, target_excess


@dataclass
class Probe:
    """What one probe epoch records: rows for layers.csv, and the long spectra tables where taken."""

    rows: list[dict]
    spectra: pd.DataFrame | None = None
    op_spectra: pd.DataFrame | None = None


def _long(epoch: int, name: str, sv: torch.Tensor) -> pd.DataFrame:
    values = sv.double().cpu().numpy()
    return pd.DataFrame({"epoch": epoch, "layer": name, "index": range(len(values)), "sigma": values})


def _op_stats_from_spectra(svs: dict) -> dict[str, dict]:
    """``conv_operator_stats``'s columns from full operator spectra (descending): exact, one host sync."""
    values = torch.stack([torch.stack([sv[0].double(), (sv.double() ** 2).sum()]) for sv in svs.values()]).cpu()
    return {name: {"op_sigma_max": top, "op_stable_rank": fro2 / top**2 if top > 0 else float("nan")}
            for name, (top, fro2) in zip(svs, values.tolist())}


@torch.no_grad()
def probe_layers(s, epoch: int, with_spectra: bool, with_op_spectra: bool = False) -> Probe:
    """Probe every scaled weight of session ``s`` (nslab.training.Session) at ``epoch``."""
    scaler, cfg = s.scaler, s.config
    estimates = scaler.estimate_sigmas()
    effective = scaler.probe_weights()
    convs = {n: w for n, w in zip(scaler.names, effective) if n in s.geometry and w.dim() == 4}
    op_svs = {n: conv_singular_values(w, **s.geometry[n].kwargs()) for n, w in convs.items()} if with_op_spectra else {}
    # Where the whole operator spectrum is computed anyway, its top value and norm are exact and
    # cost nothing more (Lanczos would cost 1.6x the full spectrum again: ResNet18, CPU).
    ops = _op_stats_from_spectra(op_svs) if op_svs else conv_operator_stats(convs, s.geometry) if convs else {}
    as_operator = scaler.operator_layers
    spectral = scaler.target_norm == "spectral"
    rows, spectra, op_spectra = [], [], []
    for name, raw, w, target, est in zip(scaler.names, scaler.weights, effective, scaler.targets, estimates):
        row, sv = layer_stats(w, cfg.rank_rtol, cfg.rank_method)
        row.update(ops.get(name, {}))
        if name in as_operator:
            exact = row["op_sigma_max"]
        elif w is raw or not math.isfinite(est):
            exact = row["sigma_max"]
        else:  # a parametrization: the estimate is of the raw weight
            exact = float(singular_values(raw.detach(), cfg.rank_method)[0])
        row.update(epoch=epoch, layer=name, target=target,
                   power_iter_rel_err=abs(est - exact) / exact if math.isfinite(est) and exact > 0 else math.nan)
        if spectral and name not in as_operator:
            row.update(target_excess(sv, target))
        if with_spectra:
            row["alpha"] = alpha(sv)
            spectra.append(_long(epoch, name, sv))
        if name in op_svs:
            op_spectra.append(_long(epoch, name, op_svs[name]))
        rows.append(row)
    return Probe(rows, pd.concat(spectra, ignore_index=True) if spectra else None,
                 pd.concat(op_spectra, ignore_index=True) if op_spectra else None)
