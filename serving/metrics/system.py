"""TorchServe's system metrics (CPU, memory, disk, GPU where present), sampled on a timer.

TorchServe samples them once a minute (`metric_time_interval`); a scrape reads the last
sample, so scraping never waits on the machine. GPUs are read through NVML when the
`pynvml` module (nvidia-ml-py) is installed; without it, or without a GPU, the GPU metrics
have no series, as in TorchServe on a CPU host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

MB = 1024**2
GB = 1024**3
# name: (unit, documentation)
HOST_METRICS = {
    "CPUUtilization": ("Percent", "CPU utilization of the host"),
    "MemoryUsed": ("Megabytes", "Memory used on the host"),
    "MemoryAvailable": ("Megabytes", "Memory available on the host"),
    "MemoryUtilization": ("Percent", "Memory utilization of the host"),
    "DiskUsage": ("Gigabytes", "Disk used on the host (the root file system)"),
    "DiskUtilization": ("Percent", "Disk utilization of the host"),
    "DiskAvailable": ("Gigabytes", "Disk available on the host"),
}
GPU_METRICS = {
    "GPUMemoryUtilization": ("Percent", "GPU memory utilization"),
    "GPUMemoryUsed": ("Megabytes", "GPU memory used"),
    "GPUUtilization": ("Percent", "GPU utilization"),
}


class SystemMetrics:
    """The last sample of the host (and GPU) metrics that metrics.yaml enables."""

    def __init__(self, hostname: str, enabled: frozenset[str], disk: str = "/") -> None:
        self.hostname = hostname
        self.enabled = enabled
        self.disk = disk
        self.host: dict[str, float] = {}
        self.gpus: list[dict[str, float]] = []
        self._nvml: Any = _nvml()
        psutil.cpu_percent(interval=None)  # primes the counter: the next call is a real figure

    def sample(self) -> None:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk)
        self.host = {
            "CPUUtilization": psutil.cpu_percent(interval=None),
            "MemoryUsed": memory.used / MB,
            "MemoryAvailable": memory.available / MB,
            "MemoryUtilization": memory.percent,
            "DiskUsage": disk.used / GB,
            "DiskUtilization": disk.percent,
            "DiskAvailable": disk.free / GB,
        }
        if self._nvml is not None:
            self.gpus = _gpu_sample(self._nvml)

    async def run(self, interval: float) -> None:
        """Sample every `interval` seconds until cancelled (off the event loop: psutil reads
        /proc, NVML talks to the driver)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.sample)
            except Exception:
                log.exception("sampling the system metrics failed; trying again in %g s",
                              interval)
            await asyncio.sleep(interval)

    def collect(self) -> Iterator[Metric]:
        for name, (unit, doc) in HOST_METRICS.items():
            if name in self.enabled:
                metric = Metric(name, f"{doc} ({unit})", "gauge")
                if name in self.host:
                    metric.add_sample(name, {"Level": "Host", "Hostname": self.hostname},
                                      self.host[name])
                yield metric
        for name, (unit, doc) in GPU_METRICS.items():
            if name in self.enabled:
                metric = Metric(name, f"{doc} ({unit})", "gauge")
                for i, gpu in enumerate(self.gpus):
                    metric.add_sample(name, {"Level": "Host", "DeviceId": str(i),
                                             "Hostname": self.hostname}, gpu[name])
                yield metric


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception:  # no driver, no device: no GPU metrics, as on a CPU host
        return None
    return pynvml


def _gpu_sample(nvml: Any) -> list[dict[str, float]]:
    gpus = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        util = 0.0
        with contextlib.suppress(Exception):  # some devices do not report utilization
            util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        gpus.append({"GPUMemoryUtilization": 100.0 * memory.used / memory.total,
                     "GPUMemoryUsed": memory.used / MB, "GPUUtilization": util})
    return gpus
