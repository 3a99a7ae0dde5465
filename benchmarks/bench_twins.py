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

Runs of one pair differ by more than their intervals say (e.g. 1.048x, 1.073x, 1.095x,
1.033x for the same code within an hour, each 0.02-0.04 wide): a pair of processes keeps its
own speed difference for its whole life (where the host put its memory and threads; with
both twins untracked, 8 fresh pairs measured 0.94x to 1.07x each), which more rounds do not
average out. ``--pairs N`` starts N fresh pairs one after another and resamples whole pairs
for the interval; ``--swap`` lets the two processes take the tracked part in turns, round by
round (tracking stopped and started between turns, untimed), so that each sample holds each
process once tracked and once not and their own speeds cancel. Tracking is then at most two
turns old when measured: a cost that grows over a long run would not show (none was seen:
the training process's object count and collections stay flat over 6000 tracked steps).

    python benchmarks/bench_twins.py                          # 24 rounds of 1500-step blocks
    python benchmarks/bench_twins.py --pairs 8 --rounds 10    # 8 fresh pairs: see below
    python benchmarks/bench_twins.py --swap --pairs 4 --rounds 18
    python benchmarks/bench_twins.py --calibrate              # both untracked: should be ~1.00x
    python benchmarks/bench_twins.py --config '{"track_lightning": false}'
    python benchmarks/bench_twins.py --rounds 3 --block 20    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from ratios import describe, grouped_median_interval

WARM_UP_ROUNDS = 2


def _twin(role: str, rounds: int, block: int, go_fd: int, done_fd: int, config: dict | None) -> None:
    """One twin: a fit that stops at every block boundary to report and wait for its turn.
    ``role``: tracked in every round, in none (untracked), or in the even or odd rounds only
    (``--swap``: tracking is stopped or started before the twin reports its turn done, so the
    switch is never timed and never overlaps the other twin's turn)."""
    os.chdir(tempfile.mkdtemp(prefix="tracelet-twin-"))
    import lightning.pytorch as pl
    from tiny import module_and_data, trainer

    import tracelet

    go, done = os.fdopen(go_fd, "rb", buffering=0), os.fdopen(done_fd, "w", buffering=1)
    Tiny, data = module_and_data(rounds * block + 1)
    trainer(20).fit(Tiny(), data)  # warm-up: imports, first-call caches
    reports: list = []

    def track_in(round_index: int | None) -> None:
        wanted = (
            config is not None
            and round_index is not None
            and (role == "tracked" or (role in ("even", "odd") and round_index % 2 == (role == "odd")))
        )
        active = tracelet.get_active_experiment() is not None
        if wanted and not active:
            tracelet.start_logging(project="twins", config=config).flush()
        elif active and not wanted:
            reports.append(tracelet.stop_logging())

    track_in(0)

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
                track_in(batch_idx // block)
                done.write(f"{wall} {cpu} {process}\n")
            go.read(1)  # blocks until it is this twin's turn
            self.started, self.cpu_started = time.perf_counter(), time.thread_time()
            self.process_started = time.process_time()

    run = trainer(rounds * block + 1)
    run.callbacks.append(Turns())
    run.fit(Tiny(), data)
    track_in(None)  # the end: stop
    result = _merged(
        [{"done": r.done, "lost": sum(s.dropped + s.failed for s in r.backends.values())} for r in reports]
    )
    done.write(json.dumps(result) + "\n")


def _ratios(times: dict[bool, list[float]]) -> list[float]:
    """Tracked over untracked, after the warm-up rounds: the geometric mean of each two
    rounds, one with the tracked twin's turn first and one with it second (which turn of a
    round is faster moved by up to 10% on this VM at times, and a median of ratios of both
    kinds then lands anywhere between them); with ``--swap`` each process is tracked in one
    of the two, so a process's own lasting speed cancels out too."""
    ratios = [t / u for t, u in zip(times[True], times[False], strict=True)][WARM_UP_ROUNDS:]
    return [math.sqrt(a * b) for a, b in zip(ratios[::2], ratios[1::2], strict=False)]


def _start_twin(role: str, args: argparse.Namespace) -> tuple[subprocess.Popen, int, object]:
    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, __file__, "--twin", role]
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
    parser.add_argument(
        "--pairs", type=int, default=1, help="fresh pairs of twin processes, one after another"
    )
    parser.add_argument("--config", default="{}", help="tracelet config as JSON")
    parser.add_argument(
        "--calibrate", action="store_true", help="both twins untracked: the ratio the setup itself gives"
    )
    parser.add_argument(
        "--swap",
        action="store_true",
        help="the twins take the tracked part in turns, round by round (tracking stopped and "
        "started between their turns, untimed)",
    )
    parser.add_argument("--twin", choices=["tracked", "untracked", "even", "odd"], help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.twin:
        go_fd, done_fd = map(int, args.fds.split(","))
        config = None if args.calibrate else json.loads(args.config)
        _twin(args.twin, args.rounds, args.block, go_fd, done_fd, config)
        return

    from tiny import byte_compile_tracelet

    byte_compile_tracelet()
    pairs = [_one_pair(args) for _ in range(args.pairs)]
    walls, cpus, processes = ([pair[kind] for pair in pairs] for kind in ("wall", "cpu", "process"))
    untracked_step = statistics.median(t for pair in pairs for t in pair["untracked"]) / args.block
    print(
        f"\n{args.pairs} pair(s) of twins, {args.rounds} rounds of {args.block}-step turns each "
        f"(untracked step {untracked_step * 1e3:.2f} ms), "
        + ("both twins untracked (calibration)" if args.calibrate else f"tracelet config {args.config}")
        + ", 3 metrics/step, log_every_n_steps=1"
    )
    print(f"tracked / untracked twin, two rounds at a time: {_describe(walls)}")
    print(f"  CPU time of the training thread: {_describe(cpus)}")
    print(f"  CPU time of the training process (+ tracelet's threads): {_describe(processes)}")
    if args.pairs > 1:
        print("  each pair's median: " + " ".join(f"{statistics.median(r):.3f}" for r in walls))
    tracked = _merged([pair["tracked"] for pair in pairs])
    if tracked:
        print(f"tracked twin(s) flushed everything: {tracked['done']}, lost {tracked['lost']}")


def _one_pair(args: argparse.Namespace) -> dict:
    """One pair of fresh twin processes taking ``args.rounds`` turns each: the ratios per round
    (wall time, the training thread's CPU time, the training process's), the untracked twin's
    block times, and the tracked twin's final report."""
    roles = ("even", "odd") if args.swap else ("untracked", "tracked")
    twins = {role: _start_twin(role, args) for role in roles}
    kinds = ("wall", "cpu", "process")
    times: dict[str, dict[bool, list[float]]] = {kind: {False: [], True: []} for kind in kinds}
    for round_index in range(args.rounds):
        tracked_index = round_index % 2 if args.swap else 1
        role_of = {True: roles[tracked_index], False: roles[1 - tracked_index]}
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for tracked in order:
            _, go, done = twins[role_of[tracked]]
            os.write(go, b"g")
            line = done.readline()
            if not line:
                raise SystemExit(f"the {role_of[tracked]} twin exited early")
            for kind, value in zip(kinds, map(float, line.split()), strict=True):
                times[kind][tracked].append(value)
    results = {}
    for role, (process, go, done) in twins.items():
        os.write(go, b"g")  # the last step
        results[role] = json.loads(done.readline())
        process.wait(timeout=120)
    pair: dict = {kind: _ratios(by_twin) for kind, by_twin in times.items()}
    pair["untracked"] = times["wall"][False]
    pair["tracked"] = _merged(list(results.values()))
    return pair


def _describe(per_pair: list[list[float]]) -> str:
    """The median of every sample; with several pairs, its interval resamples whole pairs (each
    pair of processes has its own lasting speed difference: where its memory and threads
    landed), not samples."""
    if len(per_pair) == 1:
        return describe(per_pair[0])
    low, high = grouped_median_interval(per_pair)
    pooled = [ratio for ratios in per_pair for ratio in ratios]
    return (
        f"median {statistics.median(pooled):.3f}x (90% interval over pairs {low:.2f}-{high:.2f}x, "
        f"{len(pooled)} samples of two rounds in {len(per_pair)} pairs)"
    )


def _merged(reports: list[dict]) -> dict:
    """One ``{"done", "lost"}`` for several tracked runs' reports ({} for none: untracked)."""
    reports = [report for report in reports if report]
    if not reports:
        return {}
    return {"done": all(r["done"] for r in reports), "lost": sum(r["lost"] for r in reports)}


if __name__ == "__main__":
    main()
