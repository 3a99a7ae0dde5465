"""tracelet: zero-code experiment tracking for PyTorch and PyTorch Lightning.

    import tracelet
    tracelet.start_logging(exp_name="resnet-lr3", project="cifar", backend=["mlflow"])
    trainer.fit(model, data)     # every self.log(...) lands in every backend
    tracelet.stop_logging()

Importing tracelet is cheap: torch, Lightning and backend SDKs are imported only when needed,
and the API's own modules on first use, so that the writer process (``python -m
tracelet.writer``), which needs none of them, starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracelet.api import get_active_experiment, start_logging, stop_logging
    from tracelet.config import ConfigError
    from tracelet.experiment import Experiment, RunReport

__version__ = "0.1.0"

_HOMES = {
    "ConfigError": "tracelet.config",
    "Experiment": "tracelet.experiment",
    "RunReport": "tracelet.experiment",
    "get_active_experiment": "tracelet.api",
    "start_logging": "tracelet.api",
    "stop_logging": "tracelet.api",
}

__all__ = [
    "ConfigError",
    "Experiment",
    "RunReport",
    "__version__",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tracelet' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return list(__all__)
