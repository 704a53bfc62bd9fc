"""Both ends of a worker socket over a real socketpair: many-buffer writes, oversize frames."""

from __future__ import annotations

import socket
import threading

from serving.workers.channel import IOV_MAX, BlockingChannel
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
