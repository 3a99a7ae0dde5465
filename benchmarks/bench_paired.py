"""Tracking overhead measured in pairs, in one process: untracked fit, tracked fit, repeat.

On a shared machine whose speed drifts by tens of percent from minute to minute, fresh
processes minutes apart (``bench_overhead.py``) can hide a few percent of overhead. Here
each tracked fit runs right after an untracked one of the same job in the same process
(``start_logging`` before it, ``stop_logging`` after it), and the ratio of each pair is
taken; the median pair ratio and the ratio of the fastest runs are printed.

Wall time on a shared VM moves with its neighbours (steal time), so the CPU time of the
training process (all its threads: training, tracelet's sender and collectors) is measured
beside it: that is the work tracking adds where training runs. The writer process's CPU
(backends, their start-up included) is printed apart — it runs on another
core, niced, yet where the two vCPUs are hyperthreads of one core it still slows training.

    python benchmarks/bench_paired.py                   # 2000 steps, 8 pairs, everything on
    python benchmarks/bench_paired.py --config '{"journal": false}'
    python benchmarks/bench_paired.py --warm            # steady state, start-up excluded
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time

from ratios import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--config", default="{}", help="tracelet config as JSON")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="wait until the backends are open before each tracked fit (steady state: the writer's "
        "start-up then does not overlap the fit)",
    )
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="tracelet-paired-"))

    import psutil
    from tiny import byte_compile_tracelet, module_and_data, trainer

    import tracelet

    byte_compile_tracelet()
    Tiny, data = module_and_data(args.steps)

    def fit() -> tuple[float, float]:
        trainer_ = trainer(args.steps)
        started, cpu = time.perf_counter(), time.process_time()
        trainer_.fit(Tiny(), data)
        return time.perf_counter() - started, time.process_time() - cpu

    config = json.loads(args.config)
    fit()  # warm-up
    untracked, tracked, writer_cpu, added = [], [], [], []
    for _ in range(args.pairs):
        untracked.append(fit())
        experiment = tracelet.start_logging(project="paired", config=config)
        if args.warm:
            experiment.flush()
        writers = psutil.Process().children()
        threads_before = _tracelet_thread_cpu()
        tracked.append(fit())
        threads_cpu = _tracelet_thread_cpu() - threads_before
        with contextlib.suppress(psutil.Error):  # sampled before stop: the writer exits there
            writer_cpu.append(sum(sum(w.cpu_times()[:2]) for w in writers))
        report = tracelet.stop_logging()
        added.append(report.hook_seconds + threads_cpu)
    print(
        f"\n{args.pairs} pairs of {args.steps}-step fits, tracelet config {config}"
        + (", writer warm before each fit" if args.warm else "")
    )
    for label, index in (("wall", 0), ("training-process CPU", 1)):
        base, with_tracking = [u[index] for u in untracked], [t[index] for t in tracked]
        ratios = [t / u for t, u in zip(with_tracking, base, strict=True)]
        print(f"{label} untracked (s): " + " ".join(f"{t:.2f}" for t in base))
        print(f"{label} tracked   (s): " + " ".join(f"{t:.2f}" for t in with_tracking))
        print(f"{label}: pair ratio {describe(ratios)}; fastest runs {min(with_tracking) / min(base):.3f}x")
    if writer_cpu:
        print(f"writer process CPU per tracked fit: median {statistics.median(writer_cpu):.2f} s")
    # a measure the machine's drift does not move: what tracelet adds to the training process
    # (its code inside the patches on the training thread + the CPU of its own threads there),
    # against the untracked fit; the wall-clock ratio can only be larger by contention
    share = statistics.median(added) / statistics.median(u[0] for u in untracked)
    print(
        f"tracelet's work in the training process: median {statistics.median(added) * 1e3:.0f} ms "
        f"per fit = {share:.1%} of the untracked fit ({1 + share:.3f}x)"
    )


def _tracelet_thread_cpu() -> float:
    """CPU seconds used so far by tracelet's own threads in this process (sender, collectors)."""
    import threading

    import psutil

    ours = {t.native_id for t in threading.enumerate() if t.name.startswith("tracelet")}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ours)


if __name__ == "__main__":
    main()
