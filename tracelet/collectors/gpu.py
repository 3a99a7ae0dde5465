"""GPU readings through NVML (``nvidia-ml-py``), at the ``pynvml`` function boundary.

No GPU, no driver, NVML failing at init or in the middle of a run are normal cases: the
readings are simply absent, with one debug-level message, never a warning or an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class NvmlReader:
    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as err:  # NVMLError_LibraryNotFound etc.: a machine without (usable) GPUs
            log.debug("no GPU metrics: NVML unavailable (%s)", err)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def read(self, pids: Iterable[int]) -> dict[str, float]:
        """``gpu/<i>/...`` readings for every GPU; ``pids`` are the training process and its children."""
        if self._nvml is None:
            return {}
        nvml = self._nvml
        ours = set(pids)
        values: dict[str, float] = {}
        try:
            for index, handle in enumerate(self._handles):
                prefix = f"gpu/{index}/"
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                values[prefix + "utilization_percent"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                values[prefix + "memory_used_bytes"] = float(memory.used)
                values[prefix + "memory_total_bytes"] = float(memory.total)
                values[prefix + "memory_percent"] = (
                    100.0 * memory.used / memory.total if memory.total else 0.0
                )
                values[prefix + "temperature_c"] = float(
                    nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                )
                values[prefix + "power_w"] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
                values[prefix + "used_by_process"] = float(_uses(nvml, handle, ours))
        except Exception as err:  # the driver went away mid-run: stop asking, quietly
            log.debug("GPU metrics stopped: NVML failed (%s)", err)
            self.close()
            return {}
        return values

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as err:  # already gone; nothing to release
                log.debug("nvmlShutdown failed (%s)", err)
            self._nvml = None


def _uses(nvml: Any, handle: Any, pids: set[int]) -> bool:
    try:
        running = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # not supported on this GPU/driver: unknown counts as not ours
        return False
    return any(process.pid in pids for process in running)
