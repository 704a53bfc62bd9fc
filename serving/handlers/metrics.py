"""`context.metrics` for handlers: TorchServe's metrics API, recorded instead of logged.

TorchServe's backend prints every metric update as a log line for its Java frontend to parse,
calling `gethostname()` each time; on a fast model that costs more than the model. Here the
same API (`add_metric`, `add_counter`, `add_time`, `add_size`, `add_percent`, `get_metric`)
records updates in memory with TorchServe's validation, and the worker sends a batch's
updates to the gateway with the batch's answers (serving/metrics/handler.py exports them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ts
from ts.metrics.caching_metric import CachingMetric
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes

log = logging.getLogger(__name__)

METRICS_CONFIG = Path(ts.__file__).parent / "configs" / "metrics.yaml"
MAX_PENDING = 10_000  # updates kept per batch; more are dropped (and said so once)
MAX_DIMENSION_SETS = 1_000  # checked label sets remembered per metric

# On the wire: [name, unit, kind, value, [[dimension name, value], ...]]
Update = list[Any]


class _RecordingMetric(CachingMetric):  # type: ignore[misc]
    def __init__(self, owner: HandlerMetrics, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._kind = self.metric_type.name
        # Dimension values already checked -> their wire form: a handler records the same
        # few label sets batch after batch (BaseHandler's HandlerTime on every one).
        self._dims: dict[tuple[str, ...], list[list[str]]] = {}

    def add_or_update(self, value: float, dimension_values: list[Any] | None = None,
                      request_id: str = "") -> None:
        # TorchServe's checks and its error line; what passes is kept, not printed.
        # Only all-str label sets are remembered: 1, 1.0 and True are one dict key but
        # three different label values.
        given = tuple(dimension_values or ())
        key = given if all(type(v) is str for v in given) else None
        wire = self._dims.get(key) if key is not None else None
        try:
            if wire is None:
                dims = self._validate_and_get_dimensions(list(dimension_values or []))
                wire = [[str(d.name), str(d.value)] for d in dims]
                if key is not None and len(self._dims) < MAX_DIMENSION_SETS:
                    self._dims[key] = wire
            self._validate_metric_value(value)
        except ValueError as e:
            log.error("[METRICS]Failed to update metric with name:%s with value: %s: %s",
                      self.metric_name, value, e)
            return
        self._owner.append([self.metric_name, self.unit, self._kind, value, wire])

    def emit_metrics(self, request_id: str, value: float, dimension_string: str) -> None:
        pass  # TorchServe's log line; nothing reads it here


class HandlerMetrics(MetricsCacheYamlImpl):  # type: ignore[misc]
    """A TorchServe metrics cache whose metrics record their updates in `pending`.

    `config` is the server's `metrics_config` (TorchServe's default metrics.yaml without
    one): its `model_metrics` are in the cache from the start, so `get_metric` finds them.
    """

    def __init__(self, model_name: str, config: str | Path | None = None) -> None:
        self.pending: list[Update] = []
        self._dropped = False
        super().__init__(config_file_path=str(config or METRICS_CONFIG))
        self.initialize_cache()
        self.model_name = model_name

    def add_metric_to_cache(self, metric_name: str, unit: str,
                            dimension_names: list[str] | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER) -> CachingMetric:
        # The same checks and cache layout as TorchServe's, so get_metric keeps working.
        self._check_type(metric_name, str, "`metric_name` must be a str")
        self._check_type(unit, str, "`unit` must be a str")
        self._check_type(metric_type, MetricTypes, "`metric_type` must be a MetricTypes enum")
        metric = _RecordingMetric(self, metric_name, unit, list(dimension_names or []),
                                  metric_type)
        self.cache.setdefault(metric_type, {})[metric_name] = metric
        return metric

    def append(self, update: Update) -> None:
        if len(self.pending) < MAX_PENDING:
            self.pending.append(update)
        elif not self._dropped:
            self._dropped = True
            log.warning("more than %d metric updates in one batch; the rest are dropped",
                        MAX_PENDING)

    def record(self, name: str, unit: str, value: float, kind: str = "GAUGE") -> None:
        """The server's own per-batch figures, without TorchServe's per-update validation."""
        self.append([name, unit, kind, value,
                     [["ModelName", self.model_name], ["Level", "Model"]]])

    def drain(self) -> list[Update]:
        updates, self.pending = self.pending, []
        self._dropped = False
        return updates
