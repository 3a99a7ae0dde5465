"""`tracelet run`: an unmodified script tracked from its first line; one run per job; exit codes;
a tracking server that is down costs training nothing and the journal replays the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import assert_same_series, csv_series, mlflow_series
from mlflow.tracking import MlflowClient

from tracelet import journal
from tracelet.autostart import OWNER_ENV, should_start
from tracelet.replay import replay

TESTS = str(Path(__file__).parent)

# No tracelet import: what a user's training script looks like.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from helpers import make_trainer, tiny_loaders, tiny_module_class

    ddp = "--ddp" in sys.argv
    pl.seed_everything(7, verbose=False)
    train, val = tiny_loaders()
    options = dict(strategy="ddp", devices=2) if ddp else {{}}
    trainer = make_trainer(logger=CSVLogger("csv", name="job"), **options)
    started = time.perf_counter()
    trainer.fit(tiny_module_class()(), train, val)
    if trainer.is_global_zero:
        print(f"FIT_SECONDS={{time.perf_counter() - started:.3f}}")
        print("LOG_DIR=" + os.path.abspath(trainer.logger.log_dir))
""")


def _tracelet(tmp_path: Path, *args: str, env: dict | None = None, timeout: int = 300):
    (tmp_path / "train.py").write_text(SCRIPT.format(tests=TESTS))
    command = [sys.executable, "-m", "tracelet", *args]
    environment = {**os.environ, "TRACELET_STRICT": "0", **(env or {})}
    return subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=timeout
    )


def _printed(out: subprocess.CompletedProcess, key: str) -> str:
    return next(line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith(key + "="))


def _runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_an_unmodified_lightning_script_is_tracked_series_for_series(tmp_path):
    out = _tracelet(
        tmp_path,
        *("run", "--backend", "mlflow", "--project", "zero-code", "--", sys.executable, "train.py"),
        env={"TRACELET_TRACK_ENV": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED"
    assert MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name == "zero-code"
    oracle = csv_series(Path(_printed(out, "LOG_DIR")) / "metrics.csv")
    assert_same_series(mlflow_series(run.info.run_id, uri), oracle)
    assert run.data.params["lr"] == "0.05"
    assert run.data.tags["env.command"].endswith("train.py")


def test_ddp_with_two_processes_under_tracelet_run_is_one_run(tmp_path):
    out = _tracelet(tmp_path, "run", "--backend", "mlflow", "--", sys.executable, "train.py", "--ddp")
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = _runs(uri)
    oracle = csv_series(Path(_printed(out, "LOG_DIR")) / "metrics.csv")
    assert_same_series(mlflow_series(run.info.run_id, uri), oracle)
    assert len(journal.find(tmp_path / "tracelet-runs")) == 1


# How the program ends, not what it trains, is what `tracelet run` must pass on: no Lightning here
# (each Lightning process costs ~10 s of CPU to import it).
ENDING = textwrap.dedent("""
    import sys
    print("hello")
    if "--exit" in sys.argv:
        sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
    if "--crash" in sys.argv:
        raise RuntimeError("crash in the user's script")
""")


@pytest.mark.parametrize(("args", "code"), [(["--exit", "3"], 3), (["--crash"], 1), (["--exit", "0"], 0)])
def test_the_program_exit_code_is_ours_and_a_failure_marks_the_run_failed(tmp_path, args, code):
    (tmp_path / "end.py").write_text(ENDING)
    out = _tracelet(tmp_path, "run", "--", sys.executable, "end.py", *args)
    assert out.returncode == code, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["hello"]
    (run,) = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == ("FINISHED" if code == 0 else "FAILED")
    if code == 1:
        assert "crash in the user's script" in run.data.tags["tracelet.failure"]


@pytest.mark.fresh_store  # checks what is (not) created in the working directory
def test_a_bad_setting_fails_before_the_program_starts(tmp_path):
    out = _tracelet(tmp_path, "run", "--config", "metrics_intervl=5", "--", sys.executable, "train.py")
    assert out.returncode == 2
    assert "Did you mean 'metrics_interval'?" in out.stderr
    assert "FIT_SECONDS" not in out.stdout and not (tmp_path / "mlflow.db").exists()
    out = _tracelet(tmp_path, "run", "--backend", "nosuch", "--", sys.executable, "train.py")
    assert out.returncode == 2 and "unknown backend 'nosuch' (from --backend)" in out.stderr
    out = _tracelet(tmp_path, "run", "--config", "metrics_interval=0", "--", sys.executable, "train.py")
    assert out.returncode == 2 and "(from --config metrics_interval=)" in out.stderr


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


STALL_S = 60  # MLflow's client retries a refused connection 7 times with backoff: ~4 minutes


def test_a_tracking_server_that_is_down_costs_nothing_and_the_journal_replays_the_run(tmp_path, store_at):
    (tmp_path / "plain").mkdir()
    (tmp_path / "down").mkdir()
    (tmp_path / "plain" / "train.py").write_text(SCRIPT.format(tests=TESTS))
    started = time.monotonic()
    plain = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path / "plain", capture_output=True, text=True
    )
    plain_wall = time.monotonic() - started
    assert plain.returncode == 0, plain.stderr[-2000:]

    dead = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    out = _tracelet(
        tmp_path / "down", "run", "--", sys.executable, "train.py", env={"MLFLOW_TRACKING_URI": dead}
    )
    tracked_wall = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-3000:]
    # no stall on the dead server (MLflow's own HTTP retries back off for minutes): neither the fit
    # nor the program's end waits on it. The bound is a stall's, far above a busy machine's noise;
    # what tracking costs is measured in benchmarks/.
    assert float(_printed(out, "FIT_SECONDS")) < float(_printed(plain, "FIT_SECONDS")) + STALL_S
    assert tracked_wall < plain_wall + STALL_S
    warnings = [line for line in out.stderr.splitlines() if "backend 'mlflow' disabled" in line]
    assert len(warnings) == 1 and "tracelet replay" in warnings[0]
    # what failed and where, in words; urllib3's pool reprs only at DEBUG
    assert f"(cannot reach {dead} (connection refused)); training goes on" in warnings[0]
    assert "HTTPConnectionPool" not in out.stderr and len(warnings[0].split(". The journal")[0]) < 200

    (record,) = journal.find(tmp_path / "down" / "tracelet-runs")
    assert record.delivery["mlflow"]["state"] == "failed"
    target = store_at(tmp_path / "replayed.db")
    stats = replay(record.path, ["mlflow"], backend_url=target)
    assert stats["mlflow"].failed == stats["mlflow"].dropped == 0
    (run,) = _runs(target)
    oracle = csv_series(Path(_printed(out, "LOG_DIR")) / "metrics.csv")
    assert_same_series(mlflow_series(run.info.run_id, target), oracle)


# A script that starts tracking itself, run under `tracelet run` (examples/plain_pytorch_tensorboard.py
# gives that command in its docstring): one run, the script's names filling in the command line's.
ADOPTING = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import tracelet
    from helpers import make_trainer, tiny_loaders, tiny_module_class

    def fit():
        make_trainer().fit(tiny_module_class()(), *tiny_loaders())

    if "--late" in sys.argv:
        fit()
        tracelet.get_active_experiment().flush()  # the run has reached its backends
    first = tracelet.get_active_experiment()
    names = dict(exp_name="from-script", project="script-project")
    exp = tracelet.start_logging(**names, config={{"metrics_interval": 2}})
    assert exp is first and tracelet.get_active_experiment() is exp
    fit()
    print("STATUS=" + tracelet.stop_logging().status)
""")


@pytest.mark.parametrize("late", [False, True])
def test_a_script_that_starts_logging_itself_continues_the_run_tracelet_run_started(tmp_path, late):
    (tmp_path / "adopt.py").write_text(ADOPTING.format(tests=TESTS))
    program = [sys.executable, "adopt.py", *(["--late"] if late else [])]
    out = _tracelet(tmp_path, "run", "--backend", "mlflow", "--project", "cli-project", "--", *program)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "STATUS=FINISHED" in out.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = _runs(uri)  # one run, not a stub beside the script's
    assert MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name == "cli-project"
    (record,) = journal.find(tmp_path / "tracelet-runs")
    assert record.run["project"] == "cli-project"  # the command line wins
    assert record.status == "FINISHED"
    if late:  # nothing could change where the run lives any more: said, and the launch's names kept
        assert "exp_name from start_logging not applied" in out.stderr
        assert run.info.run_name == record.run["exp_name"] == f"adopt-{record.run['run_uid'][:6]}"
    else:  # the script's name and settings fill in what the command line did not give
        assert run.info.run_name == record.run["exp_name"] == "from-script"
        assert record.run["settings"]["metrics_interval"] == 2.0
    assert len(mlflow_series(run.info.run_id, uri)["train/loss_step"]) == (10 if late else 5)


def test_an_existing_sitecustomize_still_runs(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['ORIGINAL_SITECUSTOMIZE'] = 'ran'\n")
    (tmp_path / "show.py").write_text(
        "import os, tracelet\n"
        "print(os.environ.get('ORIGINAL_SITECUSTOMIZE'), tracelet.get_active_experiment() is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "tracelet", "run", "--", sys.executable, "show.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ran", "True"]


@pytest.mark.parametrize(
    ("environ", "argv", "expected"),
    [
        ({"TRACELET_AUTOSTART": "1"}, ["python", "train.py"], True),
        ({}, ["python", "train.py"], False),
        ({"TRACELET_AUTOSTART": "1", OWNER_ENV: "1"}, ["python", "train.py"], False),  # a parent tracks
        ({"TRACELET_AUTOSTART": "1", OWNER_ENV: "42"}, ["python", "train.py"], True),  # this process is it
        ({"TRACELET_AUTOSTART": "1"}, ["python", "-c", "x", "--multiprocessing-fork"], False),
        ({"TRACELET_AUTOSTART": "1"}, ["python", "/venv/bin/torchrun", "train.py"], False),
        ({"TRACELET_AUTOSTART": "1"}, ["python", "-m", "torch.distributed.run", "train.py"], False),
        (
            {"TRACELET_AUTOSTART": "1", "TRACELET_WRITER_PROCESS": "1"},
            ["python", "-m", "tracelet.writer"],
            False,
        ),
    ],
)
def test_one_process_per_job_starts_tracking(environ, argv, expected):
    assert should_start(environ, argv, pid=42) is expected
