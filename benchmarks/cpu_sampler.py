"""Where a process's CPU goes, thread by thread and function by function.

Every ``interval`` seconds the sampler reads each Python thread's CPU clock and charges what the
thread used since its last reading to every function on its stack at that moment (once per
sample, so a function's figure includes its callees'). A thread's CPU clock counts only time
on a CPU: a waiting thread costs nothing. The stack is the one at the end of each interval,
so with a 2 ms interval calls much shorter than that are charged to their neighbours; the
totals per thread are exact. Frames every thread has (``threading``'s bootstrap, the import
machinery) are left out of the functions. ``mark`` starts a new phase (opening, writing, ...):
later CPU is charged under it. Only this process's Python threads are seen, not the processes
it starts (W&B's ``wandb-core``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

SKIPPED = ("threading.py:", "<frozen ")  # on every stack: they would head every list


class CpuSampler:
    def __init__(self, interval: float = 0.002) -> None:
        self._interval = interval
        self._phase = "start"
        self._phases: list[str] = [self._phase]
        self._threads: dict[str, Counter[str]] = {self._phase: Counter()}
        self._functions: dict[str, Counter[str]] = {self._phase: Counter()}
        self._clocks: dict[int, float] = {}
        self._lock = threading.Lock()  # a mark samples from its caller's thread, beside the sampler's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # what ran since the last reading belongs to the last phase

    def mark(self, phase: str) -> None:
        """Charge the CPU from now on to ``phase``."""
        with self._lock:
            self._sample_locked()  # what ran until now belongs to the phase before
            self._phases.append(phase)
            self._threads[phase] = Counter()
            self._functions[phase] = Counter()
            self._phase = phase

    def report(self, top: int) -> str:
        lines = []
        for phase in self._phases:
            threads = self._threads[phase]
            total = sum(threads.values())
            if total < 0.001:
                continue
            lines.append(f"  {phase}: {total:.2f} s of CPU in Python threads")
            lines.append("    " + ", ".join(f"{name} {cpu:.2f}" for name, cpu in threads.most_common()))
            lines.extend(f"    {cpu:6.2f} s  {name}" for name, cpu in self._functions[phase].most_common(top))
        return "\n".join(lines)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        threads, functions = self._threads[self._phase], self._functions[self._phase]
        for ident, frame in sys._current_frames().items():
            if ident == self._thread.ident:
                continue
            try:
                clock = time.clock_gettime(time.pthread_getcpuclockid(ident))
            except OSError:  # the thread ended
                continue
            used = clock - self._clocks.get(ident, clock)
            self._clocks[ident] = clock
            if used <= 0:
                continue
            threads[names.get(ident, str(ident))] += used
            seen = set()
            while frame is not None:
                code = frame.f_code
                name = f"{os.path.basename(code.co_filename)}:{code.co_name}"
                if name not in seen and not name.startswith(SKIPPED):
                    seen.add(name)
                    functions[name] += used
                frame = frame.f_back
