"""Open-loop load that accounts for every request: its status, a transport error, or hung.

A request is *hung* when no answer came within `hang_after_s` of sending it; the client then
gives up on it (closing its connection) and records it as such. The count of requests sent
is kept apart from the outcomes recorded, so a request that the bookkeeping lost shows up as
a broken invariant (`sent != answered + errors + hung`) instead of vanishing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.stats import percentile

HUNG = "hung"
CLIENT_KEEPALIVE_S = 3.0
ERROR_PREFIX = "error:"


@dataclass(frozen=True)
class Outcome:
    """One request: when it went out (s since the run began), how long it took, what came."""

    sent_s: float
    latency_s: float  # for a hung request: how long the client waited before giving up
    result: str  # an HTTP status ("200"), "error:<exception class>" or "hung"
    body_ok: bool = True  # a 200 whose body lacked the expected bytes is False

    def row(self) -> list[Any]:
        return [round(self.sent_s, 4), round(self.latency_s * 1e3, 3), self.result,
                self.body_ok]


@dataclass
class LoadRun:
    """What one open-loop run sent and got back; filled while it runs."""

    target_rate: float
    duration_s: float
    sent: int = 0
    skipped: int = 0  # due, but not sent: the client's in-flight cap was reached
    send_phase_s: float = 0.0  # how long sending took (longer than duration: the client lagged)
    max_lag_s: float = 0.0  # the latest a request went out after its due time
    outcomes: list[Outcome] = field(default_factory=list)
    # One message per transport-error kind, to say what the error was (refused, reset...).
    error_messages: dict[str, str] = field(default_factory=dict)

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.send_phase_s if self.send_phase_s > 0 else 0.0


@dataclass(frozen=True)
class Tally:
    """The counts a report shows for one run, and whether every request was accounted for."""

    sent: int
    statuses: dict[str, int]
    errors: dict[str, int]
    hung: int
    unexpected_body: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def transport_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def accounted(self) -> bool:
        """sent == answered (by status) + transport errors + hung: nothing unrecorded."""
        return self.sent == self.answered + self.transport_errors + self.hung

    @property
    def clean(self) -> bool:
        """The invariant the stress benchmark asserts: all accounted for, none hung."""
        return self.accounted and self.hung == 0

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "statuses": self.statuses,
                "transport_errors": self.transport_errors, "errors": self.errors,
                "hung": self.hung, "unexpected_body": self.unexpected_body,
                "accounted": self.accounted, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "max_ms": self.max_ms}


def tally(sent: int, outcomes: Sequence[Outcome]) -> Tally:
    """Counts by status, transport error and hung; percentiles over the 200s only."""
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    hung = unexpected = 0
    ok_ms: list[float] = []
    for o in outcomes:
        if o.result == HUNG:
            hung += 1
        elif o.result.startswith(ERROR_PREFIX):
            errors[o.result.removeprefix(ERROR_PREFIX)] += 1
        else:
            statuses[o.result] += 1
            if o.result == "200":
                ok_ms.append(o.latency_s * 1e3)
                unexpected += not o.body_ok
    ok_ms.sort()
    return Tally(sent=sent, statuses=dict(sorted(statuses.items())),
                 errors=dict(sorted(errors.items())), hung=hung, unexpected_body=unexpected,
                 p50_ms=percentile(ok_ms, 50), p99_ms=percentile(ok_ms, 99),
                 max_ms=ok_ms[-1] if ok_ms else math.nan)


def open_session(max_in_flight: int) -> aiohttp.ClientSession:
    """No client timeouts: `hang_after_s` alone decides when a request counts as hung."""
    # Idle connections are closed by the client before the server's own keep-alive timeout
    # (uvicorn: 5 s) can close them: otherwise a request sent on a connection the server is
    # closing at that instant fails in transport, which is the client's race, not a lost
    # request.
    connector = aiohttp.TCPConnector(limit=max_in_flight, limit_per_host=max_in_flight,
                                     keepalive_timeout=CLIENT_KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=None))


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
               expect: bytes | None, hang_after_s: float, t0: float, run: LoadRun) -> None:
    run.sent += 1
    start = time.monotonic()
    result, body_ok = HUNG, True
    deadline = asyncio.timeout(hang_after_s)
    try:
        async with deadline, session.post(url, data=body, headers=headers) as resp:
            payload = await resp.read()
            result = str(resp.status)
        body_ok = expect is None or resp.status != 200 or expect in payload
    except TimeoutError as e:
        if not deadline.expired():  # a timeout inside the client, not the hang deadline
            result = ERROR_PREFIX + type(e).__name__
    except Exception as e:  # a refused or reset connection is an outcome to count, not a crash
        errno = getattr(e, "errno", None)
        result = ERROR_PREFIX + type(e).__name__ + (f"[{errno}]" if errno else "")
        run.error_messages.setdefault(result, str(e)[:200])
    run.outcomes.append(Outcome(start - t0, time.monotonic() - start, result, body_ok))


async def open_loop(session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes],
                    content_type: str, rate: float, duration_s: float, hang_after_s: float,
                    *, expect: bytes | None = None, max_in_flight: int = 4000) -> LoadRun:
    """Send `rate` requests/s for `duration_s` whatever the answers, then await every one.

    Request i carries `bodies[i % len(bodies)]` (a fault every N requests is a list of N
    bodies). Returns once every request was answered, failed, or declared hung.
    """
    run = LoadRun(target_rate=rate, duration_s=duration_s)
    headers = {"Content-Type": content_type}
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()
    for i in range(int(rate * duration_s)):
        lag = time.monotonic() - (t0 + i / rate)
        if lag < 0:
            await asyncio.sleep(-lag)
        else:
            run.max_lag_s = max(run.max_lag_s, lag)
        if len(tasks) >= max_in_flight:
            run.skipped += 1
            continue
        task = loop.create_task(_one(session, url, bodies[i % len(bodies)], headers, expect,
                                     hang_after_s, t0, run))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    run.send_phase_s = time.monotonic() - t0
    if tasks:
        await asyncio.wait(tasks)
    return run
