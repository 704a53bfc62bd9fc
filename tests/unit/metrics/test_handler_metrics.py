"""What workers send as handler metrics: exported with their dimensions, malformed updates
dropped, the server's own names and the number of series protected."""

from __future__ import annotations

import logging

import pytest

from serving.metrics import handler as handler_module
from serving.metrics.catalog import ServerMetrics
from serving.metrics.handler import HandlerMetricStore, label_name, metric_name


def samples(store: HandlerMetricStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in store.collect() for s in m.samples}


def dims(**kv: str) -> list[list[str]]:
    return [[k, v] for k, v in kv.items()]


def test_counter_gauge_histogram_with_dimensions_and_hostname() -> None:
    store = HandlerMetricStore("h1")
    for _ in range(3):
        store.record([["Hits", "Count", "COUNTER", 2, dims(ModelName="m", Level="Model")],
                      ["Temp", "C", "GAUGE", 1.5, dims(ModelName="m")]])
    store.record([["Temp", "C", "GAUGE", 7.0, dims(ModelName="m")],
                  ["Len", "n", "HISTOGRAM", 0.02, []]])
    got = samples(store)
    assert got["Hits_total", (("Hostname", "h1"), ("Level", "Model"), ("ModelName", "m"))] == 6
    assert got["Temp", (("Hostname", "h1"), ("ModelName", "m"))] == 7.0
    assert got["Len_count", (("Hostname", "h1"),)] == 1
    assert got["Len_bucket", (("Hostname", "h1"), ("le", "0.025"))] == 1


def test_malformed_updates_are_dropped_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    store = HandlerMetricStore("h")
    caplog.set_level(logging.WARNING)
    store.record("not a list")
    store.record([["only", "three", "fields"], ["X", "u", "SUMMARY", 1, []],
                  ["X", "u", "GAUGE", float("nan"), []], ["X", "u", "GAUGE", "1", []],
                  ["X", "u", "GAUGE", True, []], ["X", "u", "GAUGE", 1, [["a"]]],
                  ["X", "u", "GAUGE", 1, [["a", 1]]], ["C", "u", "COUNTER", -1, []],
                  ["Ok", "u", "GAUGE", 3, []]])
    assert samples(store) == {("Ok", (("Hostname", "h"),)): 3}
    assert "handler metric update dropped" in caplog.text


def test_a_counter_seen_before_still_refuses_to_go_down() -> None:
    store = HandlerMetricStore("h")
    store.record([["C", "u", "COUNTER", 5, []]])
    store.record([["C", "u", "COUNTER", -3, []], ["C", "u", "COUNTER", 1, []]])
    assert samples(store)["C_total", (("Hostname", "h"),)] == 6


def test_server_metric_names_are_reserved() -> None:
    server = ServerMetrics(hostname="h")
    server.handlers.record([["Requests2XX", "Count", "COUNTER", 1, []],
                            ["serving_requests", "Count", "COUNTER", 1, []],
                            ["MemoryUsed", "MB", "GAUGE", 1, []]])
    assert samples(server.handlers) == {}


def test_names_and_labels_are_made_valid() -> None:
    assert metric_name("my-metric.total") == "my_metric_total"
    assert metric_name("9lives") == "_9lives"
    assert label_name("le") == "dim_le" and label_name("__x") == "dim___x"
    assert label_name("Model Name") == "Model_Name"


def test_series_and_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "MAX_SERIES", 5)
    monkeypatch.setattr(handler_module, "MAX_FAMILIES", 2)
    store = HandlerMetricStore("h")
    store.record([["A", "u", "GAUGE", 1, dims(i=str(i))] for i in range(10)])
    store.record([["B", "u", "GAUGE", 1, []], ["C", "u", "GAUGE", 1, []]])
    got = samples(store)
    assert sum(1 for name, _ in got if name == "A") == 5
    assert not any(name == "C" for name, _ in got)


def test_declared_type_wins_and_forgetting_a_model_drops_its_series() -> None:
    store = HandlerMetricStore("h", declared={"Q": "GAUGE"})
    store.record([["Q", "u", "COUNTER", 4, dims(ModelName="a")],
                  ["Q", "u", "COUNTER", 2, dims(ModelName="a")],
                  ["Q", "u", "COUNTER", 9, dims(ModelName="b")]])
    got = samples(store)
    assert got["Q", (("Hostname", "h"), ("ModelName", "a"))] == 2  # a gauge: the last value
    store.forget_model("a")
    assert set(samples(store)) == {("Q", (("Hostname", "h"), ("ModelName", "b")))}
