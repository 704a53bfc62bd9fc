"""Percentile and aggregation math on fixed numbers, and a short real run of the load generator."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from aiohttp import web

from bench.loadgen import Plan, RunResult, Target, open_session, run_level, run_matrix
from bench.stats import aggregate, latency_summary, percentile, ratio

T = TypeVar("T")
TEN = [float(v) for v in range(1, 11)]


@pytest.mark.parametrize(
    ("p", "expected"),
    [(50, 5.0), (90, 9.0), (99, 10.0), (100, 10.0), (10, 1.0), (1, 1.0), (95, 10.0)],
)
def test_nearest_rank_percentile(p: float, expected: float) -> None:
    assert percentile(TEN, p) == expected


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    hundred = [float(v) for v in range(1, 101)]
    assert [percentile(hundred, p) for p in (50, 90, 99)] == [50.0, 90.0, 99.0]
    with pytest.raises(ValueError):
        percentile(TEN, 0)


def test_latency_summary_converts_ns_to_ms() -> None:
    s = latency_summary([4_000_000, 1_000_000, 3_000_000, 2_000_000])
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"]) == (2.0, 4.0, 4.0, 4.0)
    assert s["mean_ms"] == 2.5
    assert math.isnan(latency_summary([])["p50_ms"])


def _row(label: str, c: int, rps: float, p50: float, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"label": label, "concurrency": c, "rps": rps, "p50_ms": p50,
                              "p90_ms": p50 * 2, "p99_ms": p50 * 3, "max_ms": p50 * 4, "ok": 10}
    row.update(kw)
    return row


def test_aggregate_takes_median_over_reps_and_keeps_label_order() -> None:
    rows = [
        _row("b", 4, 300.0, 3.0), _row("a", 1, 100.0, 1.0, errors={"status:503": 2}),
        _row("b", 4, 100.0, 1.0), _row("a", 1, 120.0, 2.0), _row("b", 1, 50.0, 9.0),
        _row("a", 1, 80.0, 4.0, errors={"status:503": 1, "timeout": 1}), _row("b", 4, 200.0, 2.0),
    ]
    cells = aggregate(rows)
    assert [(c.label, c.concurrency, c.reps) for c in cells] == [
        ("b", 1, 1), ("b", 4, 3), ("a", 1, 3)]
    b4, a1 = cells[1], cells[2]
    assert (b4.rps, b4.rps_min, b4.rps_max, b4.p50_ms, b4.p99_ms) == (200.0, 100.0, 300.0, 2.0, 6.0)
    assert (a1.rps, a1.p50_ms, a1.max_ms, a1.ok) == (100.0, 2.0, 16.0, 30)
    assert a1.errors == {"status:503": 3, "timeout": 1} and a1.error_count == 4


def test_aggregate_ignores_nan_latency_of_a_rep_without_successes() -> None:
    rows = [_row("a", 1, 0.0, math.nan), _row("a", 1, 10.0, 5.0), _row("a", 1, 20.0, 7.0)]
    cells = aggregate(rows)
    assert cells[0].p50_ms == 6.0 and cells[0].rps == 10.0


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _with_server(body: Callable[[str], Awaitable[T]]) -> T:
    async def ok(request: web.Request) -> web.Response:
        assert await request.read() == b'{"x": 1}'
        return web.json_response({"ok": True})

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/fail", fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        return await body(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def _target(base: str, path: str, expect: bytes | None = None) -> Target:
    return Target(base, path, b'{"x": 1}', "application/json", expect=expect)


def test_loadgen_counts_successes_and_errors_by_kind() -> None:
    plan = Plan(warmup_s=0.1, duration_s=0.4)

    async def body(base: str) -> tuple[list[RunResult], RunResult, RunResult]:
        results = await run_matrix(_target(base, "/ok", b'"ok"'), [1, 4], plan, reps=2, pause_s=0)
        async with open_session(4, 5.0) as session:
            failing = await run_level(session, _target(base, "/fail"), 4, plan)
            wrong = await run_level(session, _target(base, "/ok", b"nope"), 2, plan)
        return results, failing, wrong

    results, failing, wrong = asyncio.run(_with_server(body))
    assert [(r.concurrency, r.rep) for r in results] == [(1, 0), (4, 0), (1, 1), (4, 1)]
    for r in results:
        assert r.ok > 0 and r.error_count == 0 and r.errors == {}  # how many: speed, not asserted
        assert r.rps == pytest.approx(r.ok / 0.4)
        assert r.sent >= r.ok + r.late  # warm-up requests were sent but not counted
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert failing.ok == 0 and failing.rps == 0.0 and math.isnan(failing.p50_ms)
    assert failing.errors == {"status:503": failing.error_count} and failing.error_count > 10
    assert wrong.ok == 0 and wrong.errors == {"unexpected_body": wrong.error_count}


def test_loadgen_request_count_mode_and_refused_connection() -> None:
    async def body(base: str) -> RunResult:
        async with open_session(3, 5.0) as session:
            return await run_level(session, _target(base, "/ok"), 3, Plan(0.0, 30.0, requests=50))

    r = asyncio.run(_with_server(body))
    assert r.mode == "requests"
    assert r.ok == 50 and r.window_s < 30 and r.late <= 2

    async def refused() -> RunResult:
        async with open_session(1, 5.0) as session:
            target = _target(f"http://127.0.0.1:{_free_port()}", "/ok")
            return await run_level(session, target, 1, Plan(0.0, 0.2))

    gone = asyncio.run(refused())
    assert gone.ok == 0 and list(gone.errors) == ["exception:ClientConnectorError"]
