"""The text format as TorchServe writes it, OpenMetrics, histograms, and the name filter,
read back with prometheus-client's own parsers."""

from __future__ import annotations

import math

from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from serving.metrics.catalog import NO_METRICS, ServerMetrics
from serving.metrics.exposition import TEXT_TYPE, negotiate, render
from serving.metrics.instruments import Family, HistogramChild


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in parse_text(text)}


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    h = HistogramChild((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 1.5, 0.05):
        h.observe(v)
    assert h.counts == [2, 2, 1]  # le=0.1 holds 0.05 and 0.1; le=1.0 holds 0.5 and 1.0
    fam = Family("x_seconds", "doc", "histogram", ("model",), buckets=(0.1, 1.0))
    fam.histogram("m").observe(0.1)
    fam.histogram("m").observe(3.0)
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.collect().samples}
    assert samples["x_seconds_bucket", "0.1"] == 1
    assert samples["x_seconds_bucket", "1.0"] == 1
    assert samples["x_seconds_bucket", "+Inf"] == 2
    assert samples["x_seconds_count", None] == 2
    assert math.isclose(samples["x_seconds_sum", None], 3.1)


def test_torchserve_counters_have_no_total_suffix_in_the_text_format() -> None:
    server = ServerMetrics(hostname="host-a")
    model = server.model("m", "1.0")
    model.received()
    model.dispatched(0.002)
    model.answered(200, 0.004)
    server.http_status(200).inc()
    text = render(server, TEXT_TYPE).decode()
    assert '\nRequests2XX{Level="Host",Hostname="host-a"} 1.0\n' in text
    assert "# TYPE Requests2XX counter" in text
    assert 'ts_inference_requests_total{model_name="m",model_version="1.0",hostname="host-a"} ' \
           '1.0' in text
    assert 'ts_queue_latency_microseconds{model_name="m",model_version="1.0",' \
           'hostname="host-a"} 2000' in text
    assert 'serving_requests_total{model="m",version="1.0",status="200"} 1.0' in text
    parsed = families(text)
    assert parsed["Requests2XX"].type == "counter"  # type: ignore[attr-defined]


def test_openmetrics_is_valid_and_negotiated() -> None:
    server = ServerMetrics(hostname="h")
    server.model("m", "1.0").answered(503, 0.01)
    server.http_status(200).inc()
    assert negotiate("application/openmetrics-text; version=1.0.0") == OPENMETRICS
    assert negotiate("text/plain") == TEXT_TYPE and negotiate(None) == TEXT_TYPE
    text = render(server, OPENMETRICS).decode()
    assert text.endswith("# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(text)}
    # OpenMetrics requires the suffix TorchServe's text format lacks.
    assert [s.name for s in parsed["Requests2XX"].samples] == ["Requests2XX_total"]
    assert [s.value for s in parsed["serving_requests"].samples
            if s.labels.get("status") == "503"] == [1.0]


def test_label_values_are_escaped() -> None:
    server = ServerMetrics(hostname='a"b\\c\nd')
    server.http_status(404).inc()
    text = render(server, TEXT_TYPE).decode()
    [sample] = families(text)["Requests4XX"].samples  # type: ignore[attr-defined]
    assert sample.labels["Hostname"] == 'a"b\\c\nd'


def test_the_name_filter_keeps_the_named_families() -> None:
    server = ServerMetrics(hostname="h")
    server.model("m", "1.0").received()
    text = render(server, TEXT_TYPE, ["ts_inference_requests_total", "Requests5XX"]).decode()
    assert set(families(text)) == {"ts_inference_requests", "Requests5XX"}


def test_metrics_yaml_can_leave_torchserve_metrics_out() -> None:
    server = ServerMetrics({"Requests2XX"}, hostname="h")
    model = server.model("m", "1.0")
    model.received()
    model.dispatched(0.001)
    model.answered(200, 0.002)
    server.http_status(500).inc()
    names = set(families(render(server, TEXT_TYPE).decode()))
    assert "Requests2XX" in names and "serving_requests" in names
    assert not names & {"Requests5XX", "ts_inference_requests", "QueueTime",
                        "ts_queue_latency_microseconds"}


def test_forgetting_a_version_drops_its_series_only() -> None:
    server = ServerMetrics(hostname="h")
    server.model("a", "1.0").answered(200, 0.1)
    server.model("a", "2.0").answered(200, 0.1)
    server.forget_model("a", "1.0")
    text = render(server, TEXT_TYPE).decode()
    assert 'version="2.0"' in text and 'version="1.0"' not in text


def test_no_metrics_records_nothing() -> None:
    NO_METRICS.received()
    NO_METRICS.dispatched(1.0)
    NO_METRICS.batch_done(1, 1.0)
    NO_METRICS.worker_result({"t": "not even a float"}, 1.0)
    NO_METRICS.handler_metrics("not even a list")
    NO_METRICS.answered(200, 1.0)
    NO_METRICS.failed("queue_full")
