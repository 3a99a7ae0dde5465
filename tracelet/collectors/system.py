"""The system collector: CPU, memory, disk, network, the training process and its children,
and GPUs, sampled on a background thread every ``metrics_interval`` seconds.

Metrics are named ``system/...`` (see docs/system-metrics.md); the step is the sample index
and the timestamp wall-clock, so they never touch the trainer-step axis. The thread waits on
an Event, so ``stop`` returns within one sample's time whatever the interval.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from tracelet.collectors.gpu import NvmlReader

if TYPE_CHECKING:
    from tracelet.sink import Sink

log = logging.getLogger(__name__)

PREFIX = "system/"


class SystemSampler:
    """One sample of everything; rates (bytes/s) are computed against the previous sample."""

    def __init__(self, pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(pid or os.getpid())
        self._children: dict[int, Any] = {}
        self._gpus = NvmlReader()
        self._last: tuple[float, Any, Any] | None = None
        psutil.cpu_percent(interval=None)  # prime: the first reading is measured from here
        self._process.cpu_percent(interval=None)

    def sample(self) -> dict[str, float]:
        psutil = self._psutil
        now = time.monotonic()
        values: dict[str, float] = {"cpu_percent": psutil.cpu_percent(interval=None)}
        memory = psutil.virtual_memory()
        values["memory_used_bytes"] = float(memory.used)
        values["memory_available_bytes"] = float(memory.available)
        values["memory_percent"] = float(memory.percent)
        disk, net = _io_counters(psutil)
        if self._last is not None:
            elapsed = max(now - self._last[0], 1e-6)
            last_disk, last_net = self._last[1], self._last[2]
            if disk is not None and last_disk is not None:
                values["disk_read_bytes_per_s"] = (disk.read_bytes - last_disk.read_bytes) / elapsed
                values["disk_write_bytes_per_s"] = (disk.write_bytes - last_disk.write_bytes) / elapsed
            if net is not None and last_net is not None:
                values["network_sent_bytes_per_s"] = (net.bytes_sent - last_net.bytes_sent) / elapsed
                values["network_recv_bytes_per_s"] = (net.bytes_recv - last_net.bytes_recv) / elapsed
        self._last = (now, disk, net)
        pids = self._process_values(values)
        values.update(self._gpus.read(pids))
        return values

    def _process_values(self, values: dict[str, float]) -> list[int]:
        """CPU % and RSS of the training process plus its children (e.g. DataLoader workers)."""
        psutil = self._psutil
        with self._process.oneshot():
            cpu = self._process.cpu_percent(interval=None)
            rss = self._process.memory_info().rss
        alive: dict[int, Any] = {}
        try:
            children = self._process.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            known = self._children.get(child.pid, child)
            try:
                with known.oneshot():
                    cpu += known.cpu_percent(interval=None)  # 0.0 on a child's first sample
                    rss += known.memory_info().rss
                alive[child.pid] = known
            except psutil.Error:  # the child ended between listing and reading
                continue
        self._children = alive
        values["process_cpu_percent"] = cpu
        values["process_rss_bytes"] = float(rss)
        values["process_children"] = float(len(alive))
        return [self._process.pid, *alive]

    def close(self) -> None:
        self._gpus.close()


def _io_counters(psutil: Any) -> tuple[Any, Any]:
    try:
        disk = psutil.disk_io_counters()
    except Exception:  # containers without /proc/diskstats
        disk = None
    try:
        net = psutil.net_io_counters()
    except Exception:  # same for /proc/net/dev
        net = None
    return disk, net


FIRST_SAMPLE_AFTER_S = 1.0


class SystemCollector:
    """Samples a second after start and then every ``interval`` seconds until ``stop``."""

    def __init__(self, sink: Sink, interval: float) -> None:
        self._sink = sink
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracelet-system", daemon=True)
        self._sampler: SystemSampler | None = None
        self.samples = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._sampler = SystemSampler()
            # CPU shares are measured since the previous reading: the first one needs a period
            if self._stopped.wait(min(FIRST_SAMPLE_AFTER_S, self._interval)):
                return
            while not self._stopped.is_set():
                self._emit(self._sampler.sample())
                self._stopped.wait(self._interval)
        except Exception as err:  # psutil failing on an exotic platform must not surface
            log.warning("system metrics stopped: %s: %s", type(err).__name__, err)
        finally:
            if self._sampler is not None:
                self._sampler.close()

    def _emit(self, values: dict[str, float]) -> None:
        self._sink.metrics({PREFIX + k: v for k, v in values.items()}, self.samples, time.time())
        self.samples += 1
