"""Rendering the metrics: the Prometheus text format (0.0.4) as TorchServe writes it, or
OpenMetrics when the scraper asks for it.

prometheus-client's text writer appends `_total` to every counter; TorchServe's counters
`Requests2XX` and `ts_*_latency_microseconds` have no such suffix, and dashboards query them by
those names, so the text format is written here (the format is small). OpenMetrics requires
the suffix on every counter, and is written by prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from serving.metrics.instruments import LegacyCounter

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def negotiate(accept: str | None) -> str:
    """OpenMetrics if the scraper lists it (Prometheus does), else the text format."""
    if accept and "application/openmetrics-text" in accept:
        return OPENMETRICS_TYPE
    return TEXT_TYPE


def render(collector: Collector, content_type: str, names: Iterable[str] = ()) -> bytes:
    wanted = frozenset(names)
    source: Collector = _Filtered(collector, wanted) if wanted else collector
    if content_type == OPENMETRICS_TYPE:
        return bytes(openmetrics_latest(source))  # type: ignore[no-untyped-call]
    return render_text(source.collect())


class _Filtered(Collector):
    """TorchServe's `?name[]=...`: only the families named (by family or sample name)."""

    def __init__(self, inner: Collector, names: frozenset[str]) -> None:
        self.inner = inner
        self.names = names

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            exposed = {metric.name, f"{metric.name}_total"} | {s.name for s in metric.samples}
            if exposed & self.names:
                yield metric


def render_text(metrics: Iterable[Metric]) -> bytes:
    out: list[str] = []
    for metric in metrics:
        name, kind = metric.name, metric.type
        strip = ""
        if isinstance(metric, LegacyCounter):
            strip = "_total"  # samples carry it for OpenMetrics; TorchServe shows none
        elif kind == "counter":
            name += "_total"
        elif kind == "info":
            name, kind = f"{name}_info", "gauge"
        elif kind == "unknown":
            kind = "untyped"
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            sample_name = sample.name.removesuffix(strip) if strip else sample.name
            if sample.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                out.append(f"{sample_name}{{{labels}}} {_number(sample.value)}\n")
            else:
                out.append(f"{sample_name} {_number(sample.value)}\n")
    return "".join(out).encode("utf-8")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]
