"""The benchmarks run at toy sizes on the CPU, so they cannot rot: `python -m nslab bench` (every
section, its JSON and markdown) and the step-overhead script."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def test_nslab_bench_tiny_measures_every_section_and_writes_json_and_markdown(tmp_path):
    from nslab.bench import VARIANTS

    res = subprocess.run([sys.executable, "-m", "nslab", "bench", "--device", "cpu", "--size", "tiny", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    env = result["environment"]
    assert env["device"] == "cpu" and env["date"] and env["threads"] == 1 and "commit" in env
    steps = result["step"]
    assert [r["method"] for r in steps] == list(VARIANTS)  # every registered method has a row
    assert all(r["ms_min"] <= r["ms_per_step"] <= r["ms_max"] and math.isfinite(r["ratio"]) for r in steps)
    assert next(r for r in steps if r["method"] == "none")["ratio"] == 1.0
    estimated = [r for r in steps if r["method"].startswith("spectral") and r["method"] != "spectral_clip"
                 and r["method"] != "spectral_norm_param"]
    assert all(0 <= r["sigma_rel_err"] < 5e-3 for r in estimated if r["method"] != "spectral-1it"), estimated
    assert [(r["power_iters"], r["precision"]) for r in result["hard_regime"]] == \
        [(2, "float32"), (2, "bfloat16"), (3, "float32"), (3, "bfloat16")]
    assert all(r["max"] < (1e-3 if r["precision"] == "float32" else 3e-3) for r in result["hard_regime"])
    assert [(r["model"], r["method"]) for r in result["epoch"]] == [("mlp2x64", m) for m in ("none", "frobenius", "spectral")]
    assert all(r["epoch_s"] > 0 and 0 < r["probe_pct"] for r in result["epoch"])
    assert result["projections"]["grid_12"]["minutes"] is None and "resnet50/spectral" in \
        result["projections"]["grid_12"]["missing"]
    md = (tmp_path / "bench.md").read_text()
    assert md.startswith("# nslab bench: ") and "| goal | measured |" in md and "spectral_topk" in md
    assert "sigma_1 error <= 1e-3, hard regime" in md


def test_nslab_bench_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "b").write_text("mine")
    res = subprocess.run([sys.executable, "-m", "nslab", "bench", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    assert res.returncode == 2 and "is a file" in res.stderr, res.stderr
    assert (tmp_path / "b").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [(["--size", "huge"], "size='huge' is not allowed"),
                                           (["--device", "tpu"], "device='tpu' is not allowed"),
                                           (["--sections", "step,probes"], "are not allowed"),
                                           (["--methods", "spectral,l2"], "methods=['l2'] are not allowed"),
                                           (["--models", "vgg"], "model='vgg' is not allowed")])
def test_nslab_bench_refuses_bad_options_before_measuring(tmp_path, argv, message):
    res = subprocess.run([sys.executable, "-m", "nslab", "bench", "--out", str(tmp_path / "b"), *argv],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "b").exists()


def test_step_overhead_script(tmp_path):
    out = tmp_path / "so.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "step_overhead.py"), "--models", "mlp2x64",
                          "--batch", "4", "--steps", "2", "--rounds", "1", "--warmup", "1", "--min-seconds", "0",
                          "--methods", "none,frobenius,spectral,spectral-seed500", "--json", str(out)],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 0, res.stderr
    assert "ms/step" in res.stdout and "spectral-seed500" in res.stdout
    rows = json.load(open(out))["rows"]
    assert [r["method"] for r in rows] == ["none", "frobenius", "spectral", "spectral-seed500"]
    assert all(math.isfinite(r["ratio"]) and r["ms_per_step"] > 0 for r in rows)
    # Width 64 > the block of 32, so the estimate is not exact by construction.
    assert rows[2]["sigma_rel_err"] < 1e-3
