"""Both ends of a worker socket over a real socketpair: many-buffer writes, oversize frames."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from serving.workers.channel import IOV_MAX, BlockingChannel, WorkerConnection
from serving.workers.ipc import HEADER, FrameBuffer, Kind, Message, Oversize, encode


def test_a_frame_of_more_buffers_than_iov_max_and_more_bytes_than_the_socket_holds() -> None:
    a, b = socket.socketpair()
    blobs = [bytes([i % 251]) * 1500 for i in range(2 * IOV_MAX + 3)]  # ~3 MB, short writes
    got: list[Message | Oversize] = []

    def read() -> None:
        frames = FrameBuffer()
        while not got and (data := b.recv(1 << 16)):
            got.extend(frames.feed(data))

    reader = threading.Thread(target=read)
    reader.start()
    BlockingChannel(a).send(Kind.RESULT, {"batch": 1}, blobs)
    reader.join(timeout=60)
    a.close()
    b.close()
    (msg,) = got
    assert isinstance(msg, Message) and msg.meta == {"batch": 1}
    assert [bytes(x) for x in msg.blobs] == blobs


def test_an_oversize_frame_is_reported_at_its_header_and_skipped_in_pieces() -> None:
    frames = FrameBuffer(limit=lambda kind: 100 if kind == Kind.RESULT else 10**6)
    big = b"".join(bytes(x) for x in encode(Kind.RESULT, {"batch": 1}, [b"x" * 5000]))
    after = b"".join(bytes(x) for x in encode(Kind.PONG, {"seq": 7}))
    wire = big + after
    events = [e for i in range(0, len(wire), 700) for e in frames.feed(wire[i:i + 700])]
    assert events[0] == Oversize(Kind.RESULT, len(big) - 4, 100)
    assert isinstance(events[1], Message) and events[1].meta == {"seq": 7}
    assert len(events) == 2
    assert len(frames._buf) < 700  # never more than one piece held


def test_a_declared_4_gib_frame_waits_for_nothing() -> None:
    frames = FrameBuffer(limit=lambda kind: 1000)
    (event,) = frames.feed(HEADER.pack(2**32 - 1, Kind.RESULT, 10) + b"abc")
    assert event == Oversize(Kind.RESULT, 2**32 - 1, 1000)
    assert list(frames.feed(b"y" * 100_000)) == []
    assert len(frames._buf) == 0


def _received(sock: socket.socket) -> tuple[list[Message | Oversize], bool]:
    """The frames that have arrived so far, without waiting, and whether the peer closed."""
    frames = FrameBuffer()
    got: list[Message | Oversize] = []
    while True:
        try:
            data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return got, False
        if not data:
            return got, True
        got.extend(frames.feed(data))


def test_the_gateway_writes_the_frames_of_one_loop_turn_together_in_order() -> None:
    async def run() -> None:
        a, b = socket.socketpair()
        conn = WorkerConnection(lambda c, m: None)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, a)
        conn.send(Kind.PREDICT, {"batch": 1}, [b"x" * 10])
        conn.send(Kind.PREDICT, {"batch": 2, "ahead": True}, [b"y" * (128 * 1024)])
        conn.send(Kind.CANCEL, {"batch": 2, "i": 0})
        assert _received(b) == ([], False)  # nothing written until this turn of the loop ends
        await asyncio.sleep(0.05)
        got, closed = _received(b)
        assert [(m.kind, m.meta.get("batch")) for m in got if isinstance(m, Message)] == [
            (Kind.PREDICT, 1), (Kind.PREDICT, 2), (Kind.CANCEL, 2)]
        assert isinstance(got[1], Message) and bytes(got[1].blobs[0]) == b"y" * (128 * 1024)
        assert not closed
        # Sent and closed in the same turn: the frame still goes out, then the end of stream.
        conn.send(Kind.SHUTDOWN, {})
        conn.close()
        await asyncio.sleep(0.05)
        got, closed = _received(b)
        assert [m.kind for m in got if isinstance(m, Message)] == [Kind.SHUTDOWN]
        assert closed
        with pytest.raises(ConnectionError):
            conn.send(Kind.PING, {})
        b.close()

    asyncio.run(run())
