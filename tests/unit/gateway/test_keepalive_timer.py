"""The keep-alive timer does not close a connection whose next request waits unread.

On an overloaded loop the timer and the client's next request become due in the same turn,
and libuv runs timers before it reads. The test recreates that turn exactly: a real uvicorn
server with the gateway's protocol on a real socket, the client's bytes already in the
server's socket, and the timer's handler run before the loop has read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
import uvloop

from serving.gateway.httplimits import limited_protocol
from serving.settings import Settings

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _recv_response(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"ok"):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        if not chunk:
            break
        data += chunk
    return data


@contextlib.asynccontextmanager
async def _answered_once(**config: Any) -> AsyncIterator[
        tuple[asyncio.AbstractEventLoop, socket.socket, Any]]:
    """A real uvicorn server with the gateway's protocol, one client connection that has had
    one answer: (loop, client socket, the server's protocol of that connection)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        _app, http=limited_protocol(Settings()), lifespan="off", log_config=None,
        access_log=False, **config))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    client = socket.create_connection(listener.getsockname())
    client.setblocking(False)
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        await loop.sock_sendall(client, REQUEST)
        first = await _recv_response(loop, client)
        assert first.startswith(b"HTTP/1.1 200")
        (protocol,) = server.server_state.connections
        yield loop, client, protocol
    finally:
        client.close()
        server.should_exit = True
        await serving


async def _scenario(unread: bool) -> tuple[bytes, bool]:
    async with _answered_once() as (loop, client, protocol):
        if unread:
            # Loopback TCP delivers within send(): the bytes are in the server's socket now,
            # and the loop has not polled since.
            client.send(REQUEST)
        protocol.timeout_keep_alive_handler()  # the due timer runs first, as on a busy loop
        answer = await _recv_response(loop, client) if unread else b""
        return answer, protocol.transport.is_closing()


def test_timer_keeps_a_connection_whose_request_waits_unread() -> None:
    answer, closed = uvloop.run(_scenario(unread=True))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
    assert not closed


def test_timer_closes_a_connection_that_is_really_idle() -> None:
    _, closed = uvloop.run(_scenario(unread=False))
    assert closed


async def _lazy_timer_scenario() -> tuple[bool, bool, bool]:
    """One timer per connection: when it fires for a period that a later request cut short,
    it is pushed back instead of closing; once the connection has been idle a whole period
    after its last answer, it closes it."""
    async with _answered_once(timeout_keep_alive=5) as (loop, client, protocol):
        first_timer = protocol.timeout_keep_alive_task
        await loop.sock_sendall(client, REQUEST)  # a second request on the same connection
        await _recv_response(loop, client)
        one_timer = protocol.timeout_keep_alive_task is first_timer is not None
        # The timer armed after the first answer comes due: the connection has not been idle
        # for a whole period since its second answer, so it stays open.
        first_timer.cancel()
        protocol._keep_alive_due(protocol._idle_since + 4.9)
        kept = not protocol.transport.is_closing() and \
            protocol.timeout_keep_alive_task is not None
        protocol.timeout_keep_alive_task.cancel()
        protocol._keep_alive_due(protocol._idle_since + 5)  # a whole idle period: closed
        return one_timer, kept, protocol.transport.is_closing()


def test_one_keep_alive_timer_per_connection_closes_only_when_idle() -> None:
    one_timer, kept, closed = uvloop.run(_lazy_timer_scenario())
    assert one_timer, "the second answer armed a timer of its own"
    assert kept, "closed before a whole keep-alive period had passed since the last answer"
    assert closed
