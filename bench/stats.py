"""Percentiles of one run and median-over-repetitions aggregation of many runs."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


def percentile(ascending: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (nan when it is empty).

    Nearest rank, not interpolation, so every figure reported is a latency some request
    really had.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    n = len(ascending)
    if n == 0:
        return math.nan
    # round() first: 90 * 10 / 100 is 9.000000000000002 in floats, which ceil would make 10.
    rank = math.ceil(round(p * n / 100, 9))
    return ascending[max(rank, 1) - 1]


def latency_summary(latencies_ns: Iterable[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of raw nanosecond latencies."""
    ms = sorted(v / 1e6 for v in latencies_ns)
    out = {f"p{p}_ms": percentile(ms, p) for p in PERCENTILES}
    out["max_ms"] = ms[-1] if ms else math.nan
    out["mean_ms"] = statistics.fmean(ms) if ms else math.nan
    return out


@dataclass
class Aggregate:
    """Median over the repetitions of one (label, concurrency) cell, with the req/s spread."""

    label: str
    concurrency: int
    reps: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ok: int
    error_count: int
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu: float = math.nan  # median share of one core the load generator used


def _real(values: Iterable[float]) -> list[float]:
    # A rep with no successes has nan latencies; it must not poison the other reps' figures.
    return [v for v in values if not math.isnan(v)]


def _median(values: Iterable[float]) -> float:
    real = _real(values)
    return statistics.median(real) if real else math.nan


def aggregate(rows: Iterable[Mapping[str, Any]]) -> list[Aggregate]:
    """Group result rows by (label, concurrency); labels keep first-seen order."""
    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["label"], int(row["concurrency"])), []).append(row)
    order = {label: i for i, label in enumerate(dict.fromkeys(k[0] for k in cells))}
    out = []
    for (label, conc), reps in sorted(cells.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        errors: Counter[str] = Counter()
        for r in reps:
            errors.update(r.get("errors", {}))
        rps = [float(r["rps"]) for r in reps]
        out.append(
            Aggregate(
                label=label,
                concurrency=conc,
                reps=len(reps),
                rps=statistics.median(rps),
                rps_min=min(rps),
                rps_max=max(rps),
                p50_ms=_median([float(r["p50_ms"]) for r in reps]),
                p90_ms=_median([float(r["p90_ms"]) for r in reps]),
                p99_ms=_median([float(r["p99_ms"]) for r in reps]),
                max_ms=max(_real([float(r["max_ms"]) for r in reps]), default=math.nan),
                ok=sum(int(r["ok"]) for r in reps),
                error_count=sum(errors.values()),
                errors=dict(sorted(errors.items())),
                client_cpu=_median([float(r.get("client_cpu", math.nan)) for r in reps]),
            )
        )
    return out


def ratio(num: float, den: float) -> float:
    """num / den, nan instead of an exception when den is 0 or either side is nan."""
    if den == 0 or math.isnan(num) or math.isnan(den):
        return math.nan
    return num / den
