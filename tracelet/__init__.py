"""tracelet: zero-code experiment tracking for PyTorch and PyTorch Lightning.

    import tracelet
    tracelet.start_logging(exp_name="resnet-lr3", project="cifar", backend=["mlflow"])
    trainer.fit(model, data)     # every self.log(...) lands in every backend
    tracelet.stop_logging()

Importing tracelet is cheap: torch, Lightning and backend SDKs are imported only when needed.
"""

from __future__ import annotations

from tracelet.api import get_active_experiment, start_logging, stop_logging
from tracelet.config import ConfigError
from tracelet.experiment import Experiment, RunReport

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Experiment",
    "RunReport",
    "__version__",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]
