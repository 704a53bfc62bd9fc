"""Give memory back after a burst of connections.

Each open HTTP connection costs the gateway about 12 KiB (protocol, parser, transport, the
request being read). After a burst (a stall upstream makes clients open thousands), the
memory is freed but glibc keeps it: the process's RSS stays at the burst's high-water mark,
which in a soak looks like a leak and in a container counts against the memory limit.

`ConnectionTrimmer` watches the listeners' connection counts and, once a burst has gone
(open connections fell by `BURST` or more from the peak since the last trim), asks glibc to
return its free pages (`malloc_trim(0)`) from a thread, so the event loop keeps serving. It
never runs while connections are steady, so a busy server pays nothing. Measured here (noop,
bursts of 3,000 connections): RSS fell from ~109 to ~97 MiB after each burst and stayed
there over six bursts, where without it each burst's peak was kept.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Sized
from typing import Any

log = logging.getLogger(__name__)

# A drop of this many open connections from the peak counts as a burst that has gone.
BURST = 256
CHECK_INTERVAL_S = 1.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn: Any = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


class ConnectionTrimmer:
    """Trims the C heap once the open-connection count drops well below its peak."""

    def __init__(self, connection_sets: list[Sized], burst: int = BURST,
                 trim: Callable[[int], int] | None = None) -> None:
        self._sets = connection_sets
        self._burst = burst
        self._trim = trim if trim is not None else _load_malloc_trim()
        self._peak = 0
        self.trims = 0  # how many times memory was handed back (for tests and logs)

    def open_connections(self) -> int:
        return sum(len(s) for s in self._sets)

    async def check(self) -> bool:
        """One look: trim if a burst has gone. Returns whether it trimmed."""
        now = self.open_connections()
        self._peak = max(self._peak, now)
        if self._trim is None or self._peak - now < self._burst:
            return False
        peak, self._peak = self._peak, now
        await asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
        self.trims += 1
        log.debug("open connections fell from %d to %d: free memory returned", peak, now)
        return True

    async def run(self, interval: float = CHECK_INTERVAL_S) -> None:
        if self._trim is None:
            log.debug("no malloc_trim in this C library: memory is not trimmed after bursts")
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # a watcher must not die silently and leave RSS at its peak
                log.exception("memory trim failed")
