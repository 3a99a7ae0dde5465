"""System metrics: real psutil sampling into a real MLflow store, GPUs through a fake NVML
at the pynvml function boundary (there is no GPU here)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import psutil
import pynvml
import pytest
from helpers import assert_same_series, mlflow_series, run_tiny_job, wandb_series
from mlflow.tracking import MlflowClient
from test_lightning import _oracle

import tracelet
from tracelet.collectors.system import SystemCollector, SystemSampler


class FakeNvml:
    """NVML with ``count`` GPUs; ``fail_at_init`` / ``fail_after`` reads raise NVMLError."""

    def __init__(self, count: int, fail_at_init: bool = False, fail_after: int | None = None, pid: int = 0):
        self.count, self.fail_at_init, self.fail_after, self.pid = count, fail_at_init, fail_after, pid
        self.reads = 0
        self.shutdowns = 0

    def install(self, monkeypatch):
        for name in (
            "nvmlInit",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlShutdown",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self):
        if self.fail_at_init:
            raise pynvml.NVMLError_LibraryNotFound()

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUtilizationRates(self, handle):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise pynvml.NVMLError_GpuIsLost()
        return SimpleNamespace(gpu=40 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=(handle + 1) * 2**30, total=16 * 2**30, free=0)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 60 + handle

    def nvmlDeviceGetPowerUsage(self, handle):
        return 150_500 + handle * 1000  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=self.pid)] if handle == 0 else [SimpleNamespace(pid=1)]

    def nvmlShutdown(self):
        self.shutdowns += 1


@pytest.mark.parametrize("count", [0, 1, 2])
def test_gpu_readings_for_each_gpu(monkeypatch, count):
    FakeNvml(count, pid=os.getpid()).install(monkeypatch)
    values = SystemSampler().sample()
    gpu = {k: v for k, v in values.items() if k.startswith("gpu/")}
    assert len(gpu) == 7 * count
    if count:
        assert gpu["gpu/0/utilization_percent"] == 40.0 and gpu["gpu/0/memory_used_bytes"] == 2**30
        assert gpu["gpu/0/memory_percent"] == 6.25 and gpu["gpu/0/temperature_c"] == 60.0
        assert gpu["gpu/0/power_w"] == 150.5 and gpu["gpu/0/used_by_process"] == 1.0
    if count == 2:
        assert gpu["gpu/1/utilization_percent"] == 41.0 and gpu["gpu/1/used_by_process"] == 0.0


def test_nvml_failing_at_init_means_no_gpu_metrics_and_no_warning(monkeypatch, caplog):
    FakeNvml(2, fail_at_init=True).install(monkeypatch)
    values = SystemSampler().sample()
    assert not any(k.startswith("gpu/") for k in values) and "cpu_percent" in values
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_nvml_failing_mid_run_drops_gpu_metrics_quietly_and_keeps_the_rest(monkeypatch, caplog):
    fake = FakeNvml(2, fail_after=3)
    fake.install(monkeypatch)
    sampler = SystemSampler()
    first, second, third = sampler.sample(), sampler.sample(), sampler.sample()
    assert "gpu/1/power_w" in first
    assert not any(k.startswith("gpu/") for k in second) and "memory_percent" in second
    assert not any(k.startswith("gpu/") for k in third) and fake.reads == 4  # not asked again
    assert fake.shutdowns == 1
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_real_machine_has_no_nvml_and_that_is_fine():
    values = SystemSampler().sample()
    assert {
        "cpu_percent",
        "memory_used_bytes",
        "memory_available_bytes",
        "memory_percent",
        "process_cpu_percent",
        "process_rss_bytes",
        "process_children",
    } <= set(values)


def _wait_for_samples(exp, count: int, timeout: float = 30.0) -> None:
    from tracelet import api

    collector = next(c for c in api._active.collectors if isinstance(c, SystemCollector))
    deadline = time.monotonic() + timeout
    while collector.samples < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collector.samples >= count


def test_system_metrics_reach_mlflow_with_sample_steps_and_wall_clock_times(monkeypatch):
    FakeNvml(2, pid=os.getpid()).install(monkeypatch)
    started = time.time()
    exp = tracelet.start_logging(config={"track_system": True, "metrics_interval": 1})
    _wait_for_samples(exp, 3)
    report = tracelet.stop_logging()
    run_id = report.backends["mlflow"].location.run_id
    client = MlflowClient(tracking_uri=f"sqlite:///{os.path.abspath('mlflow.db')}")
    history = client.get_metric_history(run_id, "system/cpu_percent")
    steps = [m.step for m in history]
    assert steps == list(range(len(steps))) and len(steps) >= 3
    stamps = [m.timestamp / 1000 for m in history]
    assert stamps == sorted(stamps) and started - 1 <= stamps[0] <= stamps[-1] <= time.time()
    assert 0.9 <= (stamps[1] - stamps[0]) <= 2.0  # the interval
    series = mlflow_series(run_id)
    assert all(0 <= v <= 100 * psutil.cpu_count() for _, v in series["system/cpu_percent"])
    assert all(0 < v <= 100 for _, v in series["system/memory_percent"])
    assert all(v > 10 * 2**20 for _, v in series["system/process_rss_bytes"])
    assert "system/disk_read_bytes_per_s" in series and "system/network_recv_bytes_per_s" in series
    assert series["system/gpu/1/power_w"][0][1] == 151.5


def test_the_first_cpu_readings_measure_a_real_period_not_zero():
    from tracelet import api

    tracelet.start_logging(config={"track_system": True, "metrics_interval": 1})
    collector = next(c for c in api._active.collectors if isinstance(c, SystemCollector))
    deadline = time.monotonic() + 60
    while collector.samples < 1 and time.monotonic() < deadline:
        sum(range(10_000))  # this process is busy from the start
    report = tracelet.stop_logging()
    series = mlflow_series(report.backends["mlflow"].location.run_id)
    assert series["system/process_cpu_percent"][0][1] > 0
    assert series["system/cpu_percent"][0][1] > 0


def test_training_series_keep_their_axis_beside_system_metrics(tmp_path):
    expected = _oracle("lightning.pytorch", tmp_path)
    exp = tracelet.start_logging(
        backend=["mlflow", "wandb"], config={"track_system": True, "metrics_interval": 1}
    )
    run_tiny_job("lightning.pytorch", logger=False)
    _wait_for_samples(exp, 2)
    report = tracelet.stop_logging()
    sent = mlflow_series(report.backends["mlflow"].location.run_id)
    assert_same_series({k: v for k, v in sent.items() if not k.startswith("system/")}, expected)
    assert len(sent["system/cpu_percent"]) >= 2
    series, _run = wandb_series(report.backends["wandb"].location.uri)
    assert_same_series({k: v for k, v in series.items() if not k.startswith("system/")}, expected)
    assert [s for s, _ in series["system/cpu_percent"]] == list(range(len(series["system/cpu_percent"])))


def test_the_collector_thread_stops_at_once_not_at_its_next_sample():
    interval = 120.0
    exp = tracelet.start_logging(
        backend="fake_backends:Recording", config={"track_system": True, "metrics_interval": interval}
    )
    _wait_for_samples(exp, 1)
    from tracelet import api

    collector = api._active.collectors[0]
    started = time.perf_counter()
    collector.stop()
    # a collector that slept between samples would take up to the interval; any machine,
    # however busy, stops an Event-driven one well within a tenth of it
    assert time.perf_counter() - started < interval / 10
    assert not collector._thread.is_alive()


def test_track_system_off_starts_no_collector():
    tracelet.start_logging(backend="fake_backends:Recording", config={"track_system": False})
    from tracelet import api

    assert api._active.collectors == ()
