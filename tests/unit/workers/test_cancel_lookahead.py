"""The worker's look-ahead for CANCEL messages while a streaming handler runs: it never
blocks, and every other message read meanwhile is still received, in order."""

from __future__ import annotations

import socket
import time

from serving.workers.channel import BlockingChannel
from serving.workers.ipc import Kind, encode


def send(sock: socket.socket, kind: Kind, meta: dict) -> None:
    for buf in encode(kind, meta, [b"blob"] if kind == Kind.PREDICT else []):
        sock.sendall(buf)


def arrived(channel: BlockingChannel, batch: int, expected: set[int]) -> set[int]:
    deadline = time.monotonic() + 10
    while (got := channel.cancelled(batch)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


def test_cancels_are_seen_without_waiting_and_other_messages_keep_their_order():
    gateway, worker = socket.socketpair()
    channel = BlockingChannel(worker)
    try:
        assert channel.cancelled(1) == set()  # nothing there: no wait
        send(gateway, Kind.PREDICT, {"batch": 2})   # the next batch, sent ahead (overlap)
        send(gateway, Kind.CANCEL, {"batch": 1, "i": 0})
        send(gateway, Kind.CANCEL, {"batch": 2, "i": 3})
        send(gateway, Kind.PING, {"seq": 7})
        assert arrived(channel, 1, {0}) == {0}
        assert channel.cancelled(2) == {3}
        channel.forget(1)
        assert channel.cancelled(1) == set() and channel.cancelled(2) == {3}
        first, second = channel.recv(), channel.recv()
        assert first is not None and first.kind == Kind.PREDICT and first.meta["batch"] == 2
        assert bytes(first.blobs[0]) == b"blob"
        assert second is not None and second.kind == Kind.PING
        send(gateway, Kind.CANCEL, {"batch": 5, "i": 1})
        send(gateway, Kind.SHUTDOWN, {})
        last = channel.recv()  # a CANCEL met by recv is noted, not returned
        assert last is not None and last.kind == Kind.SHUTDOWN
        assert channel.cancelled(5) == {1}
        gateway.close()
        assert channel.cancelled(5) == {1}  # a closed connection: no wait either
        assert channel.recv() is None
    finally:
        gateway.close()
        channel.close()
