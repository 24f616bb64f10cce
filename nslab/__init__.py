"""nslab: weight-norm scaling (Frobenius and spectral) for deep networks, reproducible and fast."""
__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .records import Run, load_run  # noqa: E402
from .scaling import NormScaler  # noqa: E402


def train(config: "RunConfig", log=print) -> "Run":
    """Train one configuration into its run folder (see :func:`nslab.training.train`)."""
    from .training import train as _train

    return _train(config, log)


__all__ = ["RunConfig", "NormScaler", "Run", "load_run", "train", "__version__"]
