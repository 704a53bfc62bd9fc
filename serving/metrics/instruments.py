"""Counters, gauges and histograms cheap enough for the request path.

prometheus-client's own metrics take a lock on every update; everything that updates these
runs on the gateway's one event loop, so an update here is a float addition on a child bound
to its labels once (when a model version is registered), and the families are turned into
prometheus-client `Metric`s only when `/metrics` is scraped.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.metrics_core import Metric

Labels = tuple[str, ...]

# Seconds: request latency, queue wait and inference time, from 0.5 ms to 2 minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# What prometheus-client uses for histograms; handler metrics of type HISTOGRAM get these.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0)


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # `le` is inclusive: the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


Child = CounterChild | GaugeChild | HistogramChild


class Family:
    """One metric name with its label names and a child per label-value tuple."""

    def __init__(self, name: str, documentation: str, kind: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"unknown metric kind {kind!r}")
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        self.children: dict[Labels, Child] = {}

    def labels(self, *values: str) -> Child:
        """The child for these label values, created on first use (not on the hot path: bind
        it once and keep it)."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, "
                                 f"got {len(values)}")
            child = self._new_child()
            self.children[values] = child
        return child

    def counter(self, *values: str) -> CounterChild:
        child = self.labels(*values)
        assert isinstance(child, CounterChild)
        return child

    def gauge(self, *values: str) -> GaugeChild:
        child = self.labels(*values)
        assert isinstance(child, GaugeChild)
        return child

    def histogram(self, *values: str) -> HistogramChild:
        child = self.labels(*values)
        assert isinstance(child, HistogramChild)
        return child

    def remove(self, *values: str) -> None:
        self.children.pop(values, None)

    def _new_child(self) -> Child:
        if self.kind == "counter":
            return CounterChild()
        if self.kind == "gauge":
            return GaugeChild()
        return HistogramChild(self.buckets)

    def collect(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        names = self.labelnames
        for values, child in list(self.children.items()):
            labels = dict(zip(names, values, strict=True))
            if isinstance(child, CounterChild):
                metric.add_sample(f"{self.name}_total", labels, child.value)
            elif isinstance(child, GaugeChild):
                metric.add_sample(self.name, labels, child.value)
            else:
                add_histogram_samples(metric, self.name, labels, child)
        return metric


def add_histogram_samples(metric: Metric, name: str, labels: dict[str, str],
                          child: HistogramChild) -> None:
    cumulative = 0
    for bound, count in zip((*child.bounds, math.inf), child.counts, strict=True):
        cumulative += count
        metric.add_sample(f"{name}_bucket", {**labels, "le": _le(bound)}, float(cumulative))
    metric.add_sample(f"{name}_count", labels, float(cumulative))
    metric.add_sample(f"{name}_sum", labels, child.sum)


def _le(bound: float) -> str:
    if bound == math.inf:
        return "+Inf"
    return repr(float(bound))


class LegacyCounter(Metric):
    """A counter that TorchServe exposes without the `_total` suffix in the Prometheus text
    format (`Requests2XX`, `ts_queue_latency_microseconds`, handler counters); OpenMetrics
    requires the suffix, so there it has one."""


class GaugeCallback:
    """A gauge read when scraped (queue depth, workers by state): nothing on the hot path."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.read = read

    def collect(self) -> Metric:
        metric = Metric(self.name, self.documentation, "gauge")
        for values, value in self.read():
            metric.add_sample(self.name, dict(zip(self.labelnames, values, strict=True)),
                              float(value))
        return metric
