"""Faults injected into a running server while it is under load, and the check that it recovered.

Process faults (kill -9, SIGSTOP) and scaling go through the operating system and the
management API; handler faults (raise, wrong count, sleep) ride in request bodies that
`bench/handlers/fault_handler.py` acts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class FaultContext:
    """What an injector needs: where the server is, which model, how long the load lasts."""

    session: aiohttp.ClientSession
    management_url: str
    model: str
    duration_s: float
    ping_timeout_s: float
    hang_after_s: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.events.append(f"t={time.monotonic() - self.t0:.1f}s {text}")


Injector = Callable[[FaultContext], Coroutine[Any, Any, None]]


async def describe(session: aiohttp.ClientSession, management_url: str,
                   model: str) -> list[dict[str, Any]]:
    """The model's workers as GET /models/NAME lists them ([] when it is not registered)."""
    async with session.get(f"{management_url}/models/{model}") as resp:
        if resp.status != 200:
            return []
        described = json.loads(await resp.read())
    return [w for entry in described for w in entry.get("workers", [])]


async def _ready_pid(ctx: FaultContext) -> int | None:
    workers = await describe(ctx.session, ctx.management_url, ctx.model)
    pids = [int(w["pid"]) for w in workers if w.get("status") == "READY" and w.get("pid", -1) > 0]
    return pids[0] if pids else None


async def _at(ctx: FaultContext, fraction: float) -> None:
    await asyncio.sleep(max(0.0, ctx.t0 + ctx.duration_s * fraction - time.monotonic()))


async def kill_worker(ctx: FaultContext) -> None:
    """kill -9 one READY worker a third into the load."""
    await _at(ctx, 1 / 3)
    pid = await _ready_pid(ctx)
    if pid is None:
        ctx.note("no READY worker to kill")
        return
    os.kill(pid, signal.SIGKILL)
    ctx.note(f"SIGKILL worker pid {pid}")


async def stop_worker(ctx: FaultContext) -> None:
    """SIGSTOP one worker for the ping timeout plus 3 s, then SIGCONT (if it still exists)."""
    await _at(ctx, 1 / 4)
    pid = await _ready_pid(ctx)
    if pid is None:
        ctx.note("no READY worker to stop")
        return
    os.kill(pid, signal.SIGSTOP)
    ctx.note(f"SIGSTOP worker pid {pid}")
    await asyncio.sleep(ctx.ping_timeout_s + 3.0)
    try:
        os.kill(pid, signal.SIGCONT)
        ctx.note(f"SIGCONT worker pid {pid} (still existed)")
    except ProcessLookupError:
        ctx.note(f"worker pid {pid} was gone by SIGCONT (replaced)")


async def _scale(ctx: FaultContext, workers: int) -> None:
    url = (f"{ctx.management_url}/models/{ctx.model}?min_worker={workers}"
           f"&max_worker={workers}&synchronous=true")
    try:
        async with ctx.session.put(url, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            text = (await resp.read()).decode(errors="replace")[:200]
            ctx.note(f"PUT min_worker={workers}: {resp.status} {text.strip()}")
    except (aiohttp.ClientError, TimeoutError) as e:
        ctx.note(f"PUT min_worker={workers}: {type(e).__name__} {e}")


async def scale_down_up(ctx: FaultContext, low: int = 1, high: int = 2) -> None:
    """Scale to `low` workers a third in, back to `high` two thirds in, load running throughout."""
    await _at(ctx, 1 / 3)
    await _scale(ctx, low)
    await _at(ctx, 2 / 3)
    await _scale(ctx, high)


async def scale_to_zero(ctx: FaultContext, high: int = 2) -> None:
    """Scale to 0 workers a quarter in and back only once the load is over and every request
    had its hang deadline: a queued request that nothing answers shows up as hung."""
    await _at(ctx, 1 / 4)
    await _scale(ctx, 0)
    await asyncio.sleep(max(0.0, ctx.t0 + ctx.duration_s + ctx.hang_after_s + 1.0
                            - time.monotonic()))
    await _scale(ctx, high)


INJECTORS: dict[str, Injector] = {
    "kill9": kill_worker,
    "sigstop": stop_worker,
    "scale": scale_down_up,
    "scale-zero": scale_to_zero,
}


async def after_check(session: aiohttp.ClientSession, base_url: str, management_url: str,
                      model: str, body: bytes, content_type: str, workers: int,
                      deadline_s: float) -> dict[str, Any]:
    """Is the server still serving: /ping, a 200 for a normal request, all workers READY.

    Polled up to `deadline_s`: a replaced worker may sit in its restart back-off for a while.
    """
    t0 = time.monotonic()
    out: dict[str, Any] = {"ping": None, "predict": None, "ready_workers": 0,
                           "registered": False, "recovered_s": None}
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{base_url}/ping") as resp:
                out["ping"] = resp.status
            async with session.post(f"{base_url}/predictions/{model}", data=body,
                                    headers={"Content-Type": content_type}) as resp:
                await resp.read()
                out["predict"] = resp.status
            listed = await describe(session, management_url, model)
            out["registered"] = bool(listed)
            out["ready_workers"] = sum(w.get("status") == "READY" for w in listed)
        if (out["ping"] == 200 and out["predict"] == 200
                and out["ready_workers"] >= workers):
            out["recovered_s"] = round(time.monotonic() - t0, 2)
            return out
        if time.monotonic() - t0 > deadline_s:
            return out
        await asyncio.sleep(0.5)
