"""Resident memory of a server's processes sampled over a run, and its growth between windows."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

GROWTH_LIMIT = 0.05  # the bar: last-minute median within 5% of the first minute's


@dataclass(frozen=True)
class RssSample:
    t_s: float  # seconds since sampling began
    pid: int
    role: str  # "gateway" or "worker"
    rss: int  # bytes
    # The gateway's open TCP connections (None for workers): RSS follows their high-water
    # mark, so a rise in RSS is read beside it before it is called a leak.
    connections: int | None = None


@dataclass(frozen=True)
class Growth:
    """Median RSS of the first window after warm-up against the median of the last window."""

    role: str
    first_median: float
    last_median: float
    first_n: int
    last_n: int

    @property
    def ratio(self) -> float:
        return self.last_median / self.first_median - 1 if self.first_median > 0 else float("nan")

    @property
    def ok(self) -> bool:
        return self.first_n > 0 and self.last_n > 0 and self.ratio < GROWTH_LIMIT

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "first_median_mib": self.first_median / 2**20,
                "last_median_mib": self.last_median / 2**20, "first_n": self.first_n,
                "last_n": self.last_n, "growth": self.ratio, "ok": self.ok}


def totals(samples: Sequence[RssSample], role: str) -> list[tuple[float, int]]:
    """(t, summed RSS of every process of `role`) per sampling instant."""
    by_t: dict[float, int] = {}
    for s in samples:
        if s.role == role:
            by_t[s.t_s] = by_t.get(s.t_s, 0) + s.rss
    return sorted(by_t.items())


def growth(series: Sequence[tuple[float, int]], role: str, warmup_s: float,
           window_s: float) -> Growth:
    """First window = [warmup, warmup + window); last window = the final `window_s` seconds.

    Medians, not means, so one sample taken mid-collection does not decide the verdict.
    """
    end = series[-1][0] if series else 0.0
    first = [v for t, v in series if warmup_s <= t < warmup_s + window_s]
    last = [v for t, v in series if t > end - window_s]
    return Growth(role, statistics.median(first) if first else 0.0,
                  statistics.median(last) if last else 0.0, len(first), len(last))


@dataclass
class RssSampler:
    """Samples a process tree every `interval_s` until stopped: `async with` around a load."""

    root_pid: int
    interval_s: float
    samples: list[RssSample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def sample_once(self, t_s: float) -> None:
        try:
            root = psutil.Process(self.root_pid)
            procs = [(root, "gateway")] + [(c, "worker") for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc, role in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                rss = proc.memory_info().rss
                conns = (sum(c.status == psutil.CONN_ESTABLISHED
                             for c in proc.net_connections(kind="tcp"))
                         if role == "gateway" else None)
                self.samples.append(RssSample(t_s, proc.pid, role, rss, conns))

    async def _loop(self) -> None:
        t0 = time.monotonic()
        while True:
            self.sample_once(round(time.monotonic() - t0, 3))
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
