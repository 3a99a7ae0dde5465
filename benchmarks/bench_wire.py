"""The training side's cost of putting one frame of events on the pipe, by framing.

The bus's sender thread, in the training process, encodes each frame (500 ``Metrics`` groups
of 4 points, as a Lightning fit sends them) and writes it to the writer's pipe. This measures
that thread's CPU time per frame for the framing tracelet uses, ``multiprocessing.connection``
(``Connection.send_bytes``), against a hand-written one (a 4-byte length and the payload
through a 64 KiB buffered file, flushed per frame). A child process drains the pipe. Thread
CPU time does not move with the machine's other load as wall time does; the medians of the
rounds are printed, and their ratio.

    python benchmarks/bench_wire.py
    python benchmarks/bench_wire.py --frames 200 --rounds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable

from tracelet.bus import CHUNK as FRAME
from tracelet.events import Metrics
from tracelet.wire import connect, encode_events

NAMES = ("train/loss", "train/abs", "train/scaled", "epoch")
_HEADER = struct.Struct(">I")


def _frame(first_step: int) -> list[Metrics]:
    now = time.time()
    return [
        Metrics(NAMES, (0.5 + step * 1e-4, 0.25, 0.125, 0.0), step, now)
        for step in range(first_step, first_step + FRAME)
    ]


def _with_drain() -> tuple[int, int]:
    """A pipe whose read end a child process empties until EOF; returns (write fd, child pid)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_fd)
        while os.read(read_fd, 1 << 16):
            pass
        os._exit(0)
    os.close(read_fd)
    return write_fd, pid


def _connection(frames: list[list[Metrics]]) -> float:
    write_fd, pid = _with_drain()
    channel = connect(write_fd, readable=False)
    started = time.thread_time()
    for frame in frames:
        channel.send_bytes(encode_events(frame))
    spent = time.thread_time() - started
    channel.close()
    os.waitpid(pid, 0)
    return spent


def _hand_framed(frames: list[list[Metrics]]) -> float:
    write_fd, pid = _with_drain()
    stream = os.fdopen(write_fd, "wb", buffering=1 << 16)
    started = time.thread_time()
    for frame in frames:
        payload = encode_events(frame)
        stream.write(_HEADER.pack(len(payload)))
        stream.write(payload)
        stream.flush()
    spent = time.thread_time() - started
    stream.close()
    os.waitpid(pid, 0)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    frames = [_frame(i * FRAME) for i in range(args.frames)]
    ways: dict[str, Callable[[list[list[Metrics]]], float]] = {
        "multiprocessing.connection": _connection,
        "hand-written framing (reference)": _hand_framed,
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so both see the same minutes of the machine
        for name, way in ways.items():
            seconds[name].append(way(frames))
    points = args.frames * FRAME * len(NAMES)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        per_frame, per_point = median / args.frames * 1e6, median / points * 1e9
        print(f"{name:34s} {per_frame:8.1f} us per frame  {per_point:6.1f} ns per point")
    reference = medians["hand-written framing (reference)"]
    print(f"ratio connection / hand-written: {medians['multiprocessing.connection'] / reference:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
