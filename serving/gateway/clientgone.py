"""Telling an endpoint that its HTTP client went away, without a task per request.

ASGI's way is to await `receive()` until it returns `http.disconnect`, which takes a task
per request that is created, started, cancelled and run once more to finish; on the
inference hot path that cost about as much as the routing of the request. The HTTP protocol
(serving/gateway/httplimits.py) instead puts a `ClientGone` into each request's scope and
fires it when the connection is lost before the response completed; an endpoint that finds
one registers a callback, and one that does not (another ASGI server) watches `receive()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

EXTENSION = "serving.client_gone"


class ClientGone:
    """Fired at most once, when the client of one request goes away unanswered."""

    __slots__ = ("_callback", "fired")

    def __init__(self) -> None:
        self._callback: Callable[[], None] | None = None
        self.fired = False

    def on_fire(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` when the client goes (at once if it has gone); None: nobody
        listens any more."""
        self._callback = callback
        if self.fired and callback is not None:
            self._callback = None
            callback()

    def fire(self) -> None:
        self.fired = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def client_gone(scope: MutableMapping[str, Any]) -> ClientGone | None:
    """The request's ClientGone, if the server that runs the app provides one."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None


def gone_future(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]]
                ) -> Awaitable[Any]:
    """What the data plane's `disconnected` takes: a future the request's ClientGone
    completes (awaiting it costs no task), or `receive()` under another ASGI server."""
    gone = client_gone(scope)
    if gone is None:
        return receive()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fire() -> None:
        if not future.done():
            future.set_result(None)

    gone.on_fire(fire)
    return future
