"""The README's first commands, run as a newcomer runs them: in a fresh shell with no virtual
environment activated, exactly as printed — ``make demo``, then the command the demo prints to
view its run, serving it at the address the demo names; the README's view command is that one.
``make demo`` runs examples/quickstart.py: this is that example's test."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import mlflow_run, mlflow_series

ROOT = Path(__file__).resolve().parent.parent
UI_PORT = 5000  # the port `mlflow ui` serves on unless told otherwise: the printed commands rely on it


def _readme_command(starts_with: str) -> str:
    """The line of a bash block of the README that starts with ``starts_with``, comment removed."""
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.splitlines():
            if line.startswith(starts_with):
                return line.split("  #")[0].strip()
    raise AssertionError(f"the README has no command starting with {starts_with!r}")


def _fresh_shell(command: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """``bash -c command`` with what a new terminal has: no venv on PATH, no tracelet settings."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(cwd)),
        "LANG": "C.UTF-8",
        "QUICKSTART_EPOCHS": "1",
    }
    return subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True, **kwargs)


def _checkout(directory: Path) -> Path:
    """What `make demo` needs of a checkout, beside this one's installed .venv."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, directory / name)  # copy2: the install stamp stays newer
    shutil.copytree(ROOT / "examples", directory / "examples")
    (directory / ".venv").symlink_to(ROOT / ".venv")
    return directory


def _serves_run(command: str, cwd: Path, url: str, run_id: str) -> None:
    """Start ``command`` in a fresh shell; the run must be readable at ``url``'s server."""
    server = _fresh_shell(
        command, cwd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = re.match(r"https?://[^/]+", url).group(0)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api = f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}"
                with urllib.request.urlopen(api, timeout=5) as response:
                    assert json.load(response)["run"]["info"]["run_id"] == run_id
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200 and b"<html" in response.read().lower()
                return
            except OSError:
                assert server.poll() is None, f"{command!r} exited: {server.stdout.read()[-2000:]}"
                assert time.monotonic() < deadline, f"{command!r} did not serve {base} within 120 s"
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.fresh_store  # the demo makes its own store, as in a fresh checkout
def test_the_readme_commands_work_as_printed_in_a_fresh_shell(tmp_path):
    checkout = _checkout(tmp_path)
    demo = _fresh_shell(
        _readme_command("make demo"), checkout, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = demo.communicate(timeout=600)
    assert demo.returncode == 0, stderr[-3000:]

    # the demo is examples/quickstart.py (one epoch here): its run, as the example describes it
    store = f"sqlite:///{checkout / 'mlflow.db'}"
    run_id = stdout.split("is in MLflow as run ")[1].split()[0]
    run = mlflow_run(run_id, store)
    assert run.info.status == "FINISHED" and run.info.run_name == "quickstart"
    tracelets = ("trainer/", "model/", "optimizer/")  # tracelet's own, beside the module's hyperparameters
    hparams = {k: v for k, v in run.data.params.items() if not k.startswith(tracelets)}
    assert hparams == {"lr": "0.05", "hidden": "16"}
    series = mlflow_series(run_id, store)
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "epoch"} <= set(series)
    assert [step for step, _ in series["train/loss_step"]] == [4, 9, 14, 19, 24]

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", UI_PORT)) == 0:
            pytest.skip(f"port {UI_PORT} is taken here; the printed commands need it")

    # the demo's last lines: the command that shows the run, then the page to open
    lines = stdout.rstrip().splitlines()
    assert lines[-4:-3] == ["view it: run"] and lines[-2:-1] == ["then open"], stdout[-1000:]
    view, url = lines[-3].strip(), lines[-1].strip()
    run_id = url.rsplit("/", 1)[-1]
    assert view.startswith(".venv/bin/mlflow ui --backend-store-uri sqlite:///")
    assert url.startswith(f"http://127.0.0.1:{UI_PORT}/#/experiments/") and f"run {run_id}" in stdout
    assert f"{view}, then open {url}" in stderr  # the stop summary names the same
    _serves_run(view, checkout, url, run_id)
    # the README's view command is the same program on the same store, named from the checkout
    # (starting `mlflow ui` takes ~30 s of CPU here: once is enough)
    program, _ui, _flag, store, *options = _readme_command(".venv/bin/mlflow ui").split()
    assert view.split()[:3] == [program, _ui, _flag] and view.split()[4:] == options
    assert Path(checkout / store.removeprefix("sqlite:///")).samefile(
        view.split()[3].removeprefix("sqlite:///")
    )
