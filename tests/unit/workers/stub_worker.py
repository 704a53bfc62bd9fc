"""A worker program for tests: speaks the real protocol through the real BlockingChannel, and
misbehaves the way STUB_MODE says once it gets a batch. Run as `python -m` in its place.

Modes: echo (answers correctly), version (says HELLO with another protocol version), garbage,
bad-json, unknown-id, wrong-count, missing-status, other-batch, gateway-kind, huge (declares a
4 GiB answer and sends only the first STUB_HUGE_SEND bytes of it). Every message it gets is
written to STUB_LOG, one kind name a line, when that is set.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from typing import Any

from serving.workers.channel import BlockingChannel, send_buffers
from serving.workers.ipc import HEADER, PROTOCOL_VERSION, Kind, Message, encode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    mode = os.environ.get("STUB_MODE", "echo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    channel = BlockingChannel(sock)
    version = PROTOCOL_VERSION + 1 if mode == "version" else PROTOCOL_VERSION
    channel.send(Kind.HELLO, {"worker_id": args.worker_id, "pid": os.getpid(),
                              "protocol": version})
    while (msg := channel.recv()) is not None:
        note(msg.kind.name)
        if msg.kind == Kind.LOAD:
            channel.send(Kind.LOADED, {"ok": True})
        elif msg.kind == Kind.PING:
            channel.send(Kind.PONG, {"seq": msg.meta.get("seq")})
        elif msg.kind == Kind.SHUTDOWN:
            return 0
        elif msg.kind == Kind.PREDICT:
            answer(sock, channel, mode, msg)
    return 0


def note(line: str) -> None:
    path = os.environ.get("STUB_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def answer(sock: socket.socket, channel: BlockingChannel, mode: str, msg: Message) -> None:
    items: list[dict[str, Any]] = [{"id": item["id"], "s": 200, "ct": "text/plain", "h": {}}
                                   for item in msg.meta["items"]]
    blobs = [bytes(b) for b in msg.blobs]
    meta: dict[str, Any] = {"batch": msg.meta["batch"], "items": items}
    if mode == "garbage":
        sock.sendall(struct.pack("<I", 2) + b"\x05\x00")
    elif mode == "bad-json":
        raw = b"{not json"
        body = HEADER.pack(0, Kind.RESULT, len(raw))[4:] + raw
        sock.sendall(struct.pack("<I", len(body)) + body)
    elif mode == "huge":
        sock.sendall(HEADER.pack(2**32 - 1, Kind.RESULT, 100))
        chunk = b"x" * (1 << 20)
        for _ in range(int(os.environ.get("STUB_HUGE_SEND", "0")) // len(chunk)):
            sock.sendall(chunk)
        note("SENT")
        time.sleep(3600)
    else:
        if mode == "unknown-id":
            items[0]["id"] = "someone-else"
        elif mode == "wrong-count":
            items.pop()
            blobs.pop()
        elif mode == "missing-status":
            del items[0]["s"]
        elif mode == "other-batch":
            meta["batch"] += 100
        kind = Kind.PREDICT if mode == "gateway-kind" else Kind.RESULT
        send_buffers(sock, encode(kind, meta, blobs))


if __name__ == "__main__":
    raise SystemExit(main())
