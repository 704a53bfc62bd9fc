"""Polling with a deadline: how tests wait for a server to reach a state (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.server import ServerProcess


def wait_for(predicate: Callable[[], Any], what: str = "condition", timeout: float = 120
             ) -> Any:
    """The first truthy value of `predicate()`; an AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_queued(server: ServerProcess, model: str, pending: int, timeout: float = 120) -> None:
    """Wait until `model` has every worker busy and `pending` requests waiting (not started:
    in its queue, or sent ahead to a busy worker's socket): a request reached a worker, or
    the queue, when describe says so, not after a guess."""
    def reached() -> bool:
        (described,) = server.management.get(f"/models/{model}").json()
        return (all(w["busy"] for w in described["workers"])
                and described["jobQueueStatus"]["pendingRequests"] == pending)
    wait_for(reached, f"{model}: workers busy and {pending} queued", timeout)


def wait_held(server: ServerProcess, model: str, batches: int, timeout: float = 120) -> None:
    """Wait until the first worker of `model` holds `batches` batches: the one it runs and
    those sent ahead to wait in its socket (describe's inflightBatches)."""
    def reached() -> bool:
        (described,) = server.management.get(f"/models/{model}").json()
        return described["workers"][0]["inflightBatches"] == batches
    wait_for(reached, f"{model}: its worker holds {batches} batches", timeout)
