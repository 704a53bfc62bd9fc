"""Both ends of a worker's Unix socket: a blocking one for the worker, asyncio for the gateway."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from serving.workers.ipc import (
    Blob,
    FrameBuffer,
    Kind,
    Message,
    Oversize,
    ProtocolError,
    decode_body,
    encode,
)

log = logging.getLogger(__name__)

SMALL_FRAME = 64 * 1024
# A frame before the handshake is a HELLO of a few dozen bytes: nothing larger is read.
HELLO_LIMIT = 64 * 1024


def _iov_max() -> int:
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))
    except (ValueError, OSError):
        return 1024


# sendmsg refuses more buffers than this (EMSGSIZE): a batch of 1,023 answers is one more.
IOV_MAX = _iov_max()


def send_buffers(sock: socket.socket, buffers: Sequence[Blob]) -> None:
    """Write every buffer: small frames joined in one write (half the cost of a vectored
    write of the same bytes, measured on a socketpair: ~0.9 vs ~1.9 µs per answer), larger
    ones with vectored writes of at most IOV_MAX buffers each, resuming after short writes
    without joining (copying) the buffers."""
    if sum(map(len, buffers)) < SMALL_FRAME:
        sock.sendall(b"".join(buffers))
        return
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i:i + IOV_MAX])
        while sent:
            size = len(views[i])
            if sent < size:
                views[i] = views[i][sent:]
                break
            sent -= size
            i += 1


class BlockingChannel:
    """The worker's end: one thread reads a frame, runs it, writes the answer.

    While a streaming handler runs, `cancelled` looks ahead in the socket (without blocking)
    for CANCEL messages; other messages read then wait in order for `recv`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=1 << 16))
        # A handler may stream its intermediate answers from threads of its own: one frame
        # at a time, never interleaved.
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._ahead: deque[Message | None] = deque()  # read while looking for CANCELs
        self._cancelled: dict[int, set[int]] = {}  # batch id -> indexes whose client left

    def send(self, kind: Kind, meta: dict[str, Any], blobs: Sequence[Blob] = ()) -> None:
        buffers = encode(kind, meta, blobs)
        with self._send_lock:
            send_buffers(self._sock, buffers)

    def send_two(self, first: tuple[Kind, dict[str, Any]], kind: Kind, meta: dict[str, Any],
                 blobs: Sequence[Blob] = ()) -> None:
        """A small frame (`first`, without blobs) and then another, in one write."""
        buffers = [*encode(*first), *encode(kind, meta, blobs)]
        with self._send_lock:
            send_buffers(self._sock, buffers)

    def recv(self) -> Message | None:
        """The next message other than CANCEL, or None when the gateway closed the
        connection."""
        while True:
            with self._read_lock:
                msg = self._ahead.popleft() if self._ahead else self._read()
            if msg is None or msg.kind != Kind.CANCEL:
                return msg
            self._note_cancel(msg)

    def cancelled(self, batch_id: int) -> set[int]:
        """The indexes of the batch whose client went away, as far as the gateway said so
        until now; reads what has arrived without waiting for more."""
        with self._read_lock:
            while self._readable():
                msg = self._read()
                if msg is not None and msg.kind == Kind.CANCEL:
                    self._note_cancel(msg)
                else:
                    self._ahead.append(msg)
                    if msg is None:
                        break
        return self._cancelled.get(batch_id, set())

    def forget(self, batch_id: int) -> None:
        """A batch is over: its cancellations (and any of older batches) go."""
        for old in [b for b in self._cancelled if b <= batch_id]:
            del self._cancelled[old]

    def _note_cancel(self, msg: Message) -> None:
        batch, index = msg.meta.get("batch"), msg.meta.get("i")
        if type(batch) is int and type(index) is int:
            self._cancelled.setdefault(batch, set()).add(index)

    def _readable(self) -> bool:
        """Whether a frame has (begun to) arrive: buffered already, or in the socket."""
        if self._ahead and self._ahead[-1] is None:
            return False  # the connection is closed
        with self._send_lock:  # non-blocking for a moment: no send may run meanwhile
            self._sock.setblocking(False)
            try:
                return bool(self._rfile.peek(1))
            except BlockingIOError:
                return False
            finally:
                self._sock.setblocking(True)

    def _read(self) -> Message | None:
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
        self._frames = FrameBuffer(lambda kind: self.frame_limit(kind))
        self._on_hello: Callable[[WorkerConnection, Message], None] | None = on_hello
        self.on_message: Callable[[Message], None] = lambda msg: None
        self.on_lost: Callable[[Exception | None], None] = lambda exc: None
        # The most body bytes a frame of a kind may declare; whoever owns the connection after
        # the handshake sets its own.
        self.frame_limit: Callable[[int], int] = lambda kind: HELLO_LIMIT
        # A frame over the limit (its body is being skipped); by default the worker is dropped.
        self.on_oversize: Callable[[Oversize], None] = self._drop_oversize
        # uvloop's transports are not asyncio.Transport instances, so only the methods count.
        self.transport: Any = None
        self.closed = False
        # Frames sent in this turn of the event loop, written together at its end (None:
        # nothing waiting): under load several requests are dispatched per turn (~3.8 at
        # c=16 for a noop), and one write wakes the worker once for all of them.
        self._unsent: list[Blob] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        frames = self._frames
        frames.append(data)
        while not self.closed:
            try:
                msg = frames.next()
            except ProtocolError as e:
                # The stream cannot be resynchronised: drop the worker (its requests get 502
                # and it is replaced) rather than let the event loop log a fatal protocol error.
                log.error("malformed frame from a worker (%s); closing its connection", e)
                self.close()
                return
            if msg is None:
                return
            if self._on_hello is not None:
                if not isinstance(msg, Message) or msg.kind != Kind.HELLO:
                    self.close()
                    return
                hello, self._on_hello = self._on_hello, None
                hello(self, msg)
                continue
            try:
                if isinstance(msg, Oversize):
                    self.on_oversize(msg)
                else:
                    self.on_message(msg)
            except Exception:
                # A bug in what handles a message must not look like a dead worker: the
                # event loop would close this transport and every request on it would fail.
                log.exception("error handling a message of kind %s from a worker", msg.kind)

    def _drop_oversize(self, frame: Oversize) -> None:
        log.error("a worker sent a frame of %d bytes (kind %d; at most %d expected); closing "
                  "its connection", frame.size, frame.kind, frame.limit)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(exc)

    def send(self, kind: Kind, meta: dict[str, Any], blobs: Sequence[Blob] = ()) -> None:
        if self.transport is None or self.closed:
            raise ConnectionError("worker connection is closed")
        unsent = self._unsent
        if unsent is None:
            assert self._loop is not None  # set with the transport
            self._unsent = unsent = []
            self._loop.call_soon(self._write)
        unsent.extend(encode(kind, meta, blobs))

    def _write(self) -> None:
        """Write what this turn of the loop sent, in the order it was sent."""
        unsent, self._unsent = self._unsent, None
        if not unsent or self.closed:
            return
        if sum(len(b) for b in unsent) < SMALL_FRAME:
            # One write of joined small frames is cheaper than a vectored write.
            self.transport.write(b"".join(unsent))
        else:
            self.transport.writelines(unsent)

    def close(self) -> None:
        # What was sent before goes out first (the transport writes its buffer before it
        # closes); then closed at once, not when the loop reports it: nothing more is sent
        # or handled.
        if self._unsent and not self.closed:
            self._write()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
