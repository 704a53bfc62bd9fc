"""Every metric the server declares, once: TorchServe 0.12's names and this server's own.

TorchServe's frontend metrics keep its names, types and labels (`ts_inference_requests_total`,
`ts_queue_latency_microseconds`, `Requests2XX`, `QueueTime`, ...) so dashboards and autoscalers
written for it keep working; `serving_*` metrics add what TorchServe lacks: histograms per
model version, queue depth, in-flight requests, workers by state, failures by reason.

The request path calls a `ModelMetrics` bound to one model version when it was registered:
each call is a few float additions on children whose labels were resolved then.
"""

from __future__ import annotations

import socket
from bisect import bisect_left as _bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.errors import http_status
from serving.metrics.handler import HandlerMetricStore
from serving.metrics.instruments import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS,
    CounterChild,
    Family,
    GaugeCallback,
    Labels,
    LegacyCounter,
)

# TorchServe's frontend metrics (its ts/configs/metrics.yaml, `ts_metrics:`).
TS_FRONTEND_METRICS = frozenset({
    "Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
    "ts_inference_latency_microseconds", "ts_queue_latency_microseconds", "QueueTime",
    "WorkerThreadTime", "WorkerLoadTime", "CPUUtilization", "MemoryUsed", "MemoryAvailable",
    "MemoryUtilization", "DiskUsage", "DiskUtilization", "DiskAvailable",
    "GPUMemoryUtilization", "GPUMemoryUsed", "GPUUtilization",
})
# Their units in TorchServe's log lines (`Name.Unit:value|...`).
TS_UNITS = {
    "Requests2XX": "Count", "Requests4XX": "Count", "Requests5XX": "Count",
    "ts_inference_requests": "Count", "ts_inference_latency_microseconds": "Microseconds",
    "ts_queue_latency_microseconds": "Microseconds", "QueueTime": "Milliseconds",
    "WorkerThreadTime": "Milliseconds", "WorkerLoadTime": "Milliseconds",
    "CPUUtilization": "Percent", "MemoryUsed": "Megabytes", "MemoryAvailable": "Megabytes",
    "MemoryUtilization": "Percent", "DiskUsage": "Gigabytes", "DiskUtilization": "Percent",
    "DiskAvailable": "Gigabytes", "GPUMemoryUtilization": "Percent",
    "GPUMemoryUsed": "Megabytes", "GPUUtilization": "Percent",
}
# Why a request that reached a model version got no answer from its handler.
FAILURE_REASONS = ("queue_full", "queue_timeout", "response_timeout", "handler_error",
                   "worker_died", "client_gone", "unavailable", "internal")
MODEL_LABELS = ("model", "version")


class ServerMetrics(Collector):
    """The server's metric families; a prometheus-client collector over all of them."""

    def __init__(self, enabled_ts: Iterable[str] = TS_FRONTEND_METRICS,
                 hostname: str | None = None,
                 declared_handler_metrics: dict[str, str] | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self.enabled_ts = frozenset(enabled_ts)
        self._families: list[Family] = []
        self._legacy: set[str] = set()
        self._callbacks: list[GaugeCallback] = []
        self._collectors: list[Callable[[], Iterable[Metric]]] = []
        self._info: list[tuple[str, Callable[[], Iterable[tuple[Labels, dict[str, str]]]]]] = []
        host = ("Level", "Hostname")
        ts_model = ("model_name", "model_version", "hostname")
        f = self._family
        # TorchServe's names.
        self.ts_requests = f("ts_inference_requests", "Inference requests received "
                             "(TorchServe's ts_inference_requests_total)", "counter", ts_model)
        self.ts_latency = f("ts_inference_latency_microseconds", "Cumulative time requests "
                            "spent from arrival to answer, microseconds", "counter", ts_model,
                            legacy=True)
        self.ts_queue_latency = f("ts_queue_latency_microseconds", "Cumulative time requests "
                                  "waited in the queue, microseconds", "counter", ts_model,
                                  legacy=True)
        self.requests_by_class = {
            cls: f(f"Requests{cls}XX", f"HTTP responses with a {cls}xx status", "counter",
                   host, legacy=True) for cls in (2, 4, 5)}
        self.queue_time = f("QueueTime", "Time the last dispatched request waited in the "
                            "queue, milliseconds", "gauge", host)
        self.worker_thread_time = f("WorkerThreadTime", "Time of the last batch spent outside "
                                    "the handler (gateway, socket), milliseconds", "gauge", host)
        self.worker_load_time = f("WorkerLoadTime", "Time a worker took to start and load its "
                                  "model, milliseconds", "gauge", ("WorkerName", *host))
        # This server's own.
        self.requests = f("serving_requests", "Inference requests answered by a model "
                          "version, by final status", "counter", (*MODEL_LABELS, "status"))
        self.failures = f("serving_request_failures", "Requests not answered by the handler, "
                          "by reason", "counter", (*MODEL_LABELS, "reason"))
        self.latency = f("serving_request_duration_seconds", "Time from a request's arrival in "
                         "the model's queue to its answer", "histogram", MODEL_LABELS,
                         LATENCY_BUCKETS)
        self.queue_wait = f("serving_queue_wait_seconds", "Time a request waited for a worker "
                            "to start its batch (in the queue or a busy worker's socket)",
                            "histogram", MODEL_LABELS, LATENCY_BUCKETS)
        self.inference = f("serving_inference_duration_seconds", "Time from a batch starting on "
                           "a worker to its answers", "histogram", MODEL_LABELS,
                           LATENCY_BUCKETS)
        self.batch_size = f("serving_batch_size", "Requests per batch sent to a worker",
                            "histogram", MODEL_LABELS, BATCH_SIZE_BUCKETS)
        # What handlers record; a handler may not take one of the server's own names.
        reserved = {fam.name for fam in self._families} | set(TS_FRONTEND_METRICS) | {
            "serving_queue_depth", "serving_requests_in_flight", "serving_workers",
            "serving_model"}
        self.handlers = HandlerMetricStore(self.hostname, reserved, declared_handler_metrics)
        self._collectors.append(self.handlers.collect)

    def _family(self, name: str, doc: str, kind: str, labels: tuple[str, ...],
                buckets: tuple[float, ...] = (), legacy: bool = False) -> Family:
        family = Family(name, doc, kind, labels, buckets=buckets or LATENCY_BUCKETS)
        self._families.append(family)
        if legacy:
            self._legacy.add(name)
        return family

    def ts_enabled(self, name: str) -> bool:
        return name in self.enabled_ts

    # -- what routing registers ---------------------------------------------------------
    def add_gauge(self, name: str, documentation: str, labelnames: tuple[str, ...],
                  read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """A gauge read when scraped (queue depth, workers by state)."""
        self._callbacks.append(GaugeCallback(name, documentation, labelnames, read))

    def add_info(self, name: str, read: Callable[[], Iterable[tuple[Labels, dict[str, str]]]]
                 ) -> None:
        """An info metric (`<name>_info`, value 1) whose labels are read when scraped."""
        self._info.append((name, read))

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Metrics made elsewhere (handler metrics, system metrics)."""
        self._collectors.append(collect)

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def forget_model(self, name: str, version: str) -> None:
        """A version was unregistered: its series stop being exported."""
        for family in self._families:
            labels = family.labelnames
            if "model" in labels:
                for key in [k for k in family.children
                            if k[labels.index("model")] == name
                            and k[labels.index("version")] == version]:
                    del family.children[key]
            elif "model_name" in labels:
                for key in [k for k in family.children
                            if k[labels.index("model_name")] == name
                            and k[labels.index("model_version")] == version]:
                    del family.children[key]

    def http_status(self, status: int) -> CounterChild:
        """The Requests{2,4,5}XX child a response of `status` counts in (bind per class)."""
        cls = status // 100
        name = f"Requests{cls}XX"
        if cls not in self.requests_by_class or not self.ts_enabled(name):
            return CounterChild()  # 1xx/3xx: TorchServe counts neither
        return self.requests_by_class[cls].counter("Host", self.hostname)

    def worker_loaded(self, worker_name: str, seconds: float) -> None:
        if self.ts_enabled("WorkerLoadTime"):
            self.worker_load_time.gauge(worker_name, "Host", self.hostname).set(
                round(seconds * 1000))

    def worker_gone(self, worker_name: str) -> None:
        self.worker_load_time.remove(worker_name, "Host", self.hostname)

    # -- exposition ---------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            if family.name.startswith("serving_") or self.ts_enabled(_ts_name(family)):
                metric = family.collect()
                if family.name in self._legacy:
                    legacy = LegacyCounter(metric.name, metric.documentation, metric.type)
                    legacy.samples = metric.samples
                    metric = legacy
                yield metric
        for callback in self._callbacks:
            yield callback.collect()
        for name, read in self._info:
            info = InfoMetricFamily(name, "What each model version runs: its handler, device "
                                    "and optimisation pipeline", labels=MODEL_LABELS)
            for values, fields in read():
                info.add_metric(list(values), fields)
            yield info
        for collect in self._collectors:
            yield from collect()


def _ts_name(family: Family) -> str:
    return "ts_inference_requests_total" if family.name == "ts_inference_requests" \
        else family.name


@dataclass(slots=True)
class _Disabled:
    """Stands in for a TorchServe metric that metrics.yaml leaves out: the request path adds
    to and sets its `value` as on a real child, and nothing exports it."""

    value: float = 0.0


class ModelMetrics:
    """One model version's children, bound once; the calls routing makes per request."""

    __slots__ = (
        "_batch_size",
        "_failures",
        "_inference",
        "_key",
        "_latency",
        "_queue_time",
        "_queue_wait",
        "_server",
        "_status",
        "_thread_time",
        "_ts_latency",
        "_ts_queue",
        "_ts_requests",
    )

    def __init__(self, server: ServerMetrics, name: str, version: str) -> None:
        self._server = server
        self._key = (name, version)
        ts = (name, version, server.hostname)
        host = ("Host", server.hostname)
        on = server.ts_enabled
        self._ts_requests = server.ts_requests.counter(*ts) \
            if on("ts_inference_requests_total") else _Disabled()
        self._ts_latency = server.ts_latency.counter(*ts) \
            if on("ts_inference_latency_microseconds") else _Disabled()
        self._ts_queue = server.ts_queue_latency.counter(*ts) \
            if on("ts_queue_latency_microseconds") else _Disabled()
        self._queue_time = server.queue_time.gauge(*host) if on("QueueTime") else _Disabled()
        self._thread_time = server.worker_thread_time.gauge(*host) \
            if on("WorkerThreadTime") else _Disabled()
        self._latency = server.latency.histogram(name, version)
        self._queue_wait = server.queue_wait.histogram(name, version)
        self._inference = server.inference.histogram(name, version)
        self._batch_size = server.batch_size.histogram(name, version)
        self._status: dict[int, CounterChild] = {
            200: server.requests.counter(name, version, "200")}
        self._failures = {reason: server.failures.counter(name, version, reason)
                          for reason in FAILURE_REASONS}

    def received(self) -> None:
        """A request reached the model version (answered or not)."""
        self._ts_requests.value += 1

    # The updates are written out in the calls below (a counter's `value +=`, a gauge's
    # `value =`, a histogram's observe): one Python call less per update, and these run for
    # every request. CounterChild.inc, GaugeChild.set and HistogramChild.observe are the
    # reference.

    def dispatched(self, waited: float) -> None:
        """A request left the queue for a worker after `waited` seconds."""
        wait = self._queue_wait
        wait.counts[_bisect(wait.bounds, waited)] += 1
        wait.sum += waited
        self._ts_queue.value += waited * 1e6
        self._queue_time.value = waited * 1000

    def batch_done(self, size: int, seconds: float) -> None:
        """A batch of `size` was answered `seconds` after it was handed to a worker."""
        sizes = self._batch_size
        sizes.counts[_bisect(sizes.bounds, size)] += 1
        sizes.sum += size
        inference = self._inference
        inference.counts[_bisect(inference.bounds, seconds)] += 1
        inference.sum += seconds

    def worker_result(self, meta: dict[str, Any], seconds: float) -> None:
        """A worker's RESULT: its own time on the batch (what the round trip took beyond it
        is TorchServe's WorkerThreadTime)."""
        spent = meta.get("t")
        if type(spent) is float:
            self._thread_time.value = max(0.0, seconds - spent) * 1000

    def handler_metrics(self, updates: Any) -> None:
        """A worker's METRICS: what its handler recorded since it last sent them."""
        if updates:
            self._server.handlers.record(updates)

    def answered(self, status: int, seconds: float) -> None:
        """A request got its final answer, `seconds` after it arrived."""
        child = self._status.get(status)
        if child is None:
            child = self._status[status] = self._server.requests.counter(
                *self._key, str(http_status(status)))
        child.value += 1
        latency = self._latency
        latency.counts[_bisect(latency.bounds, seconds)] += 1
        latency.sum += seconds
        self._ts_latency.value += seconds * 1e6

    def failed(self, reason: str) -> None:
        self._failures[reason].inc()



class NoMetrics(ModelMetrics):
    """What routing calls when metrics are off (`enable_metrics_api=false`): nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def received(self) -> None:
        pass

    def dispatched(self, waited: float) -> None:
        pass

    def batch_done(self, size: int, seconds: float) -> None:
        pass

    def worker_result(self, meta: dict[str, Any], seconds: float) -> None:
        pass

    def handler_metrics(self, updates: Any) -> None:
        pass

    def answered(self, status: int, seconds: float) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass


NO_METRICS = NoMetrics()
