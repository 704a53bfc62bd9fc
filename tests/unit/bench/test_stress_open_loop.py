"""The open-loop client against a real loopback HTTP server that answers, drops and hangs."""

from __future__ import annotations

import asyncio

from aiohttp import web

from bench.stress_load import Tally, open_loop, open_session, tally


async def _serve(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if body == b"hang":
        await asyncio.sleep(3600)  # cancelled when the client gives up and closes
    if body == b"drop":
        assert request.transport is not None
        request.transport.close()  # no answer at all: a transport error for the client
        return web.Response()
    if body == b"busy":
        return web.Response(status=503)
    return web.Response(text='"ok"')


async def _run(bodies: list[bytes], rate: float, seconds: float, hang_after_s: float,
               max_in_flight: int = 4000) -> tuple[int, int, Tally]:
    app = web.Application()
    app.router.add_post("/p", _serve)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with open_session(max_in_flight) as session:
            run = await open_loop(session, f"http://127.0.0.1:{port}/p", bodies,
                                  "application/octet-stream", rate, seconds, hang_after_s,
                                  expect=b'"ok"', max_in_flight=max_in_flight)
    finally:
        await runner.cleanup()
    return run.sent, run.skipped, tally(run.sent, run.outcomes)


def test_every_request_sent_is_answered_failed_or_hung() -> None:
    bodies = [b"x", b"x", b"busy", b"drop", b"hang"]
    sent, skipped, t = asyncio.run(_run(bodies, rate=100, seconds=0.5, hang_after_s=0.5))
    assert (sent, skipped) == (50, 0)
    assert t.statuses == {"200": 20, "503": 10}
    assert t.transport_errors == 10 and t.hung == 10
    assert t.accounted and not t.clean


def test_requests_beyond_the_in_flight_cap_are_skipped_not_sent() -> None:
    sent, skipped, t = asyncio.run(_run([b"hang"], rate=40, seconds=0.5, hang_after_s=0.3,
                                        max_in_flight=5))
    assert sent + skipped == 20 and 0 < sent < 20
    assert t.hung == sent
