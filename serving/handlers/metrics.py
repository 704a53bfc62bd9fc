"""`context.metrics` for handlers: TorchServe's metrics API, recorded instead of logged.

TorchServe's backend prints every metric update as a log line for its Java frontend to parse,
calling `gethostname()` each time; on a fast model that costs more than the model. Here the
same API (`add_metric`, `add_counter`, `add_time`, `add_size`, `add_percent`, `get_metric`)
checks updates as TorchServe does and folds them into one accumulator per series (metric and
label set) in the worker: a counter adds up, a gauge keeps its last value, a histogram keeps
its observations. The worker sends what changed (`take`) in a METRICS frame when the gateway
asks (every scrape of /metrics) and after a batch when 50 ms passed since it last sent, not
with every batch (serving/metrics/handler.py exports them).
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
MAX_PENDING = 10_000  # observations (and refused updates) kept between two sends
MAX_DIMENSION_SETS = 1_000  # label sets kept per metric; more travel update by update

# On the wire: [name, unit, kind, value, [[dimension name, value], ...]]
Update = list[Any]

# How a series folds its updates, by the kind the gateway exports it as.
_SUM, _LAST, _ALL = "sum", "last", "all"
_FOLD = {"COUNTER": _SUM, "GAUGE": _LAST, "HISTOGRAM": _ALL}
_NUMBERS = (int, float)


class _Series:
    """One metric's label set in the worker: what it gained since it was last sent."""

    __slots__ = ("dims", "dirty", "fold", "head", "observed", "value")

    def __init__(self, head: tuple[str, str, str], dims: list[list[str]], fold: str) -> None:
        self.head = head  # name, unit, kind as recorded
        self.dims = dims
        self.fold = fold
        self.value: float = 0  # a counter's sum, a gauge's last value
        self.observed: list[float] = []  # a histogram's observations
        self.dirty = False


class _RecordingMetric(CachingMetric):  # type: ignore[misc]
    def __init__(self, owner: HandlerMetrics, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._kind = self.metric_type.name
        # Dimension values already checked -> their series: a handler records the same few
        # label sets batch after batch (BaseHandler's HandlerTime on every one).
        self._series: dict[tuple[str, ...], _Series] = {}
        self._by_wire: dict[tuple[str, ...], _Series] = {}

    def add_or_update(self, value: float, dimension_values: list[Any] | None = None,
                      request_id: str = "") -> None:
        # TorchServe's checks and its error line; what passes is kept, not printed.
        # Only all-str label sets are remembered as given: 1, 1.0 and True are one dict key
        # but three different label values.
        given = tuple(dimension_values or ())
        key = given if all(type(v) is str for v in given) else None
        series = self._series.get(key) if key is not None else None
        wire = None
        try:
            if series is None:
                dims = self._validate_and_get_dimensions(list(dimension_values or []))
                wire = [[str(d.name), str(d.value)] for d in dims]
                series = self._series_for(wire, key)
            self._validate_metric_value(value)
        except ValueError as e:
            log.error("[METRICS]Failed to update metric with name:%s with value: %s: %s",
                      self.metric_name, value, e)
            return
        if series is None:  # more label sets than kept: this update travels as it is
            self._owner.append([self.metric_name, self.unit, self._kind, value, wire])
        else:
            self._owner.add(series, value)

    def _series_for(self, wire: list[list[str]], key: tuple[str, ...] | None
                    ) -> _Series | None:
        flat = tuple(x for pair in wire for x in pair)
        series = self._by_wire.get(flat)
        if series is None:
            if len(self._by_wire) >= MAX_DIMENSION_SETS:
                return None
            series = self._by_wire[flat] = self._owner.new_series(
                self.metric_name, self.unit, self._kind, wire)
        if key is not None and len(self._series) < MAX_DIMENSION_SETS:
            self._series[key] = series
        return series

    def emit_metrics(self, request_id: str, value: float, dimension_string: str) -> None:
        pass  # TorchServe's log line; nothing reads it here


class HandlerMetrics(MetricsCacheYamlImpl):  # type: ignore[misc]
    """A TorchServe metrics cache whose metrics fold their updates into per-series
    accumulators until `take` hands over what changed.

    `config` is the server's `metrics_config` (TorchServe's default metrics.yaml without
    one): its `model_metrics` are in the cache from the start, so `get_metric` finds them,
    and their declared type decides how a series folds (as the gateway exports it: a name
    declared a gauge keeps its last value even when a handler adds to it as a counter).
    """

    def __init__(self, model_name: str, config: str | Path | None = None) -> None:
        self._dirty: list[_Series] = []
        self._loose: list[Update] = []  # updates that travel as they are
        self._kept = 0  # observations and loose updates waiting
        self._dropped = False
        self._own: dict[tuple[str, str, str], _Series] = {}
        self._declared = _declared_kinds(config)
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

    def new_series(self, name: str, unit: str, kind: str, dims: list[list[str]]) -> _Series:
        return _Series((name, unit, kind), dims, _FOLD[self._declared.get(name) or kind])

    def add(self, series: _Series, value: Any) -> None:
        """Fold one checked update into its series."""
        if type(value) not in _NUMBERS or value != value or value in _INFINITE:
            # Not a finite number: the gateway refuses it and says so in its log.
            name, unit, kind = series.head
            self.append([name, unit, kind, value, series.dims])
            return
        fold = series.fold
        if fold is _LAST:
            series.value = value
        elif fold is _SUM:
            if value < 0:
                return  # a counter cannot go down: the gateway would drop it
            series.value += value
        elif self._kept < MAX_PENDING:
            series.observed.append(value)
            self._kept += 1
        else:
            self._drop()
            return
        if not series.dirty:
            series.dirty = True
            self._dirty.append(series)

    def append(self, update: Update) -> None:
        """An update that travels as it is (the gateway checks it)."""
        if self._kept < MAX_PENDING:
            self._loose.append(update)
            self._kept += 1
        else:
            self._drop()

    def _drop(self) -> None:
        if not self._dropped:
            self._dropped = True
            log.warning("more than %d metric observations waiting to be sent; the rest are "
                        "dropped", MAX_PENDING)

    def record(self, name: str, unit: str, value: float, kind: str = "GAUGE") -> None:
        """The server's own per-batch figures, without TorchServe's per-update validation."""
        series = self._own.get((name, unit, kind))
        if series is None:
            series = self._own[name, unit, kind] = self.new_series(
                name, unit, kind, [["ModelName", self.model_name], ["Level", "Model"]])
        self.add(series, value)

    @property
    def pending(self) -> bool:
        """Whether anything was recorded since the last `take`."""
        return bool(self._dirty or self._loose)

    def take(self) -> list[Update]:
        """What changed since the last call, one update per counter or gauge series (its sum,
        its last value) and one per histogram observation; the accumulators start again."""
        updates, self._loose = self._loose, []
        for series in self._dirty:
            series.dirty = False
            name, unit, kind = series.head
            if series.fold is _ALL:
                dims = series.dims
                updates.extend([name, unit, kind, v, dims] for v in series.observed)
                series.observed = []
            else:
                updates.append([name, unit, kind, series.value, series.dims])
                if series.fold is _SUM:
                    series.value = 0
        self._dirty = []
        self._kept = 0
        self._dropped = False
        return updates


_INFINITE = (float("inf"), float("-inf"))


def _declared_kinds(config: str | Path | None) -> dict[str, str]:
    """The handler metrics the server's metrics_config declares, name -> type (what the
    gateway exports them as); none without one, as in the gateway."""
    if config is None:
        return {}
    from serving.metrics.config import load_metrics_config

    try:
        return dict(load_metrics_config(Path(config)).model)
    except (OSError, ValueError):  # the gateway checked it at start-up
        return {}
