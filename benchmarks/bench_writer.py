"""The writer process's CPU per metric point, backend by backend.

Where the two vCPUs of a small VM are hyperthreads of one core, CPU the writer spends during
training is partly taken from training, so its cost per point is worth watching on its own.
This runs the writer's side in this process — the dispatcher and the real backends, fed the
pickled frames a Lightning fit sends (one ``Metrics`` group of 4 series per step, 500 groups
a frame) — and divides the CPU time of all its threads (unpickling, dispatch, each backend's
worker) by the points written. Process CPU time does not move with the machine's other load
as wall time does; each repeat is a fresh run in a fresh store, the median is printed.

    python benchmarks/bench_writer.py                    # journal, mlflow, journal+mlflow
    python benchmarks/bench_writer.py --steps 400 --repeats 1   # a smoke run
    python benchmarks/bench_writer.py --sets wandb clearml      # the offline SDKs
    python benchmarks/bench_writer.py --sets wandb --profile 25 # where W&B's CPU goes

``--profile N`` first runs each set once more under a sampler (``cpu_sampler.py``) and prints
the CPU of each thread and the N functions that took most, while the backends open (the first
set that uses an SDK imports it then), while they write, and while they close.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid

from cpu_sampler import CpuSampler

from tracelet.bus import CHUNK as FRAME  # groups per frame, as the bus ships them
from tracelet.wire import decode_events, encode_events

NAMES = ("train/loss", "train/abs", "train/scaled", "epoch")  # what the core benchmark's fit logs
TARGETS = {
    "journal": "tracelet.backends.journal:JournalBackend",
    "mlflow": "tracelet.backends.mlflow:MLflowBackend",
    "wandb": "tracelet.backends.wandb:WandbBackend",
    "clearml": "tracelet.backends.clearml:ClearMLBackend",
}


def _frames(steps: int) -> list[bytes]:
    from tracelet.events import Metrics

    started = time.time()
    groups = [
        Metrics(NAMES, (0.5 + step * 1e-4, 0.25, 0.125, 0.0), step, started + step * 1e-3)
        for step in range(steps)
    ]
    # as the bus's sender encodes them
    return [encode_events(groups[i : i + FRAME]) for i in range(0, steps, FRAME)]


def _one_run(backends: list[str], frames: list[bytes], sampler: CpuSampler | None = None) -> float:
    """CPU seconds of this process (all threads) and its children (W&B's service) from the first
    frame until every backend wrote it all."""
    from tracelet.backends.base import BackendSpec, RunInfo
    from tracelet.dispatcher import Dispatcher
    from tracelet.events import RunEnd
    from tracelet.wire import Control, Init

    answers = {"flush": "flushed", "shutdown": "closed"}  # request -> the kind of its reply
    answered = {kind: threading.Event() for kind in answers.values()}

    def reply(message) -> None:
        if message.kind in answered:
            answered[message.kind].set()

    def wait_for(request: str, token: int, items: list) -> None:
        done = answered[answers[request]]
        done.clear()
        dispatcher.handle([*items, Control(request, token, time.time() + 120)])
        if not done.wait(120):
            raise RuntimeError(f"the backends did not answer {request} in time")

    os.chdir(tempfile.mkdtemp(prefix="tracelet-writer-"))  # a fresh store: a run's first points
    dispatcher = Dispatcher(reply)
    settings = {"track_git": False, "track_env": False, "journal_dir": "journal"}
    run = RunInfo(uuid.uuid4().hex, "bench", "writer", None, None, time.time(), settings)
    specs = [BackendSpec(name, TARGETS[name]) for name in backends]
    mark = sampler.mark if sampler else lambda phase: None
    mark("opening")
    dispatcher.handle([Control("init", 0, 0.0, Init(run, specs, 10_000_000))])
    wait_for("flush", 1, [])  # opened: MLflow's import and store creation are not counted
    mark("writing")
    cpu = _cpu()
    for frame in frames:
        dispatcher.handle(decode_events(frame))
    wait_for("flush", 2, [])
    cpu = _cpu() - cpu
    mark("closing")
    wait_for("shutdown", 3, [RunEnd("FINISHED")])
    return cpu


def _cpu() -> float:
    import psutil

    children = psutil.Process().children(recursive=True)
    return time.process_time() + sum(sum(child.cpu_times()[:2]) for child in children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="logging steps (4 points each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sets", nargs="+", default=["journal", "mlflow", "journal,mlflow"])
    parser.add_argument("--profile", type=int, metavar="N", help="where the CPU goes: the top N functions")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", CLEARML_OFFLINE_MODE="1")
    frames = _frames(args.steps)
    points = args.steps * len(NAMES)
    print(
        f"writer CPU per metric point, {points} points in frames of {FRAME} groups; median of {args.repeats}"
    )
    for backend_set in args.sets:
        names = backend_set.split(",")
        if args.profile:
            with CpuSampler() as sampler:
                _one_run(names, frames, sampler)
            print(f"{'+'.join(names)}: CPU under a sampler (one more run, not timed)")
            print(sampler.report(args.profile))
        runs = [_one_run(names, frames) / points * 1e6 for _ in range(args.repeats)]
        print(
            f"{'+'.join(names):<16} {statistics.median(runs):6.1f} us/point   runs: "
            + " ".join(f"{r:.1f}" for r in runs)
        )


if __name__ == "__main__":
    main()
