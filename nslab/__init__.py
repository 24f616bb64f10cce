"""nslab: weight-norm scaling (Frobenius, spectral and the spectral-control family) for deep networks,
reproducible and fast."""
from ._version import __version__
from .config import RunConfig
from .records import Run, load_run
from .scaling import NormScaler
from .training import train

__all__ = ["RunConfig", "NormScaler", "Run", "load_run", "train", "__version__"]
