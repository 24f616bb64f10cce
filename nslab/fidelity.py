"""The blog's numbers beside a study, and an honest account of where each run's recipe differs.

A row is labelled *comparable* only when its runs trained what the blog's authors trained:
the same epochs, schedule, data, test set and estimator (:func:`recipe_differences` lists every
field that differs, e.g. ``"24 epochs vs 200; milestones 8,16 vs 60,120; fast estimator"``).
The reference recipe is the seed code's, as the ``paper`` presets encode it (``presets.PAPER``;
NOTES.md lists where the code departs from the blog's text). Accuracies are in percent.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .analysis import Study, layer_spread, summary_table, target_norm
from .config import BLOG_METHODS, arch_name
from .presets import ARCHITECTURES, PAPER

BLOG_SOURCE = ("P. Hess and A. Hutchison, \"Exploring Frobenius and Spectral Normalization in MLPs and "
               "Residual Networks\", MIT deep learning blog, December 2023: final results at epoch 200 on the "
               "CIFAR-100 test set, and the spectral-norm statistics quoted for the 5x2000 MLP "
               "(as transcribed in shared/seed/NOTES.md).")
BLOG_FINAL = pd.DataFrame(
    [("mlp5x2000", "none", 25.12, 10.86), ("mlp5x2000", "frobenius", 28.23, 4.47), ("mlp5x2000", "spectral", 23.21, 3.53),
     ("mlp7x4000", "none", 23.95, 11.00), ("mlp7x4000", "frobenius", 26.62, 6.10), ("mlp7x4000", "spectral", 36.25, 2.63),
     ("resnet34", "none", 70.10, 2.03), ("resnet34", "frobenius", 75.24, 1.46), ("resnet34", "spectral", 71.79, 1.78),
     ("resnet50", "none", 73.45, 1.72), ("resnet50", "frobenius", 75.72, 1.40), ("resnet50", "spectral", 73.29, 1.63)],
    columns=["arch", "method", "test_acc", "test_loss"])  # test_acc in percent
# Mean sigma_max across layers at the last epoch; std of sigma_max across layers over the last 100 epochs.
BLOG_SPECTRAL = pd.DataFrame(
    [("mlp5x2000", "none", 35.4, 18.4), ("mlp5x2000", "frobenius", 7.8, 3.7), ("mlp5x2000", "spectral", 0.8, 0.02)],
    columns=["arch", "method", "mean_sigma_max_last", "std_sigma_max_last_half"])
# The seed code gave every layer the first layer's target sqrt(d_1/d_0); for the 5x2000 MLP 2000/3072.
BLOG_FIRST_LAYER_TARGET = math.sqrt(2000 / 3072)


# --- Where a run's recipe differs from the blog's ----------------------------------------------
def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def _seq(v) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def recipe_differences(config: dict, epochs_done: int | None = None) -> list[str]:
    """Every way ``config`` (a run's config.json) trains something other than the blog's runs, in words.

    ``epochs_done``: the epochs the run has finished (a run stopped or still running is shorter
    than its config says); by default the config's ``epochs``.

    Compared with the seed code's recipe (``presets.PAPER``) and the blog's architectures and methods.
    Estimator and target fields count only where the run's targets are spectral norms
    (config.json's ``target_norm``); the seed's scale rule only where it differs from ``all`` in
    effect (models with BatchNorm or downsample layers, i.e. not the MLP). Settings that do not
    change what is trained (seed, device, compile, record keeping) are not listed.
    """
    c, ref, out = config, PAPER, []
    arch = arch_name(c)
    if arch not in ARCHITECTURES:
        out.append(f"architecture {arch} (the blog ran {', '.join(ARCHITECTURES)})")
    if c.get("method") not in BLOG_METHODS:
        out.append(f"method {c.get('method')} (not in the blog)")
    epochs = c.get("epochs") if epochs_done is None else epochs_done
    if epochs != ref["epochs"]:
        out.append(f"{_num(epochs)} epochs vs {ref['epochs']}")
    if list(c.get("milestones") or []) != list(ref["milestones"]):
        out.append(f"milestones {_seq(c.get('milestones'))} vs {_seq(ref['milestones'])}")
    for key, words in (("batch_size", "batch"), ("lr", "lr"), ("gamma", "gamma")):
        if c.get(key) != ref[key]:
            out.append(f"{words} {_num(c.get(key))} vs {_num(ref[key])}")
    for key, words in (("train_subset", "train subset"), ("test_subset", "test subset")):
        if c.get(key):
            out.append(f"{words} {_num(c.get(key))}")
    if bool(c.get("augment_test")) != ref["augment_test"]:
        out.append("clean test set (the seed code augmented it)" if ref["augment_test"] else "augmented test set")
    if c.get("matmul_precision") != ref["matmul_precision"]:
        out.append(f"matmul precision {c.get('matmul_precision')} vs {ref['matmul_precision']}")
    if c.get("bf16"):
        out.append("bf16 autocast")
    if c.get("model", "mlp") != "mlp" and c.get("scale_rule") != ref["scale_rule"]:
        out.append(f"scale rule {c.get('scale_rule')} vs {ref['scale_rule']}")
    if target_norm(c) == "spectral":
        if c.get("targets") != ref["targets"]:
            out.append(f"{c.get('targets')} targets vs {ref['targets']}".replace("_", "-"))
        if c.get("warm_start"):
            out.append("fast estimator")
        elif c.get("power_iters") != ref["power_iters"]:
            out.append(f"{_num(c.get('power_iters'))} power iterations vs {ref['power_iters']}")
        if c.get("power_tol"):
            out.append(f"power tolerance {_num(c.get('power_tol'))}")
    return out


def comparability(runs: list[tuple[dict, int]]) -> str:
    """``"comparable"``, or ``"differs: ..."`` with the union of the recipe differences of ``runs``,
    (config, epochs done) pairs, in order."""
    seen = list(dict.fromkeys(d for c, done in runs for d in recipe_differences(c, done)))
    return "comparable" if not seen else "differs: " + "; ".join(seen)


def first_layer_target_warnings(study: Study) -> list[str]:
    """Warnings for runs with first-layer spectral targets on an architecture the blog did not run.

    There every layer's target is the first layer's sqrt(d_out/d_in), e.g. sqrt(512/3072) = 0.408 at
    width 512 against the blog's 0.807; a product of such layers shrinks the logits and can hold the
    loss near chance. The target is read from the run's layers.csv, not recomputed.
    """
    out = []
    for name, run in study.runs.items():
        cfg = run.config
        if target_norm(cfg) != "spectral" or cfg.get("targets") != "first_layer" or arch_name(cfg) in ARCHITECTURES:
            continue
        first = study.layers[(study.layers.run == name) & (study.layers.epoch == 0)]
        if not len(first) or not np.isfinite(first.target.iloc[0]):
            continue
        t, n = float(first.target.iloc[0]), len(first)
        out.append(f"{name}: first-layer targets at {arch_name(cfg)}, an architecture the blog did not run: every "
                   f"layer's spectral target is {t:.3f} (the first layer's sqrt(d_out/d_in)), against the blog's "
                   f"{BLOG_FIRST_LAYER_TARGET:.3f} at 5x2000. Through {n} layers that scales the logits by up to "
                   f"{t ** n:.3g}, which can hold the loss near chance (ln 100 = 4.61).")
    return out


# --- The blog's tables beside the study ------------------------------------------------------
def _groups_of(study: Study) -> dict[str, list[tuple[dict, int]]]:
    """Configuration group -> its runs as (config, epochs done)."""
    out: dict[str, list[tuple[dict, int]]] = {}
    for name, run in study.runs.items():
        rows = study.epoch_rows(name)
        out.setdefault(study.groups[name], []).append((run.config, int(rows.epoch.max()) if len(rows) else 0))
    return out


def compare_with_blog(study: Study) -> pd.DataFrame:
    """The blog's 12 final numbers beside the study's, per configuration (mean over seeds), with differences.

    Every blog row appears (``n_runs`` 0 where the study has no such run); configurations of the
    study that the blog did not run appear with empty blog columns. ``test_acc_std`` is the std over
    seeds (empty for a single seed); ``clean_test_acc`` where runs recorded the un-augmented test set;
    ``recipe`` says "comparable" or lists how the runs differ from the blog's recipe.
    Accuracies in percent; ``d_`` columns are study minus blog.
    """
    s = summary_table(study)
    s = s[s.epochs_done > 0]
    if "clean_test_acc" not in s:
        s = s.assign(clean_test_acc=np.nan)
    g = s.groupby(["arch", "method", "group"], sort=False).agg(
        n_runs=("run", "size"), epochs=("epochs_done", "min"), test_acc=("test_acc", "mean"),
        test_acc_std=("test_acc", lambda x: float(np.std(x)) if len(x) > 1 else np.nan),
        clean_test_acc=("clean_test_acc", "mean"), test_loss=("test_loss", "mean")).reset_index()
    blog = BLOG_FINAL.rename(columns={"test_acc": "blog_test_acc", "test_loss": "blog_test_loss"})
    # The blog's rows in the blog's order, then the study's configurations the blog did not run.
    extra = g.merge(blog[["arch", "method"]], on=["arch", "method"], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
    out = pd.concat([blog.merge(g, on=["arch", "method"], how="left"), extra], ignore_index=True)
    out["n_runs"] = out.n_runs.fillna(0).astype(int)
    out["epochs"] = out.epochs.astype("Int64")
    out["d_test_acc"] = out.test_acc - out.blog_test_acc
    out["d_test_loss"] = out.test_loss - out.blog_test_loss
    configs = _groups_of(study)
    out["recipe"] = [comparability(configs[g]) if n else "not run" for g, n in zip(out.group, out.n_runs)]
    cols = ["arch", "method", "group", "n_runs", "epochs", "test_acc", "test_acc_std", "clean_test_acc", "blog_test_acc",
            "d_test_acc", "test_loss", "blog_test_loss", "d_test_loss", "recipe"]
    return out[[c for c in cols if c != "clean_test_acc" or out.clean_test_acc.notna().any()]]


def spectral_claims(study: Study, arch: str | None = None) -> pd.DataFrame:
    """The blog's spectral statistics computed on the study, per configuration, beside the blog's.

    * ``mean_sigma_max_last``: mean over layers of sigma_max at the run's last epoch;
    * ``std_sigma_max_last_half``: std (ddof=0) of sigma_max across layers at each epoch, averaged
      over the epochs of the second half of training (epochs > last/2; the blog's "last 100 epochs").
    Both are averaged over seeds. Blog columns are filled for the configurations the blog reports
    (the 5x2000 MLP). ``arch`` keeps only that architecture.
    """
    rows = []
    for name, run in study.runs.items():
        if arch and arch_name(run.config) != arch:
            continue
        layers = study.layers[(study.layers.run == name) & (study.layers.epoch > 0)]
        if not len(layers):
            continue
        spread = layer_spread(layers)
        last = int(spread.epoch.max())
        rows.append({"arch": arch_name(run.config), "method": run.config.get("method"), "group": study.groups[name],
                     "epochs": last, "mean_sigma_max_last": float(spread["mean"].iloc[-1]),
                     "std_sigma_max_last_half": float(spread.loc[spread.epoch > last / 2, "std"].mean())})
    cols = ["arch", "method", "group", "n_runs", "epochs", "mean_sigma_max_last", "blog_mean_sigma_max_last",
            "d_mean_sigma_max_last", "std_sigma_max_last_half", "blog_std_sigma_max_last_half",
            "d_std_sigma_max_last_half", "recipe"]
    if not rows:
        return pd.DataFrame(columns=cols)
    per_run = pd.DataFrame(rows)
    g = per_run.groupby(["arch", "method", "group"], sort=False).agg(
        n_runs=("group", "size"), epochs=("epochs", "min"), mean_sigma_max_last=("mean_sigma_max_last", "mean"),
        std_sigma_max_last_half=("std_sigma_max_last_half", "mean")).reset_index()
    blog = BLOG_SPECTRAL.rename(columns={c: f"blog_{c}" for c in ("mean_sigma_max_last", "std_sigma_max_last_half")})
    out = g.merge(blog, on=["arch", "method"], how="left")
    for c in ("mean_sigma_max_last", "std_sigma_max_last_half"):
        out[f"d_{c}"] = out[c] - out[f"blog_{c}"]
    configs = _groups_of(study)
    out["recipe"] = [comparability(configs[g]) for g in out.group]
    return out[cols]


def recipes(study: Study) -> dict[str, str]:
    """Configuration group -> ``"comparable"`` or ``"differs: ..."`` (:func:`comparability`)."""
    return {g: comparability(runs) for g, runs in _groups_of(study).items()}


def recipe_warning(study: Study) -> str:
    """One paragraph (markdown): how many runs are comparable to the blog, and how the others differ."""
    groups = _groups_of(study)
    off = {g: n for g, n in recipes(study).items() if n != "comparable"}
    n_runs = sum(len(groups[g]) for g in off)
    if not off:
        return f"All {len(study.names)} runs follow the blog's recipe: their numbers are comparable."
    lines = "\n".join(f"- `{g}`: {n[len('differs: '):]}" for g, n in off.items())
    return (f"**{n_runs} of {len(study.names)} runs differ from the blog's recipe** (the seed code's, "
            f"`presets.PAPER`): their numbers are not a reproduction of the blog's.\n{lines}")
