"""A team's MLflow server, as teams run it: ``mlflow server`` on 127.0.0.1 with a PostgreSQL
backend store and proxied artifacts (``--serve-artifacts``, destination on local disk).

PostgreSQL comes from the ``pgserver`` wheel (its own binaries, a private data directory, a
unix socket: nothing listens on the network but MLflow on loopback). Used by the session
fixture ``team_server`` (conftest.py) and by ``benchmarks/bench_server.py``::

    with TeamServer(tmp_dir) as server:
        client = MlflowClient(server.url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 90.0  # mlflow server answers /health after ~13 s on an idle 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TeamServer:
    """PostgreSQL + ``mlflow server``; ``url`` is the tracking URI clients use."""

    def __init__(self, directory: Path, workers: int = 2) -> None:
        self.directory = Path(directory)
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = self.directory / "artifacts"
        self.database_uri = ""
        self._postgres = None
        self._process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> TeamServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import pgserver

        self.directory.mkdir(parents=True, exist_ok=True)
        self._postgres = pgserver.get_server(self.directory / "postgres", cleanup_mode="stop")
        self._postgres.psql("CREATE DATABASE mlflow;")
        # the driver named: SQLAlchemy 2.1 takes a plain postgresql:// for psycopg 3, not installed here
        self.database_uri = self._postgres.get_uri("mlflow").replace(
            "postgresql://", "postgresql+psycopg2://", 1
        )
        self._log = open(self.directory / "mlflow-server.log", "wb")  # noqa: SIM115 (closed by stop)
        command = [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)),
            *("--backend-store-uri", self.database_uri),
            *("--serve-artifacts", "--artifacts-destination", str(self.artifacts)),
        ]
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRACELET_"))}
        # a tracking server: MLflow's job runner (GenAI jobs, eight Huey consumer processes of
        # ~6 s of CPU each at start) serves nothing tracelet sends
        environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env=environment,
            start_new_session=True,  # the server's workers share its process group: stopped together
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self._process.returncode}):\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(
            f"mlflow server did not answer /health in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, characters: int = 4000) -> str:
        path = self.directory / "mlflow-server.log"
        return path.read_text(errors="replace")[-characters:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(15)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.cleanup()
            self._postgres = None
