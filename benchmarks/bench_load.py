"""Load: a million metric events through the manual API into MLflow + the journal.

Reports what the calling thread sees (events per second accepted by ``log_metric`` and by
the bus's ``emit``), what each backend delivered per second, and the peak RSS growth of the
training process (bounded by ``queue_size`` x the size of an event, whatever the run length).

    python benchmarks/bench_load.py                      # 1,000,000 events
    python benchmarks/bench_load.py --events 100000      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--names", type=int, default=100, help="distinct metric names")
    parser.add_argument("--backend", default="mlflow")
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="tracelet-load-"))
    os.environ.setdefault("TRACELET_TRACK_SYSTEM", "0")
    os.environ.setdefault("TRACELET_TRACK_CONSOLE", "0")
    import tracelet
    from tracelet.events import Metric

    names = [f"load/metric_{i}" for i in range(args.names)]
    baseline_rss = _rss_mb()
    peak_rss = baseline_rss
    exp = tracelet.start_logging(project="load", backend=args.backend.split(","))
    assert exp.flush(120), "backends did not open"
    started = time.perf_counter()
    for i in range(args.events):
        exp.log_metric(names[i % len(names)], i * 0.5, iteration=i // len(names))
        if i % 50_000 == 0:
            peak_rss = max(peak_rss, _rss_mb())
    api_seconds = time.perf_counter() - started
    bus = exp._bus
    now = time.time()
    event = Metric("load/raw", 1.0, 1, now)
    started = time.perf_counter()
    for _ in range(min(args.events, 200_000)):
        bus.emit(event)
    emit_seconds = time.perf_counter() - started
    emitted = min(args.events, 200_000)
    report = tracelet.stop_logging(timeout=3600)
    delivered_seconds = time.perf_counter() - started + api_seconds
    peak_rss = max(peak_rss, _rss_mb())
    total = args.events + emitted
    print(f"\n{args.events} events via log_metric over {args.names} names, then {emitted} via emit()")
    print(f"log_metric on the calling thread: {args.events / api_seconds:,.0f} events/s")
    print(f"bus.emit on the calling thread:   {emitted / emit_seconds:,.0f} events/s")
    for name, stats in report.backends.items():
        print(
            f"{name}: {stats.sent:,} of {total:,} sent, {stats.dropped:,} dropped {stats.reasons or ''}, "
            f"peak queue {stats.high_water:,}; {stats.sent / delivered_seconds:,.0f} events/s end to end"
        )
    print(
        f"training process RSS: {baseline_rss:.0f} MB before, peak {peak_rss:.0f} MB "
        f"(+{peak_rss - baseline_rss:.0f} MB)"
    )
    sys.exit(0 if report.done else 1)


if __name__ == "__main__":
    main()
