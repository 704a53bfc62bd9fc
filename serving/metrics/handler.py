"""Metrics that handlers record through `context.metrics`, as they arrive from the workers.

A worker sends the updates of a batch with the batch's answers (`"m"` in its RESULT message):
`[name, unit, kind, value, [[dimension, value], ...]]` each. They are exported as TorchServe
does in prometheus mode: the metric under its own name, its dimensions as labels plus
`Hostname`; COUNTER adds up, GAUGE keeps the last value, HISTOGRAM observes. What a worker sends
is checked: a malformed update is dropped (and logged once per name), never fatal, and the
number of names and label sets is bounded so a handler cannot grow the gateway without end.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

from prometheus_client.metrics_core import Metric

from serving.metrics.instruments import (
    DEFAULT_BUCKETS,
    CounterChild,
    GaugeChild,
    HistogramChild,
    LegacyCounter,
    add_histogram_samples,
)

log = logging.getLogger(__name__)

KINDS = {"COUNTER": "counter", "GAUGE": "gauge", "HISTOGRAM": "histogram"}
MAX_FAMILIES = 200
MAX_SERIES = 2000  # label sets over all handler metrics
MAX_DIMENSIONS = 16
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")

Child = CounterChild | GaugeChild | HistogramChild


def metric_name(raw: str) -> str:
    name = _INVALID_NAME.sub("_", raw)
    return f"_{name}" if not name or name[0].isdigit() else name


def label_name(raw: str) -> str:
    name = _INVALID_LABEL.sub("_", raw)
    if not name or name[0].isdigit() or name.startswith("__") or name == "le":
        name = f"dim_{name}"
    return name


class _Family:
    __slots__ = ("kind", "series", "unit")

    def __init__(self, kind: str, unit: str) -> None:
        self.kind = kind
        self.unit = unit
        self.series: dict[tuple[tuple[str, str], ...], Child] = {}


class HandlerMetricStore:
    """Every handler metric of every model, keyed by name, then by label set."""

    def __init__(self, hostname: str, reserved: Iterable[str] = (),
                 declared: dict[str, str] | None = None) -> None:
        self.hostname = hostname
        self.reserved = frozenset(reserved)
        self.declared = dict(declared or {})  # name -> kind, from metrics.yaml model_metrics
        self._families: dict[str, _Family] = {}
        self._series = 0
        self._warned: set[str] = set()
        # wire form of a seen series -> its child's update method, and whether a counter
        self._fast: dict[tuple[Any, ...], tuple[Callable[[float], None], bool]] = {}

    def record(self, updates: Any) -> None:
        """Apply one batch's updates from a worker; malformed ones are dropped."""
        if not isinstance(updates, list):
            self._warn("updates", f"not a list: {type(updates).__name__}")
            return
        fast = self._fast
        for update in updates:
            # The fast path: an update of a series already seen (every batch of a model that
            # records the same metrics): one tuple and one dict lookup, no validation again;
            # the child's update method is kept with it (a counter refuses going down).
            try:
                name, _, kind, value, dims = update
                key = (name, kind, len(dims), *_flat(dims))
                known = fast.get(key)
            except (TypeError, ValueError):
                known = None
            if known is not None and type(value) in _NUMBERS and _isfinite(value):
                apply, counter = known
                if not counter or value >= 0:
                    apply(value)
                continue
            try:
                child = self._apply(update)
            except (TypeError, ValueError) as e:
                self._warn(str(update)[:60], str(e))
            else:
                if len(fast) < MAX_SERIES:
                    fast[key] = _updater(child)

    def _apply(self, update: Any) -> Child:
        if not isinstance(update, list) or len(update) != 5:
            raise ValueError("not [name, unit, kind, value, dimensions]")
        raw_name, unit, kind, value, dims = update
        if not isinstance(raw_name, str) or not isinstance(unit, str) or kind not in KINDS:
            raise ValueError("bad name, unit or kind")
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ValueError(f"value {value!r:.40} is not a finite number")
        if not isinstance(dims, list) or len(dims) > MAX_DIMENSIONS or not all(
                isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
                for d in dims):
            raise ValueError("dimensions are not a list of [name, value] strings")
        name = metric_name(raw_name[:200])
        if name in self.reserved:
            raise ValueError(f"{name} is one of the server's own metric names")
        family = self._families.get(name)
        if family is None:
            if len(self._families) >= MAX_FAMILIES:
                raise ValueError(f"more than {MAX_FAMILIES} handler metric names")
            declared = self.declared.get(raw_name)
            family = self._families[name] = _Family(KINDS[declared or kind], unit)
        if family.kind == "counter" and value < 0:
            raise ValueError("a counter cannot go down")
        labels = tuple((label_name(k[:100]), v[:200]) for k, v in dims)
        if not any(k == "Hostname" for k, _ in labels):
            labels += (("Hostname", self.hostname),)
        child = family.series.get(labels)
        if child is None:
            if self._series >= MAX_SERIES:
                raise ValueError(f"more than {MAX_SERIES} handler metric label sets")
            child = family.series[labels] = _child(family.kind)
            self._series += 1
        if isinstance(child, CounterChild):
            child.inc(value)
        elif isinstance(child, GaugeChild):
            child.set(value)
        else:
            child.observe(value)
        return child

    def _warn(self, key: str, why: str) -> None:
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            log.warning("handler metric update dropped (%s): %s", key, why)

    def forget_model(self, model: str) -> None:
        self._fast.clear()
        for family in self._families.values():
            for labels in [k for k in family.series if ("ModelName", model) in k]:
                del family.series[labels]
                self._series -= 1

    def collect(self) -> Iterator[Metric]:
        for name, family in list(self._families.items()):
            doc = f"Handler metric ({family.unit or 'no unit'})"
            if family.kind == "counter":
                metric: Metric = LegacyCounter(name, doc, "counter")
            else:
                metric = Metric(name, doc, family.kind)
            for labels, child in list(family.series.items()):
                values = dict(labels)
                if isinstance(child, CounterChild):
                    metric.add_sample(f"{name}_total", values, child.value)
                elif isinstance(child, GaugeChild):
                    metric.add_sample(name, values, child.value)
                else:
                    add_histogram_samples(metric, name, values, child)
            yield metric


_flat = chain.from_iterable
_isfinite = math.isfinite
_NUMBERS = (int, float)


def _updater(child: Child) -> tuple[Callable[[float], None], bool]:
    """How the fast path updates a known series: the child's method, and whether it is a
    counter (which only goes up)."""
    if isinstance(child, CounterChild):
        return child.inc, True
    if isinstance(child, GaugeChild):
        return child.set, False
    return child.observe, False


def _child(kind: str) -> Child:
    if kind == "counter":
        return CounterChild()
    if kind == "gauge":
        return GaugeChild()
    return HistogramChild(DEFAULT_BUCKETS)
