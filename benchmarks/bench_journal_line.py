"""The writer's CPU per journal line for a metric: tracelet's line against ``json.dumps``.

The journal backend writes one JSON array per event (``tracelet/journal.py``, ``encode``). For
a metric with a str name, a float value and timestamp and an int step it builds the line
itself, the same characters ``json.dumps`` writes (a test keeps them equal). This times it
against the library written both ways (``json.dumps`` with the journal's separators, which
builds an encoder per call, and one ``json.JSONEncoder`` kept and reused) over the points a
Lightning fit logs (4 series, steps 0..N-1), as process CPU time, and prints the medians of the
rounds and their ratios.

    python benchmarks/bench_journal_line.py
    python benchmarks/bench_journal_line.py --points 2000 --rounds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from tracelet.events import Metric
from tracelet.journal import encode

NAMES = ("train/loss", "train/abs", "train/scaled", "epoch")


def _with_json_dumps(event: Metric) -> str:
    record = ["m", event.name, event.value, event.step, event.timestamp]
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _with_one_encoder(event: Metric) -> str:
    return _ENCODER.encode(["m", event.name, event.value, event.step, event.timestamp]) + "\n"


def _cpu_per_line(write: Callable[[Metric], str], events: list[Metric]) -> float:
    started = time.process_time()
    for event in events:
        write(event)
    return (time.process_time() - started) / len(events)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    now = time.time()
    events = [Metric(NAMES[i % 4], 0.5 + i * 1e-7, i // 4, now + i * 1e-4) for i in range(args.points)]
    ways = {"tracelet": encode, "json.dumps": _with_json_dumps, "JSONEncoder": _with_one_encoder}
    assert all(encode(e) == w(e) for w in ways.values() for e in events[:1000]), "the lines differ"
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so a change in the machine's speed hits all
        for name, way in ways.items():
            results[name].append(_cpu_per_line(way, events))
    medians = {name: statistics.median(times) for name, times in results.items()}
    for name, median in medians.items():
        print(f"{name:>11}: {median * 1e6:.2f} us per metric line (median of {args.rounds} rounds)")
    for name in ("json.dumps", "JSONEncoder"):
        print(f"ratio {name} / tracelet: {medians[name] / medians['tracelet']:.2f}")


if __name__ == "__main__":
    main()
