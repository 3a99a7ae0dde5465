"""Tracking's cost per training step, inside one fit: blocks of steps with tracelet's Lightning
capture on and off, alternating.

The machines we measure on change speed by 20-30% within seconds, so fits minutes apart
(``bench_overhead.py``) or even adjacent fits (``bench_paired.py``) cannot resolve a few
percent. Here one long fit runs with tracelet started (MLflow on SQLite + journal, writer
warm) and its Lightning capture switched on and off every ``--block`` steps; each pair of
adjacent blocks (ordered on-off, then off-on, so a trend within a pair cancels) gives one
ratio, and the median of many pairs is printed with a bootstrap interval. Drift slower than
a block pair (~0.2 s) cancels.

What it measures: everything tracelet does per step in the training process — the
capture on the training thread and what the sender thread then does with it — on top of
tracelet merely being started (patches present but inactive, writer and collectors
running). It does not include start-up, ``stop_logging`` or the writer's share of a core
in the "off" blocks: ``bench_overhead.py`` is the whole-fit, fresh-process figure.

    python benchmarks/bench_interleaved.py                   # 3 fits of 6000 steps, blocks of 50
    python benchmarks/bench_interleaved.py --steps 400 --fits 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from ratios import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--block", type=int, default=50, help="steps per block")
    parser.add_argument("--fits", type=int, default=3)
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="tracelet-interleaved-"))

    import lightning.pytorch as pl
    from tiny import byte_compile_tracelet, module_and_data, trainer

    import tracelet
    from tracelet import api

    byte_compile_tracelet()
    Tiny, data = module_and_data(args.steps)
    block = args.block

    class Blocks(pl.Callback):
        """Times blocks of ``block`` steps and switches the capture at each block's start."""

        def __init__(self, capture) -> None:
            self.capture = capture
            self.times: list[tuple[bool, float]] = []  # (capture on, seconds) per block
            self.started = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx % block:
                return
            now = time.perf_counter()
            if batch_idx:
                self.times.append((self.capture._active, now - self.started))
            pair, second = divmod(batch_idx // block, 2)
            self.capture._active = (second == 0) == (pair % 2 == 0)  # on-off, off-on, on-off, ...
            self.started = now

    trainer(20).fit(Tiny(), data)  # warm-up: imports, first-call caches
    ratios: list[float] = []
    for _ in range(args.fits):
        tracelet.start_logging(project="interleaved").flush()
        capture = next(i for i in api._active.instrumentors if i.name == "lightning")
        blocks = Blocks(capture)
        run = trainer(args.steps)
        run.callbacks.append(blocks)
        run.fit(Tiny(), data)
        capture._active = True
        report = tracelet.stop_logging()
        assert report.done and not any(s.dropped or s.failed for s in report.backends.values())
        times = blocks.times[2:]  # the first pair warms the switch up
        for first, second in zip(times[0::2], times[1::2], strict=False):
            on, off = (first[1], second[1]) if first[0] else (second[1], first[1])
            ratios.append(on / off)
    steps_per_s = block / statistics.median(t for _, t in blocks.times)
    print(
        f"\n{args.fits} fit(s) of {args.steps} steps ({steps_per_s:.0f} steps/s), capture switched every "
        f"{block} steps, tracelet -> MLflow (SQLite) + journal, 3 metrics/step, log_every_n_steps=1"
    )
    print(f"capture on / off, adjacent blocks: {describe(ratios)}")


if __name__ == "__main__":
    main()
