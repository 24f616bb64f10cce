"""nslab: weight-norm scaling (Frobenius, spectral and the spectral-control family) for deep networks,
reproducible and fast.

The names below are imported on first use, so that ``import nslab.sweep`` (what a SLURM job or a Ray
worker runs before it starts papermill) does not pay for importing torch.
"""
from ._version import __version__

_LAZY = {"RunConfig": "config", "NormScaler": "scaling", "Run": "records", "load_run": "records",
         "train": "training"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nslab' has no attribute {name!r}")


__all__ = ["RunConfig", "NormScaler", "Run", "load_run", "train", "__version__"]
