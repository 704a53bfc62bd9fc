"""The metrics API (default 127.0.0.1:8082): `GET /metrics`, as TorchServe serves it.

The Prometheus text format by default, OpenMetrics when the scraper's Accept header asks for
it; `?name[]=a&name[]=b` keeps only the named metrics (TorchServe's filter). Rendering runs on
the event loop: a scrape of a few models is a millisecond or two. Before it, the workers are
asked for the handler metric updates they hold (`before`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from prometheus_client.registry import Collector

from serving.gateway.observed import Receive, Scope, Send
from serving.metrics.exposition import negotiate, render


class MetricsApp:
    def __init__(self, collector: Collector,
                 before: Callable[[], Awaitable[None]] | None = None) -> None:
        self.collector = collector
        self.before = before

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") != "/metrics":
            await _error(send, 404, "ResourceNotFoundException",
                         f"Requested resource is not found, please refer to API document: "
                         f"{scope.get('path', '')[:200]}")
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _error(send, 405, "MethodNotAllowedException",
                         "Requested method is not allowed, please refer to API document.",
                         [(b"allow", b"GET, HEAD")])
            return
        query = scope.get("query_string", b"").decode("latin-1")
        names = [v for k, v in parse_qsl(query) if k in ("name[]", "name")]
        accept = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                       if k == b"accept"), None)
        content_type = negotiate(accept)
        if self.before is not None:
            await self.before()
        body = render(self.collector, content_type, names)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body",
                    "body": body if scope.get("method") == "GET" else b""})


async def _error(send: Send, status: int, kind: str, message: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"code": status, "type": kind, "message": message}, indent=2).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
