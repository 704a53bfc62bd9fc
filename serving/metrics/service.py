"""The metrics of one server process: the catalogue, the system sampler, the log-mode writer.

Built once at start-up from the settings (`enable_metrics_api=false`: none of it exists and
routing records nothing). `metrics_mode=log` (or `legacy`) also writes TorchServe's
metric log lines every `metric_time_interval` to `ts_metrics.log` (frontend and system
metrics) and `model_metrics.log` (handler metrics) under METRICS_LOCATION (else LOG_LOCATION,
else `logs/`): counters as what they added since the last lines, gauges as they are, so
summing a counter's lines gives TorchServe's count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from serving.metrics.catalog import TS_UNITS, ServerMetrics
from serving.metrics.config import MetricsConfig, load_metrics_config
from serving.metrics.instruments import LegacyCounter
from serving.metrics.system import SystemMetrics
from serving.settings import Settings

log = logging.getLogger(__name__)


class MetricsService:
    def __init__(self, settings: Settings, config: MetricsConfig) -> None:
        self.settings = settings
        self.config = config
        self.server = ServerMetrics(config.frontend,
                                    declared_handler_metrics=config.model)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.server)
        ProcessCollector(registry=self.registry)  # the gateway's own CPU and memory
        self.system = SystemMetrics(self.server.hostname, config.frontend)
        if not settings.disable_system_metrics:
            self.server.add_collector(self.system.collect)
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: MetricLogWriter | None = None
        # Run before each round of log lines: the workers send the handler metrics they hold.
        self.before_log: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def create(cls, settings: Settings) -> MetricsService | None:
        if not settings.enable_metrics_api:
            return None
        return cls(settings, load_metrics_config(settings.metrics_config))

    def start(self) -> None:
        s = self.settings
        if not s.disable_system_metrics:
            self._tasks.append(asyncio.create_task(self.system.run(s.metric_time_interval)))
        if s.metrics_mode in ("log", "legacy"):
            folder = s.metrics_location or s.log_location or Path("logs")
            self._writer = MetricLogWriter(folder, self.server, s)
            self._tasks.append(asyncio.create_task(self._write_logs(s.metric_time_interval)))

    async def _write_logs(self, interval: float) -> None:
        assert self._writer is not None
        while True:
            await asyncio.sleep(interval)
            try:
                if self.before_log is not None:
                    await self.before_log()
                self._writer.write()
            except Exception:
                log.exception("writing the metric logs failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self._writer.write()  # what was counted since the last lines
            self._writer.close()


class MetricLogWriter:
    """TorchServe's log-mode lines: `Name.Unit:value|#Dim:val,Dim:val|#hostname:h,timestamp:t`."""

    def __init__(self, folder: Path, server: ServerMetrics, settings: Settings) -> None:
        from serving.logconfig import rotating

        folder.mkdir(parents=True, exist_ok=True)
        self.server = server
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.frontend = logging.getLogger("serving.metrics.ts_metrics")
        self.model = logging.getLogger("serving.metrics.model_metrics")
        self._handlers = []
        for logger, name in ((self.frontend, "ts_metrics.log"),
                             (self.model, "model_metrics.log")):
            handler = rotating(folder / name, settings, "%(asctime)s %(message)s")
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
            self._handlers.append((logger, handler))

    def write(self) -> None:
        now = int(time.time())
        handler_names = {m.name for m in self.server.handlers.collect()}
        for metric in self.server.collect():
            target = self.model if metric.name in handler_names else self.frontend
            for line in self._lines(metric, now):
                target.info("%s", line)

    def _lines(self, metric: Metric, now: int) -> Iterable[str]:
        if metric.type not in ("counter", "gauge") or metric.name.startswith("serving_"):
            return  # TorchServe's metrics and the handlers'; the rest is on /metrics
        unit = TS_UNITS.get(metric.name) or _unit(metric.documentation)
        name = metric.name
        if metric.type == "counter" and not isinstance(metric, LegacyCounter):
            name += "_total"  # ts_inference_requests_total
        for sample in metric.samples:
            labels = {k: v for k, v in sample.labels.items() if k.lower() != "hostname"}
            value = sample.value
            if metric.type == "counter":
                key = (sample.name, tuple(sorted(labels.items())))
                value, self._last[key] = value - self._last.get(key, 0.0), value
                if value == 0:
                    continue
            dims = ",".join(f"{k}:{v}" for k, v in labels.items())
            yield (f"{name}.{unit}:{value:g}|#{dims}|#hostname:{self.server.hostname},"
                   f"timestamp:{now}")

    def close(self) -> None:
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
            handler.close()


def _unit(documentation: str) -> str:
    """The unit a metric's help text ends with in parentheses, else Count."""
    if documentation.endswith(")") and "(" in documentation:
        return documentation[documentation.rindex("(") + 1:-1].replace(" ", "") or "Count"
    return "Count"
