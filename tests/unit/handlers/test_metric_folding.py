"""The worker folds handler metric updates per series before sending them: what the gateway
exports from the folded updates is what it exported from every update sent one by one."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from serving.handlers import metrics as metrics_module
from serving.handlers.metrics import HandlerMetrics
from serving.metrics.handler import HandlerMetricStore

CONFIG = """\
dimensions:
  - &model_name "ModelName"
  - &level "Level"
model_metrics:
  gauge:
    - name: QueueLength
      unit: count
      dimensions: [*model_name, *level]
  counter:
    - name: Declared
      unit: count
      dimensions: [*model_name, *level]
"""
DECLARED = {"QueueLength": "GAUGE", "Declared": "COUNTER"}


def exported(updates: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    store = HandlerMetricStore("h", declared=DECLARED)
    store.record(updates)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in store.collect() for s in m.samples}


def only(samples: dict[tuple[str, Any], float], name: str) -> float:
    values = [v for (n, _), v in samples.items() if n == name]
    assert len(values) == 1, samples
    return values[0]


def record_mix(metrics: HandlerMetrics, step: int) -> None:
    """What a handler records in one batch: counters with label sets, gauges, a histogram,
    a name the config declares with another type, the server's own PredictionTime."""
    color = Dimension("Color", "red" if step % 3 else "blue")
    metrics.add_counter("InferCount", 1 + step % 2, None, [color])
    metrics.add_time("HandlerTime", 0.25 * step, None, "ms")
    metrics.add_size("PayloadSize", 3.0 + step, None, "MB")
    metrics.add_metric("Tokens", step % 7, "count", None, [], MetricTypes.HISTOGRAM)
    metrics.add_metric("Spread", 0.001 * step, "s", None, [color], MetricTypes.HISTOGRAM)
    metrics.add_counter("QueueLength", step)  # declared a gauge: its last value counts
    metrics.add_metric("Declared", step - 5, "count", None, [],  # declared a counter:
                       MetricTypes.GAUGE)  # what would go down is dropped
    metrics.record("PredictionTime", "ms", 0.5 + step)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.yaml"
    path.write_text(CONFIG)
    return path


def test_folded_updates_export_what_every_update_exported(config: Path) -> None:
    folded = HandlerMetrics("m", config)
    one_by_one = HandlerMetrics("m", config)
    each: list[Any] = []
    for step in range(40):
        record_mix(folded, step)
        record_mix(one_by_one, step)
        each.extend(one_by_one.take())  # whatever one call recorded, sent at once
    assert folded.pending
    sent = folded.take()
    assert len(sent) < len(each) / 3  # counters and gauges: one update per series
    assert exported(sent) == exported(each)
    assert only(exported(sent), "QueueLength") == 39
    assert not folded.pending and folded.take() == []


def test_sending_twice_adds_up_as_sending_once(config: Path) -> None:
    metrics = HandlerMetrics("m", config)
    parts: list[Any] = []
    for step in range(30):
        record_mix(metrics, step)
        if step % 7 == 0:
            parts.extend(metrics.take())
    parts.extend(metrics.take())
    again = HandlerMetrics("m", config)
    for step in range(30):
        record_mix(again, step)
    assert exported(parts) == exported(again.take())


def test_what_the_gateway_refuses_still_reaches_it_as_it_was(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = HandlerMetrics("m")
    metrics.add_metric("Odd", math.nan, "u", None, [], MetricTypes.GAUGE)
    metrics.add_metric("Odd", True, "u", None, [], MetricTypes.GAUGE)
    metrics.add_metric("Odd", 2.0, "u", None, [], MetricTypes.GAUGE)
    sent = metrics.take()
    assert [u[3] for u in sent if u[0] == "Odd"][:2] == [pytest.approx(math.nan, nan_ok=True),
                                                         True]
    caplog.set_level(logging.WARNING)
    got = exported(sent)
    assert len(got) == 1 and only(got, "Odd") == 2.0
    assert "handler metric update dropped" in caplog.text


def test_observations_waiting_are_bounded(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(metrics_module, "MAX_PENDING", 50)
    metrics = HandlerMetrics("m")
    caplog.set_level(logging.WARNING)
    for i in range(80):
        metrics.add_metric("Obs", i, "u", None, [], MetricTypes.HISTOGRAM)
        metrics.add_counter("Hits", 1)  # a counter is one number however often it is added
    sent = metrics.take()
    assert sum(1 for u in sent if u[0] == "Obs") == 50
    assert [u[3] for u in sent if u[0] == "Hits"] == [80]
    assert "the rest are dropped" in caplog.text
    metrics.add_metric("Obs", 1, "u", None, [], MetricTypes.HISTOGRAM)
    assert len(metrics.take()) == 1  # the bound is per send
