"""Size limits on a request's head (URL and headers), enforced in uvicorn's httptools protocol.

httptools (llhttp) bounds neither: it buffers a header value of any size, any number of
headers, and a URL up to its parser's 64 KiB offset limit. The protocol below refuses a head
past `max_request_line` (414) or `max_header_size` / `max_headers` (431) with TorchServe's
JSON error body and closes the connection. A normal request costs a few attribute updates
per read: the exact sizes are only added up when the bytes read could exceed the limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.errors import HeadersTooLarge, ServingError, UriTooLong, http_status
from serving.gateway import clientgone, cork
from serving.gateway.hotpath import HotCycle, HotRoute
from serving.gateway.responses import error_body
from serving.routing.requestids import new_request_id
from serving.settings import Settings

log = logging.getLogger(__name__)

# Seconds a refused connection keeps reading (and dropping) what the client still sends.
LINGER_S = 2.0


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that is over a limit."""

    def __init__(self, error: ServingError) -> None:
        super().__init__(error.message)
        self.error = error


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on the request line and the headers."""

    max_request_line = 8192
    max_header_size = 65536
    max_headers = 100
    # What a head within all three limits can take on the wire, with its separators.
    head_budget = 8192 + 65536 + 4 * 100 + 64
    # The inference API's predictions, answered here without ASGI (serving/gateway/hotpath.py)
    hot_route: HotRoute | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # between the first byte of a request and its blank line
        self._heads = 0  # heads completed on this connection
        self._head_bytes = 0  # bytes of reads that began and ended inside the current head
        self._read = 0  # size of the read being parsed
        self._refused = False
        self._hot: HotCycle | None = None  # the prediction this protocol answers itself
        # Loop time the connection became idle (its last answer sent); None while a request
        # is on its way or being answered.
        self._idle_since: float | None = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: drop the rest of the request
        began_in_head, heads = self._in_head, self._heads
        self._read = len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
            return
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, HeadTooLarge):
                self._refuse(e.__context__.error)
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        if began_in_head and heads == self._heads:
            # The whole read belonged to one unfinished head: httptools holds it until the
            # head ends (a header value is only handed over whole), so count it here.
            self._head_bytes += len(data)
            if self._head_bytes > self.head_budget:
                self._refuse(self._too_large_so_far())

    # The keep-alive timer. uvicorn creates one per answer and cancels it when the next
    # request's bytes arrive: a timer handle made and dropped per request. Here one timer per
    # connection stays armed; when it fires early (the connection was busy meanwhile) it is
    # pushed back to a keep-alive period after the connection last became idle.
    def on_response_complete(self) -> None:
        if self.pipeline or self.transport.is_closing():
            super().on_response_complete()  # a pipelined request starts: no timer
            return
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self._arm_keep_alive(self._idle_since + self.timeout_keep_alive)

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # busy: an armed timer finds so when it fires

    def _arm_keep_alive(self, at: float) -> None:
        self.timeout_keep_alive_task = self.loop.call_at(at, self._keep_alive_due, at)

    def _keep_alive_due(self, at: float) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # a request is under way; its answer arms the timer again
        due = self._idle_since + self.timeout_keep_alive
        if due > at:
            self._arm_keep_alive(due)
            return
        self.timeout_keep_alive_handler()

    def timeout_keep_alive_handler(self) -> None:
        """Close an idle keep-alive connection, but not one with a request waiting unread.

        When the event loop falls seconds behind (overload on a shared core), libuv runs the
        due keep-alive timer before it polls for reads: uvicorn would then close a
        connection whose next request already sits in the socket, and the client would get
        no answer ("Server disconnected"). Such a connection is not idle: look again later.
        """
        if _unread_bytes_wait(self.transport):
            self._idle_since = self.loop.time()
            if self.timeout_keep_alive_task is None:
                self._arm_keep_alive(self._idle_since + self.timeout_keep_alive)
            return
        super().timeout_keep_alive_handler()

    def _upgrade(self) -> None:
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        # (uvicorn's scope type allows only dicts as extensions; ASGI allows any value.)
        scope: Any = self.scope
        scope["extensions"] = {clientgone.EXTENSION: clientgone.ClientGone(),
                               cork.EXTENSION: self.transport}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cork.CorkedTransport(transport))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        hot = self._hot
        if hot is not None and not hot.response_complete:
            hot.client_gone()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        # The request being answered loses its client (uvicorn marks it disconnected).
        if cycle is not None and cast(object, cycle) is not hot and cycle.disconnected:
            gone = clientgone.client_gone(cast(Any, cycle.scope))
            if gone is not None:
                gone.fire()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        if len(self.url) > self.max_request_line:
            raise HeadTooLarge(self._url_too_long())
        if len(self.headers) > self.max_headers:
            raise HeadTooLarge(HeadersTooLarge(
                f"Request has {len(self.headers)} headers; at most {self.max_headers} are "
                f"accepted (max_headers)"))
        if self._head_bytes + self._read > self.max_header_size:
            size = sum(len(name) + len(value) for name, value in self.headers)
            if size > self.max_header_size:
                raise HeadTooLarge(self._headers_too_large())
        hot = self.hot_route
        if hot is not None:
            cycle = hot.begin(self)
            if cycle is not None:
                self.cycle = self._hot = cycle  # type: ignore[assignment]
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        hot = self._hot
        if hot is not None and cast(object, self.cycle) is hot:
            hot.body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        hot = self._hot
        if hot is not None and cast(object, self.cycle) is hot:
            hot.complete()
        else:
            super().on_message_complete()

    def _too_large_so_far(self) -> ServingError:
        if len(self.url) > self.max_request_line:
            return self._url_too_long()
        return self._headers_too_large()

    def _url_too_long(self) -> ServingError:
        return UriTooLong(f"Request URL exceeds max_request_line ({self.max_request_line} "
                          f"bytes)")

    def _headers_too_large(self) -> ServingError:
        return HeadersTooLarge(f"Request headers exceed max_header_size "
                               f"({self.max_header_size} bytes)")

    def _refuse(self, error: ServingError) -> None:
        """Answer with TorchServe's error body and end the connection: the parser cannot
        go on."""
        log.warning("refused a request from %s: %s", _client(self.client), error.message)
        body = error_body(error)
        head = [STATUS_LINE[http_status(error.code)]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [b"content-type: application/json\r\n",
                 b"content-length: " + str(len(body)).encode() + b"\r\n",
                 b"x-request-id: " + new_request_id().encode() + b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        # Half-close and keep reading for a moment: closing with unread bytes in the socket
        # makes the kernel reset the connection, which can destroy the answer on its way.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def _unread_bytes_wait(transport: Any) -> bool:
    """Whether the peer has sent bytes the server has not read yet (EOF counts as none).

    uvloop hands out a socket-like object that cannot recv, so the check peeks on a
    duplicate of its descriptor; it runs once per idle connection per keep-alive period.
    """
    if transport is None or transport.is_closing():
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
            return bool(dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing to read (EAGAIN), or a socket already gone
        return False


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown client"


def limited_protocol(settings: Settings, hot_route: HotRoute | None = None
                     ) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), carrying the settings' limits and,
    for the inference API, the route that answers predictions without ASGI."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "hot_route": hot_route,
        "max_request_line": settings.max_request_line,
        "max_header_size": settings.max_header_size,
        "max_headers": settings.max_headers,
        "head_budget": (settings.max_request_line + settings.max_header_size
                        + 4 * settings.max_headers + 64),
    })
