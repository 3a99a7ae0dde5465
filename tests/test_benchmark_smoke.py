"""The benchmarks run end to end in smoke mode (a few steps each): every script of benchmarks/
works and prints its figures. ``make bench-smoke`` runs these (``make check`` and CI include it);
``make test`` leaves them out: they measure nothing at this size and take minutes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark_smoke
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` to the end; it must succeed."""
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_overhead_benchmark_runs_in_smoke_mode():
    out = _bench("bench_overhead.py", "--steps", "30", "--rounds", "1")
    assert "tracelet-3" in out.stdout and "tracelet-mlflow-warm" in out.stdout
    assert out.stdout.count("dropped or failed in all runs: 0") == 3  # one line per tracelet configuration
    assert re.search(r"^tracelet-3 +median [0-9.]+x \(90% interval", out.stdout, re.M)  # the pair ratio line


def test_overhead_benchmark_measures_another_checkouts_tracelet_in_the_same_rounds(tmp_path):
    before = tmp_path / "before"
    shutil.copytree(BENCHMARKS.parent / "tracelet", before / "tracelet")
    args = ["--steps", "30", "--rounds", "1", "--configs", "tracelet-mlflow", "--before", str(before)]
    out = _bench("bench_overhead.py", *args)
    assert re.search(r"^tracelet-mlflow@before +median ", out.stdout, re.M)
    assert f"tracelet-mlflow@before: tracelet from [{str(before)!r}]" in out.stdout
    assert f"tracelet-mlflow: tracelet from [{str(BENCHMARKS.parent)!r}]" in out.stdout


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("bench_paired.py", ["--steps", "30", "--pairs", "1"], "pair ratio median"),
        ("bench_interleaved.py", ["--steps", "300", "--block", "20", "--fits", "1"], "capture on / off"),
        ("bench_twins.py", ["--rounds", "4", "--block", "20"], "tracked / untracked twin"),
        (  # the twins take the tracked part in turns: each stops and starts tracking mid-fit
            "bench_twins.py",
            ["--swap", "--pairs", "2", "--rounds", "4", "--block", "20"],
            "flushed everything: True, lost 0",
        ),
        ("bench_load.py", ["--events", "20000"], "bus.emit on the calling thread"),
        ("bench_ddp.py", ["--rounds", "1", "--epochs", "1"], "with tracelet"),
        ("bench_writer.py", ["--steps", "400", "--repeats", "1"], "journal+mlflow"),
        ("bench_wire.py", ["--frames", "100", "--rounds", "1"], "ratio connection / hand-written"),
        ("bench_journal_line.py", ["--points", "2000", "--rounds", "1"], "ratio json.dumps / tracelet"),
        ("bench_writer.py", ["--steps", "100", "--repeats", "1", "--sets", "wandb", "clearml"], "clearml"),
        ("bench_hf.py", ["--steps", "20", "--rounds", "1"], "dropped or failed in all runs: 0"),
    ],
)
def test_other_benchmarks_run_in_smoke_mode(script, args, expect):
    assert expect in _bench(script, *args).stdout


def test_the_writer_benchmark_shows_where_the_cpu_goes():
    # 80,000 points: enough of the journal's ~3 us each for a sampler reading every 2 ms
    out = _bench(
        "bench_writer.py", "--steps", "20000", "--repeats", "1", "--sets", "journal", "--profile", "8"
    )
    report = out.stdout.split("journal: CPU under a sampler", 1)[1]
    opening, writing = report.split("  writing: ", 1)
    assert re.search(r"^  opening: [\d.]+ s of CPU", opening, re.M), out.stdout
    # the journal's worker writes the points: its thread and its write are charged to writing
    assert re.search(r"tracelet-journal [\d.]+", writing), out.stdout
    assert re.search(r"^ +[\d.]+ s  journal\.py:write$", writing, re.M), out.stdout


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="valgrind (callgrind) is not installed")
def test_instruction_benchmark_counts_a_tracked_and_an_untracked_step():
    out = _bench("bench_instructions.py", "--steps", "10", "--cache")
    # a smoke run: 10 steps are too few to resolve the ~1% a step costs (one collection of the
    # garbage collector moves a fit's count by more); the figure itself comes from the default 150
    assert re.search(r"tracelet adds -?[\d.]+% on the training thread", out.stdout), out.stdout
    assert re.search(r"cycle estimate +[\d,]+ -> +[\d,]+ +\(\+-?[\d.]+%\)", out.stdout), out.stdout
