"""Closed-loop HTTP load generator: C workers, one request in flight each, warm-up then a window."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.machine import parse_cpus, pin_process
from bench.stats import latency_summary
from bench.workload import Plan, Target

__all__ = ["Plan", "RunResult", "Target", "format_result", "open_session", "run_level",
           "run_matrix", "warm"]


@dataclass
class RunResult:
    """One (label, concurrency, rep) measurement: one JSON line of the results file."""

    label: str
    concurrency: int
    rep: int
    url: str
    mode: str
    warmup_s: float
    window_s: float
    rps: float
    ok: int
    error_count: int
    errors: dict[str, int]
    late: int  # finished after the window: awaited so the server's queue drains, not counted
    sent: int
    client_cpu: float  # share of one core this process used; near 1.0 the client is the limit
    load_1m: float  # the box's load average at the start: on a shared box, the noise warning
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    started_at: str
    client: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Window:
    """State shared by the workers of one run; plain slots keep the hot loop cheap."""

    __slots__ = ("end_ns", "errors", "late", "latencies", "measure_ns", "remaining", "sent")

    def __init__(self, measure_ns: int, end_ns: int, remaining: int | None) -> None:
        self.measure_ns = measure_ns
        self.end_ns = end_ns
        self.remaining = remaining
        self.latencies: list[int] = []
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.late = 0

    def record(self, t0: int, t1: int, kind: str | None) -> bool | None:
        """Count one call that finished at `t1`: None before the window (warm-up, not
        counted), False after it (counted as late; the worker stops), True counted."""
        if t1 < self.measure_ns:
            return None
        if t1 > self.end_ns:
            self.late += 1
            return False
        if kind is None:
            self.latencies.append(t1 - t0)
        else:
            self.errors[kind] += 1
        return True


async def _worker(session: aiohttp.ClientSession, t: Target, headers: dict[str, str],
                  w: Window, start: int = 0) -> None:
    request, method, url, expect = session.request, t.method, t.url, t.expect
    bodies = t.all_bodies
    n, i = len(bodies), start
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if t0 >= w.end_ns:
            return
        w.sent += 1
        kind: str | None = None
        body = bodies[i % n]
        i += 1
        try:
            async with request(method, url, data=body, headers=headers) as resp:
                payload = await resp.read()  # read fully so the connection is reused
                status = resp.status
            if not 200 <= status < 300:
                kind = f"status:{status}"
            elif expect is not None and expect not in payload:
                kind = "unexpected_body"
        except TimeoutError:
            kind = "timeout"
        except Exception as exc:  # a failing server is a data point, never a dead worker
            kind = "exception:" + type(exc).__name__
        t1 = clock()
        counted = w.record(t0, t1, kind)
        if counted is False:
            return
        if counted and w.remaining is not None:
            w.remaining -= 1
            if w.remaining == 0:
                w.end_ns = t1


def client_name() -> str:
    """Client and event loop, recorded because they change the figures at low concurrency."""
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return f"aiohttp {aiohttp.__version__}" + ("+uvloop" if loop == "uvloop" else "")


def open_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    """Keep-alive session; call inside the running loop."""
    # A pool smaller than C would queue requests in the client and bill it as server latency.
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency,
                                     keepalive_timeout=120)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def run_level(session: aiohttp.ClientSession, target: Target, concurrency: int,
                    plan: Plan, *, label: str = "", rep: int = 0) -> RunResult:
    """One closed-loop run at one concurrency on an open session."""
    headers = {"Content-Type": target.content_type}
    gc.collect()  # start each run without a pending collection of the last one's garbage
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_1m = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter_ns()
    measure_ns = wall0 + int(plan.warmup_s * 1e9)
    w = Window(measure_ns, measure_ns + int(plan.duration_s * 1e9), plan.requests)
    await asyncio.gather(*(_worker(session, target, headers, w, i)
                           for i in range(concurrency)))
    client_cpu = (time.process_time() - cpu0) / max((time.perf_counter_ns() - wall0) / 1e9, 1e-9)
    window_s = (w.end_ns - w.measure_ns) / 1e9
    ok = len(w.latencies)
    return RunResult(
        label=label, concurrency=concurrency, rep=rep, url=target.url,
        mode="duration" if plan.requests is None else "requests",
        warmup_s=plan.warmup_s, window_s=window_s, rps=ok / window_s if window_s > 0 else 0.0,
        ok=ok, error_count=sum(w.errors.values()), errors=dict(sorted(w.errors.items())),
        late=w.late, sent=w.sent, client_cpu=round(client_cpu, 3), load_1m=load_1m,
        **latency_summary(w.latencies),
        started_at=started_at, client=client_name(),
    )


async def run_matrix(target: Target, concurrencies: Sequence[int], plan: Plan, *,
                     reps: int = 1, label: str = "", pause_s: float = 1.0,
                     on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Reps interleaved across levels (rep 0 of every level, then rep 1 ...) to spread drift."""
    results: list[RunResult] = []
    async with open_session(max(concurrencies), plan.timeout_s) as session:
        for rep in range(reps):
            for c in concurrencies:
                if results and pause_s > 0:
                    await asyncio.sleep(pause_s)  # let the server finish GC/log flushes
                result = await run_level(session, target, c, plan, label=label, rep=rep)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


async def warm(target: Target, seconds: float, concurrency: int = 16,
               timeout_s: float = 60.0) -> RunResult:
    """Discarded load that brings a JIT-ed server (TorchServe's JVM) to its steady rate."""
    async with open_session(concurrency, timeout_s) as session:
        plan = Plan(warmup_s=0.0, duration_s=seconds, timeout_s=timeout_s)
        return await run_level(session, target, concurrency, plan, label="warm-up")


def format_result(r: RunResult) -> str:
    errors = f" errors={r.errors}" if r.errors else ""
    return (f"{r.label} c={r.concurrency} rep={r.rep}: {r.rps:.1f} req/s p50={r.p50_ms:.2f} "
            f"p90={r.p90_ms:.2f} p99={r.p99_ms:.2f} max={r.max_ms:.2f} ms ok={r.ok}{errors} "
            f"client cpu {r.client_cpu:.0%}")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--payload", required=True, help="file whose bytes are the request body")
    p.add_argument("--content-type", default="application/octet-stream")
    p.add_argument("--method", default="POST")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds discarded per run")
    p.add_argument("--duration", type=float, default=10.0,
                   help="measured seconds (the cap with --requests)")
    p.add_argument("--requests", type=int, help="measure this many completions instead")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--label", default="run")
    p.add_argument("--out", type=Path, help="JSON lines file, appended to")
    p.add_argument("--expect", help="a 2xx body must contain this substring")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    p.add_argument("--pause", type=float, default=1.0, help="idle seconds between runs")
    p.add_argument("--cpus", help="pin this process to these CPUs, e.g. 1 (like taskset -c 1)")
    p.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    return p.parse_args(argv)


@contextlib.contextmanager
def result_sink(path: Path | None) -> Iterator[Callable[[RunResult], None]]:
    """What the command-line clients do with each run: print it, and append it to `path` as
    a JSON line (flushed at once: a crash later keeps the runs already done)."""
    out = path.open("a") if path is not None else None

    def emit(r: RunResult) -> None:
        print(format_result(r), file=sys.stderr, flush=True)
        if out is not None:
            out.write(json.dumps(r.to_dict()) + "\n")
            out.flush()

    try:
        yield emit
    finally:
        if out is not None:
            out.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.cpus:
        pin_process(parse_cpus(args.cpus))
    run: Callable[..., Any] = asyncio.run
    if args.uvloop:
        import uvloop

        run = uvloop.run
    target = Target.from_file(args.base_url, args.path, args.payload, args.content_type,
                              method=args.method, expect=args.expect)
    plan = Plan(args.warmup, args.duration, args.requests, args.timeout)
    levels = [int(c) for c in args.concurrency.split(",")]
    with result_sink(args.out) as emit:
        run(run_matrix(target, levels, plan, reps=args.reps, label=args.label,
                       pause_s=args.pause, on_result=emit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
