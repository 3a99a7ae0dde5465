"""Tracking's whole cost on a Lightning fit, against an untracked twin taking turns with it.

Two processes run the same fit side by side: one untracked (``logger=False``), one with
tracelet started (by default MLflow on SQLite + journal, everything on: its writer
process, sender thread and collectors running; ``--config`` for others). They take turns,
one block of ``--block`` steps at a time (the order alternating: untracked-tracked,
tracked-untracked, ...), so only one trains at any moment and both see the machine's speed
of the same second. Each round's ratio of the tracked block's time to the untracked one's
is one sample; the median of the rounds is printed with a bootstrap interval, and the same
for the CPU time of the training thread alone and of the whole training process (tracelet's
sender and collector threads too): where the training thread's CPU time grows as much as
its wall time, tracking makes its own work slower (caches, memory) rather than making it
wait (for the GIL, for a CPU). On a VM
whose speed moves by 20-30% within seconds, fits minutes apart (``bench_overhead.py``)
cannot resolve a few percent; this narrows it (``--calibrate``: 0.98x, 0.97-1.04).

Steady state: the first rounds (the tracked twin's writer starting) are left out, and
start-up and ``stop_logging`` are ``bench_overhead.py``'s to measure. The tracked twin's
background work runs on while the untracked one has its turn, up to the sender's 0.5 s lag:
blocks last several seconds so that little of it spills over.

    python benchmarks/bench_twins.py                          # 24 rounds of 1500-step blocks
    python benchmarks/bench_twins.py --calibrate              # both untracked: should be ~1.00x
    python benchmarks/bench_twins.py --config '{"track_lightning": false}'
    python benchmarks/bench_twins.py --rounds 3 --block 20    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from ratios import describe

WARM_UP_ROUNDS = 2


def _twin(tracked: bool, rounds: int, block: int, go_fd: int, done_fd: int, config: dict | None) -> None:
    """One twin: a fit that stops at every block boundary to report and wait for its turn."""
    os.chdir(tempfile.mkdtemp(prefix="tracelet-twin-"))
    import lightning.pytorch as pl
    from tiny import module_and_data, trainer

    import tracelet

    go, done = os.fdopen(go_fd, "rb", buffering=0), os.fdopen(done_fd, "w", buffering=1)
    Tiny, data = module_and_data(rounds * block + 1)
    trainer(20).fit(Tiny(), data)  # warm-up: imports, first-call caches
    if tracked and config is not None:
        tracelet.start_logging(project="twins", config=config).flush()

    class Turns(pl.Callback):
        started = 0.0
        cpu_started = 0.0
        process_started = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx % block:
                return
            if batch_idx:
                wall = time.perf_counter() - self.started
                cpu = time.thread_time() - self.cpu_started
                process = time.process_time() - self.process_started
                done.write(f"{wall} {cpu} {process}\n")
            go.read(1)  # blocks until it is this twin's turn
            self.started, self.cpu_started = time.perf_counter(), time.thread_time()
            self.process_started = time.process_time()

    run = trainer(rounds * block + 1)
    run.callbacks.append(Turns())
    run.fit(Tiny(), data)
    result: dict = {}
    if tracked and config is not None:
        report = tracelet.stop_logging()
        result = {"done": report.done, "lost": sum(s.dropped + s.failed for s in report.backends.values())}
    done.write(json.dumps(result) + "\n")


def _ratios(times: dict[bool, list[float]]) -> list[float]:
    return [t / u for t, u in zip(times[True], times[False], strict=True)][WARM_UP_ROUNDS:]


def _start_twin(tracked: bool, args: argparse.Namespace) -> tuple[subprocess.Popen, int, object]:
    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, __file__, "--twin", "tracked" if tracked else "untracked"]
        + [
            "--rounds",
            str(args.rounds),
            "--block",
            str(args.block),
            "--config",
            args.config,
            "--fds",
            f"{go_read},{done_write}",
        ]
        + (["--calibrate"] if args.calibrate else []),
        pass_fds=(go_read, done_write),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(go_read)
    os.close(done_write)
    return process, go_write, os.fdopen(done_read, "r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--block", type=int, default=1500, help="steps per turn")
    parser.add_argument("--config", default="{}", help="tracelet config as JSON")
    parser.add_argument(
        "--calibrate", action="store_true", help="both twins untracked: the ratio the setup itself gives"
    )
    parser.add_argument("--twin", choices=["tracked", "untracked"], help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.twin:
        go_fd, done_fd = map(int, args.fds.split(","))
        config = None if args.calibrate else json.loads(args.config)
        _twin(args.twin == "tracked", args.rounds, args.block, go_fd, done_fd, config)
        return

    from tiny import byte_compile_tracelet

    byte_compile_tracelet()
    twins = {tracked: _start_twin(tracked, args) for tracked in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu_times: dict[bool, list[float]] = {False: [], True: []}
    process_times: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for tracked in order:
            _, go, done = twins[tracked]
            os.write(go, b"g")
            line = done.readline()
            if not line:
                raise SystemExit(f"the {'tracked' if tracked else 'untracked'} twin exited early")
            wall, cpu, process = map(float, line.split())
            times[tracked].append(wall)
            cpu_times[tracked].append(cpu)
            process_times[tracked].append(process)
    results = {}
    for tracked, (process, go, done) in twins.items():
        os.write(go, b"g")  # the last step
        results[tracked] = json.loads(done.readline())
        process.wait(timeout=120)
    ratios = _ratios(times)
    cpu_ratios = _ratios(cpu_times)
    process_ratios = _ratios(process_times)
    untracked_step = sorted(times[False])[len(times[False]) // 2] / args.block
    print(
        f"\n{args.rounds} rounds of {args.block}-step turns (untracked step {untracked_step * 1e3:.2f} ms), "
        + ("both twins untracked (calibration)" if args.calibrate else f"tracelet config {args.config}")
        + ", 3 metrics/step, log_every_n_steps=1"
    )
    print(f"tracked / untracked twin, same round: {describe(ratios)}")
    print(f"  CPU time of the training thread: {describe(cpu_ratios)}")
    print(f"  CPU time of the training process (+ tracelet's threads): {describe(process_ratios)}")
    if results[True]:
        print(f"tracked twin flushed everything: {results[True]['done']}, lost {results[True]['lost']}")


if __name__ == "__main__":
    main()
