"""A corked connection holds its writes until uncorked, and never loses or reorders them:
closing (or half-closing) it sends what is held first. Real uvloop transports on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop

from serving.gateway.cork import CorkedTransport


class _Keep(asyncio.Protocol):
    def __init__(self, made: asyncio.Future[Any]) -> None:
        self._made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made.set_result(transport)


async def _read_until_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4096), 10):
        data += chunk
    return data


async def _scenario(end: str) -> tuple[bytes, bytes]:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Any] = loop.create_future()
    server = await loop.create_server(lambda: _Keep(made), "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    client.setblocking(False)
    try:
        transport = CorkedTransport(await made)
        transport.cork()
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        await asyncio.sleep(0.05)  # a write that went out would be readable by now
        try:
            early = client.recv(4096)
        except BlockingIOError:
            early = b""
        if end == "uncork":
            transport.uncork()
            transport.write(b"-after")  # uncorked: straight through, after what was held
            transport.close()
        elif end == "close":
            transport.close()
        else:
            transport.write_eof()
        return early, await _read_until_eof(loop, client)
    finally:
        client.close()
        server.close()


def test_held_writes_leave_together_when_uncorked() -> None:
    early, data = uvloop.run(_scenario("uncork"))
    assert early == b""
    assert data == b"HTTP/1.1 200 OK\r\n\r\nbody-after"


def test_closing_a_corked_connection_sends_what_it_holds_first() -> None:
    for end in ("close", "write_eof"):
        early, data = uvloop.run(_scenario(end))
        assert early == b"" and data == b"HTTP/1.1 200 OK\r\n\r\nbody", end
