"""Shared fixtures: a tiny synthetic data set in the array-file format, and a tiny run config."""
from __future__ import annotations

import os

import pytest
import torch

from nslab.config import RunConfig
from nslab.data import write_synthetic

torch.set_num_threads(1)  # small tensors: threads only add noise and overhead


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch, tmp_path_factory):
    """Tests never read the developer's NSLAB_DATA_DIR (or ../shared), nor write to their array cache;
    progress bars stay off (pytest captures stderr)."""
    monkeypatch.delenv("NSLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("NSLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "array-cache"))
    monkeypatch.setenv("NSLAB_PROGRESS", "lines")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("data")
    write_synthetic(os.path.join(folder, "cifar100_uint8.npz"), n_train=256, n_test=128)
    return str(folder)


@pytest.fixture
def tiny(data_dir, tmp_path):
    """A RunConfig factory: a 2-layer MLP of width 16 on the synthetic data, CPU, 3 epochs."""

    def make(**overrides) -> RunConfig:
        base = dict(model="mlp", depth=2, width=16, epochs=3, batch_size=64, data_dir=data_dir,
                    out_dir=str(tmp_path / "runs"), device="cpu", spectra_every=1, checkpoint_every=1)
        return RunConfig(**{**base, **overrides})

    return make


def pytest_collection_modifyitems(config, items):
    """Browser tests last: playwright's sync API leaves its asyncio loop set as this thread's running
    loop while its session-scoped browser is open, and the dashboard's debounced redraws in the tests
    after it would be scheduled on that loop (never run) instead of running at once."""
    items.sort(key=lambda item: "browser" in item.nodeid.split("/")[1:2])
