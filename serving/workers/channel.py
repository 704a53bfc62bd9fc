"""Both ends of a worker's Unix socket: a blocking one for the worker, asyncio for the gateway."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from serving.workers.ipc import (
    Blob,
    FrameBuffer,
    Kind,
    Message,
    ProtocolError,
    decode_body,
    encode,
)

log = logging.getLogger(__name__)

SMALL_FRAME = 64 * 1024


class BlockingChannel:
    """The worker's end: one thread reads a frame, runs it, writes the answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._rfile = sock.makefile("rb", buffering=1 << 16)

    def send(self, kind: Kind, meta: dict[str, Any], blobs: Sequence[Blob] = ()) -> None:
        buffers = encode(kind, meta, blobs)
        total = sum(len(b) for b in buffers)
        sent = self._sock.sendmsg(buffers)
        if sent < total:
            # A short write only happens for large frames: send the rest the plain way.
            rest = b"".join(bytes(b) for b in buffers)[sent:]
            self._sock.sendall(rest)

    def recv(self) -> Message | None:
        """The next message, or None when the gateway closed the connection."""
        head = self._rfile.read(4)
        if len(head) < 4:
            return None
        size = int.from_bytes(head, "little")
        body = self._rfile.read(size)
        if len(body) < size:
            return None
        return decode_body(memoryview(body))

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


class WorkerConnection(asyncio.Protocol):
    """The gateway's end of one worker's socket; hands each message to `on_message`."""

    def __init__(self, on_hello: Callable[[WorkerConnection, Message], None]) -> None:
        self._frames = FrameBuffer()
        self._on_hello: Callable[[WorkerConnection, Message], None] | None = on_hello
        self.on_message: Callable[[Message], None] = lambda msg: None
        self.on_lost: Callable[[Exception | None], None] = lambda exc: None
        # uvloop's transports are not asyncio.Transport instances, so only the methods count.
        self.transport: Any = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._frames.feed(data)
        except ProtocolError as e:
            # The stream cannot be resynchronised: drop the worker (its requests get 502 and
            # it is replaced) rather than let the event loop log a fatal protocol error.
            log.error("malformed frame from a worker (%s); closing its connection", e)
            self.close()
            return
        for msg in messages:
            if self._on_hello is not None:
                if msg.kind != Kind.HELLO:
                    self.close()
                    return
                hello, self._on_hello = self._on_hello, None
                hello(self, msg)
                continue
            try:
                self.on_message(msg)
            except Exception:
                # A bug in what handles a message must not look like a dead worker: the
                # event loop would close this transport and every request on it would fail.
                log.exception("error handling a %s message from a worker", msg.kind.name)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(exc)

    def send(self, kind: Kind, meta: dict[str, Any], blobs: Sequence[Blob] = ()) -> None:
        if self.transport is None or self.closed:
            raise ConnectionError("worker connection is closed")
        buffers = encode(kind, meta, blobs)
        if len(buffers) == 2 or sum(len(b) for b in buffers) < SMALL_FRAME:
            # One write of a joined small frame is cheaper than a vectored write.
            self.transport.write(b"".join(buffers))
        else:
            self.transport.writelines(buffers)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
