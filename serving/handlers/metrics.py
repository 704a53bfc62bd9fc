"""`context.metrics` for handlers: TorchServe's metrics API, recorded instead of logged.

TorchServe's backend prints every metric update as a log line for its Java frontend to parse,
calling `gethostname()` each time; on a fast model that costs more than the model. Here the
same API (`add_metric`, `add_counter`, `add_time`, `add_size`, `add_percent`, `get_metric`)
records updates in memory, and the worker hands them over in bulk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ts
from ts.metrics.caching_metric import CachingMetric
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes

METRICS_CONFIG = Path(ts.__file__).parent / "configs" / "metrics.yaml"
MAX_PENDING = 10_000  # updates kept between two drains; older ones are dropped


@dataclass(frozen=True, slots=True)
class MetricUpdate:
    name: str
    unit: str
    kind: str  # COUNTER, GAUGE or HISTOGRAM
    value: float
    dimensions: str  # TorchServe's "Name:value,Name:value" form


class _RecordingMetric(CachingMetric):  # type: ignore[misc]
    def __init__(self, sink: list[MetricUpdate], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def emit_metrics(self, request_id: str, value: float, dimension_string: str) -> None:
        if len(self._sink) < MAX_PENDING:
            self._sink.append(MetricUpdate(self.metric_name, self.unit,
                                           self.metric_type.name, float(value),
                                           dimension_string))


class HandlerMetrics(MetricsCacheYamlImpl):  # type: ignore[misc]
    """A TorchServe metrics cache whose metrics record their updates in `pending`."""

    def __init__(self, model_name: str) -> None:
        self.pending: list[MetricUpdate] = []
        super().__init__(config_file_path=str(METRICS_CONFIG))
        self.initialize_cache()
        self.model_name = model_name

    def add_metric_to_cache(self, metric_name: str, unit: str,
                            dimension_names: list[str] | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER) -> CachingMetric:
        # The same checks and cache layout as TorchServe's, so get_metric keeps working.
        self._check_type(metric_name, str, "`metric_name` must be a str")
        self._check_type(unit, str, "`unit` must be a str")
        self._check_type(metric_type, MetricTypes, "`metric_type` must be a MetricTypes enum")
        metric = _RecordingMetric(self.pending, metric_name, unit, list(dimension_names or []),
                                  metric_type)
        self.cache.setdefault(metric_type, {})[metric_name] = metric
        return metric

    def record(self, name: str, unit: str, value: float, kind: str = "GAUGE") -> None:
        """The server's own per-batch figures, without TorchServe's per-update validation."""
        if len(self.pending) < MAX_PENDING:
            self.pending.append(MetricUpdate(name, unit, kind, value,
                                             f"ModelName:{self.model_name},Level:Model"))

    def drain(self) -> list[MetricUpdate]:
        updates, self.pending[:] = list(self.pending), []
        return updates
