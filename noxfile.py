"""The support matrix (``make compat``): the tests that tie tracelet to Lightning, MLflow, W&B and
ClearML, run in a fresh virtual environment per combination, installed from the registry.

- ``floor``: the oldest releases tracelet declares (``pyproject.toml``), MLflow's last 2.x;
- ``latest``: whatever the registry has newest today.

The main suite (``make test``) runs on the versions ``make install`` resolves. What each
session runs: Lightning capture equal to CSVLogger in both namespaces and every patch point
present (``test_lightning*.py``), the MLflow direct path against ``MlflowClient`` and the
schema check (``test_mlflow_sqlite.py``, ``test_mlflow_backend.py``), and one fit read back
from W&B and ClearML in their offline modes (``test_backends.py``).

    nox -s compat                   # every combination
    nox -s "compat(floor)"          # one
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("TORCH_VERSION", "2.13.0")  # the CPU build; unpinned pip takes a CUDA one
COMPAT_TESTS = [
    "tests/test_lightning.py",
    "tests/test_lightning_drift.py",
    "tests/test_mlflow_sqlite.py",
    "tests/test_mlflow_backend.py",
    "tests/test_backends.py",
]
TEST_TOOLS = ["pytest>=8", "pytest-timeout>=2.3"]
MATRIX = {
    "floor": [
        "lightning==2.4.0",
        "pytorch-lightning==2.4.0",
        "mlflow==2.22.5",
        "sqlalchemy<2.1",  # MLflow 2.x imports a pool SQLAlchemy 2.1 removed
        "wandb==0.19.0",
        "clearml==1.16.5",
    ],
    "latest": ["lightning", "pytorch-lightning", "mlflow", "wandb", "clearml"],
}


@nox.session
@nox.parametrize("versions", list(MATRIX), ids=list(MATRIX))
def compat(session: nox.Session, versions: str) -> None:
    session.install(f"torch=={TORCH}")  # first, so that nothing below pulls another build
    session.install(f"torch=={TORCH}", "--upgrade", *MATRIX[versions], *TEST_TOOLS)
    session.install(f"torch=={TORCH}", "-e", ".")  # tracelet's own dependencies; the pins above kept
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *COMPAT_TESTS, *session.posargs)
