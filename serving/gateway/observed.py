"""What every HTTP answer is seen by: TorchServe's Requests2XX/4XX/5XX and the access log.

One ASGI wrapper per HTTP API (inference, management) notes the status of each response as it
starts; the request path pays a closure and a counter increment, and an access-log line only
when the access log is on. Without the access log, neither the wrapper nor its `send` is a
coroutine of its own: each hands back the awaitable of what it wraps (a coroutine frame less
per call, three per request), so uvicorn must be told the app speaks ASGI 3
(`interface="asgi3"`: it cannot tell from a plain `__call__`).

On the prediction routes (`counted_by_app`), without the access log, not even the closure:
the wrapper puts its counters into the scope and hands `send` through, and whatever answers
there (the token guard, the inference app's router and endpoint) calls `count_status` just
before it starts its response. On a noop request the Python calls of the wrapped `send` were
a measurable part of what metrics cost (bench/results/metrics/).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.metrics.catalog import ServerMetrics
from serving.metrics.instruments import CounterChild

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# The scope key under which Observed leaves its counters to an app that counts its own
# responses (absent: the app counts nothing, Observed does or nobody does).
STATUS_COUNTS = "serving.status_counts"


# Requests2XX/4XX/5XX by status class (index 2, 4, 5); None where a class counts nowhere.
StatusCounts = list[CounterChild | None]


def status_counts(metrics: ServerMetrics | None) -> StatusCounts:
    """Requests2XX/4XX/5XX, bound once: a status class to the child it counts in (1xx and
    3xx count nowhere; all of them nowhere without metrics)."""
    by_class: StatusCounts = [None] * 6
    if metrics is not None:
        for cls in (2, 4, 5):
            by_class[cls] = metrics.http_status(cls * 100)
    return by_class


def count_in(by_class: StatusCounts, code: int) -> None:
    """Count a response of status `code` (outside HTTP's range: it answers 500)."""
    child = by_class[(code if 100 <= code <= 599 else 500) // 100]
    if child is not None:
        child.value += 1


def count_status(scope: Scope, code: int) -> None:
    """For an app on a route Observed leaves to it: count the response of status `code` it is
    about to start. `count_in` written out: this runs for every prediction."""
    by_class = scope.get(STATUS_COUNTS)
    if by_class is not None:
        child = by_class[(code if 100 <= code <= 599 else 500) // 100]
        if child is not None:
            child.value += 1


def counting(by_class: StatusCounts, send: Send) -> Send:
    """`send`, counting the status class of the response it starts."""

    def count(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            count_in(by_class, message["status"])
        return send(message)

    return count


def counted(scope: Scope, send: Send) -> Send:
    """`send` that counts the response it starts if Observed left the count to the app: for
    the rarer answers on such a route."""
    by_class = scope.get(STATUS_COUNTS)
    return send if by_class is None else counting(by_class, send)


class Observed:
    """Counts responses by status class and writes the access log, around `app`."""

    def __init__(self, app: App, metrics: ServerMetrics | None,
                 access: logging.Logger | None, access_json: bool = False,
                 counted_by_app: tuple[str, ...] = ()) -> None:
        self.app = app
        self.access = access
        self.access_json = access_json
        # Path prefixes whose responses the app counts itself (see count_status).
        self.counted_by_app = counted_by_app
        self._by_class = status_counts(metrics)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        if self.access is None:
            if scope["path"].startswith(self.counted_by_app):
                scope[STATUS_COUNTS] = self._by_class
                return self.app(scope, receive, send)
            return self.app(scope, receive, counting(self._by_class, send))
        return self._logged(scope, receive, send)

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        seen: list[Message] = []
        by_class = self._by_class

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.append(message)
                count_in(by_class, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            if self.access is not None:
                self._log(scope, seen[0] if seen else None, time.perf_counter() - start)

    def _log(self, scope: Scope, start: Message | None, seconds: float) -> None:
        assert self.access is not None
        client = scope.get("client") or ("-", 0)
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        status = start["status"] if start is not None else 0  # 0: no answer (client gone)
        ms = round(seconds * 1000)
        if self.access_json:
            request_id = next((v.decode("latin-1") for k, v in (start or {}).get("headers", ())
                               if k.lower() == b"x-request-id"), None)
            self.access.info("%s", json.dumps({
                "remote": f"{client[0]}:{client[1]}", "method": scope.get("method"),
                "path": target, "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "status": status, "duration_ms": ms, "request_id": request_id,
            }, separators=(",", ":")))
        else:
            # TorchServe's access_log line: /remote:port "METHOD /path HTTP/1.1" status ms
            self.access.info('/%s:%s "%s %s HTTP/%s" %d %d', client[0], client[1],
                             scope.get("method"), target, scope.get("http_version", "1.1"),
                             status, ms)
