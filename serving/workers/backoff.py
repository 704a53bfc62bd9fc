"""Restart back-off of one worker slot, counted from its last failure."""

from __future__ import annotations

RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# A failure this long after the previous one starts the sequence again: the slot was healthy
# in between, however long ago its process started (a worker that served for an hour and
# then crashed is back after the shortest delay; one that crashes again and again while
# loading backs off further each time).
QUIET_PERIOD_S = 60.0


class Backoff:
    """Delays before restarting a failed worker: 1 s, 2 s, ... 30 s while failures follow one
    another within `quiet` seconds; back to the first delay after a quiet period."""

    def __init__(self, delays: tuple[float, ...] = RESTART_BACKOFF,
                 quiet: float = QUIET_PERIOD_S) -> None:
        self._delays = delays
        self._quiet = quiet
        self._failures = 0
        self._last: float | None = None

    def next_delay(self, now: float) -> float:
        """Record a failure at `now` (monotonic seconds) and return the delay before the
        next attempt."""
        if self._last is not None and now - self._last >= self._quiet:
            self._failures = 0
        self._last = now
        delay = self._delays[min(self._failures, len(self._delays) - 1)]
        self._failures += 1
        return delay
