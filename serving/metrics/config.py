"""`metrics_config`: a TorchServe metrics.yaml naming the frontend and model metrics.

`ts_metrics:` lists the TorchServe frontend metrics to export (one left out is not exported);
`model_metrics:` declares handler metrics, whose declared type wins over the type of the
call that records them, and which the workers preload so `context.metrics.get_metric` finds
them. With no file, TorchServe 0.12's default metrics.yaml applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serving.errors import ConfigError
from serving.metrics.catalog import TS_FRONTEND_METRICS

SECTIONS = ("dimensions", "ts_metrics", "model_metrics")
TYPES = {"counter": "COUNTER", "gauge": "GAUGE", "histogram": "HISTOGRAM"}


@dataclass(frozen=True)
class MetricsConfig:
    frontend: frozenset[str] = TS_FRONTEND_METRICS
    model: dict[str, str] = field(default_factory=dict)  # name -> COUNTER|GAUGE|HISTOGRAM
    path: Path | None = None


def load_metrics_config(path: Path | None) -> MetricsConfig:
    if path is None:
        return MetricsConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"metrics_config: cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"metrics_config: {path} is not YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"metrics_config: {path}: expected a mapping with ts_metrics and "
                          "model_metrics")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"metrics_config: {path}: unknown section(s) {', '.join(unknown)}")
    frontend = _section(data.get("ts_metrics"), path, "ts_metrics")
    unknown_ts = sorted(set(frontend) - TS_FRONTEND_METRICS)
    if unknown_ts:
        raise ConfigError(f"metrics_config: {path}: ts_metrics: {', '.join(unknown_ts)} "
                          "is not a TorchServe frontend metric (handler metrics go under "
                          "model_metrics)")
    model = _section(data.get("model_metrics"), path, "model_metrics")
    return MetricsConfig(frontend=frozenset(frontend), model=model, path=path)


def _section(value: Any, path: Path, where: str) -> dict[str, str]:
    """{metric name: TYPE} from `{counter: [{name, unit, dimensions}], gauge: [...]}`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"metrics_config: {path}: {where}: expected counter/gauge/histogram "
                          "lists")
    found: dict[str, str] = {}
    for kind, entries in value.items():
        if kind not in TYPES:
            raise ConfigError(f"metrics_config: {path}: {where}: unknown type {kind!r} "
                              "(counter, gauge or histogram)")
        for entry in entries or []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                raise ConfigError(f"metrics_config: {path}: {where}.{kind}: every entry needs "
                                  f"a name (got {entry!r:.60})")
            found[name] = TYPES[kind]
    return found
