"""Console capture: the terminal sees the same bytes; the run keeps a collapsed console.log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

import tracelet
from tracelet.collectors.console import ConsoleCapture, LineCollapser

JOB = textwrap.dedent("""
    import sys, tracelet
    tracelet.start_logging(project="console")
    print("hello stdout")
    print("warning on stderr", file=sys.stderr)
    for i in range(10_000):
        sys.stderr.write(f"\\rtraining {i + 1}/10000 |{'#' * ((i + 1) * 20 // 10_000):<20}|")
        sys.stderr.flush()
    sys.stderr.write("\\n")
    print("unicode: ünïcødé ✓")
    if len(sys.argv) > 1:
        raise RuntimeError("crash after printing")
    tracelet.stop_logging()
""")


def _run(tmp_path: Path, console: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "job.py").write_text(JOB)
    env = {**os.environ, "TRACELET_TRACK_CONSOLE": console}
    return subprocess.run(
        [sys.executable, "job.py", *args], cwd=tmp_path, env=env, capture_output=True, timeout=120
    )


def _console_log(tmp_path: Path) -> str:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return Path(client.download_artifacts(run.info.run_id, "console.log", str(tmp_path / "dl"))).read_text()


def _without_tracelet_lines(stderr: bytes) -> bytes:
    return b"\n".join(line for line in stderr.split(b"\n") if not line.startswith(b"[tracelet]"))


def test_progress_bar_collapses_to_a_few_lines_and_the_terminal_bytes_are_unchanged(tmp_path, store_at):
    store_at(tmp_path / "on" / "mlflow.db")
    store_at(tmp_path / "off" / "mlflow.db")
    captured = _run(tmp_path / "on", "1")
    plain = _run(tmp_path / "off", "0")
    assert captured.returncode == plain.returncode == 0, captured.stderr[-2000:]
    assert captured.stdout == plain.stdout
    assert _without_tracelet_lines(captured.stderr) == _without_tracelet_lines(plain.stderr)
    log = _console_log(tmp_path / "on")
    assert log.splitlines()[:4] == [
        "hello stdout",
        "warning on stderr",
        "training 10000/10000 |####################|",
        "unicode: ünïcødé ✓",
    ]
    assert len(log.splitlines()) < 10


def test_output_printed_before_a_crash_is_in_the_artifact(tmp_path):
    out = _run(tmp_path, "1", "crash")
    assert out.returncode == 1
    log = _console_log(tmp_path)
    assert "hello stdout" in log and "RuntimeError: crash after printing" in log


def test_a_process_killed_hard_still_leaves_what_it_printed_up_to_the_last_flush(tmp_path):
    script = textwrap.dedent("""
        import os, signal, time, tracelet
        import tracelet.collectors.console as console
        console.FLUSH_INTERVAL_S = 0.2
        tracelet.start_logging(project="console")
        print("printed before the kill", flush=True)
        time.sleep(1.0)  # several console flushes
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    (tmp_path / "job.py").write_text(script)
    env = {**os.environ, "TRACELET_TRACK_CONSOLE": "1"}
    out = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert out.returncode == -9
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the writer closes the run on its own after EOF
        (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        if run.info.status != "RUNNING":
            break
        time.sleep(0.2)
    assert run.info.status == "KILLED"
    assert "printed before the kill" in _console_log(tmp_path)


# Lightning imported before tracking starts: its logging handlers already hold sys.stderr
LIGHTNING_FIRST = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, {tests!r})
    import lightning.pytorch as pl
    import tracelet
    from helpers import make_trainer, tiny_loaders, tiny_module_class

    tracelet.start_logging(project="console")
    pl.seed_everything(3)
    make_trainer(enable_model_summary=True, max_epochs=1).fit(tiny_module_class()(), *tiny_loaders())
    tracelet.stop_logging()
    (handler,) = logging.getLogger("lightning.pytorch").handlers
    assert handler.stream is sys.stderr, handler.stream  # given back
""")


def test_lightning_lines_are_captured_when_lightning_is_imported_first(tmp_path):
    (tmp_path / "job.py").write_text(LIGHTNING_FIRST.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "TRACELET_TRACK_CONSOLE": "1"}
    out = subprocess.run([sys.executable, "job.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    log = _console_log(tmp_path)
    for line in ("Seed set to 3", "`Trainer.fit` stopped: `max_epochs=1` reached."):  # Lightning's logger
        assert line in out.stderr and line in log
    # the model summary: Lightning's logger too, or, where rich is installed, a rich table on stdout
    assert "Trainable params" in out.stdout + out.stderr and "Trainable params" in log


def test_carriage_returns_keep_the_last_state_and_crlf_is_a_newline():
    collapser = LineCollapser()
    assert collapser.feed("err", "a\rb\rc") == []
    assert collapser.feed("err", "d\r\nnext\n") == ["cd", "next"]
    assert collapser.feed("out", "x") == [] and collapser.rest() == ["x"]


def test_the_size_cap_truncates_with_a_note():
    capture = ConsoleCapture(max_bytes=100)
    capture.start()
    try:
        for i in range(50):
            print(f"line {i}")
    finally:
        path = capture.stop()
    text = Path(path).read_text()
    assert text.splitlines()[-1].startswith("[tracelet: console output truncated after")
    assert len(text.encode()) < 200
    capture.cleanup()


def test_streams_are_restored_by_stop_logging(monkeypatch):
    monkeypatch.setenv("TRACELET_TRACK_CONSOLE", "1")
    before = (sys.stdout, sys.stderr)
    tracelet.start_logging(backend="fake_backends:Recording")
    assert sys.stdout is not before[0]
    tracelet.stop_logging()
    assert (sys.stdout, sys.stderr) == before
