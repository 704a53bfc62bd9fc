"""How many batches a worker may hold by default: the one it runs and those sent ahead to
wait in its socket, sized by its recent batch times.

Used when neither the handler (`can_overlap`) nor the model config (`maxInflightBatches`)
names a depth: always the running batch and the next one; more (up to
`default_max_inflight_batches`) while the batches already held would run within
SEND_AHEAD_BUDGET_S. Fast batches (a noop, a small model) then reach the worker many at a
time and it runs them without a sleep and a wake-up each; a batch held behind others of a
busy worker, while another worker may free up first, waits at most about this long.
"""

from __future__ import annotations

SEND_AHEAD_BUDGET_S = 0.004
MIN_SEND_AHEAD_DEPTH = 2
# Weight of the latest batch in the running estimate of a batch's time.
SERVICE_EWMA = 0.1


def send_ahead_depth(batch_seconds: float, cap: int) -> int:
    """Batches a worker may hold (running and sent ahead) when a batch takes `batch_seconds`
    (0: not measured yet): the running one plus as many as run within SEND_AHEAD_BUDGET_S,
    at least MIN_SEND_AHEAD_DEPTH in all, at most `cap`."""
    fits = 1 + int(SEND_AHEAD_BUDGET_S / batch_seconds) if batch_seconds > 0.0 else 0
    return min(cap, max(MIN_SEND_AHEAD_DEPTH, fits))


class SendAhead:
    """One worker's running estimate of a batch's time, and the depth it gives."""

    __slots__ = ("cap", "depth", "estimate")

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.estimate = 0.0  # seconds; 0: none measured yet
        self.depth = send_ahead_depth(0.0, self.cap)

    def observe(self, seconds: float) -> int:
        """Fold one batch's time (its start to its answer) in; the depth now."""
        est = self.estimate
        est = seconds if est == 0.0 else est + SERVICE_EWMA * (seconds - est)
        self.estimate = est
        self.depth = send_ahead_depth(est, self.cap)
        return self.depth
