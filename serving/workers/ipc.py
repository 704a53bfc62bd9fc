"""The gateway <-> worker wire format: length-prefixed frames of JSON metadata plus raw blobs.

A frame is `<u32 body length><u8 kind><u32 meta length><meta JSON><blob 0><blob 1>...`, with
the blob lengths listed in the metadata under `"_b"`. Request and response bodies travel as
raw blobs, copied into the socket once, never encoded; errors travel as plain JSON data.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct("<IBI")
MAX_FRAME = 2**32 - 1

Blob = bytes | bytearray | memoryview


class Kind(enum.IntEnum):
    HELLO = 1      # worker -> gateway: {worker_id, pid}
    LOAD = 2       # gateway -> worker: what to load and how
    LOADED = 3     # worker -> gateway: {ok: true, ...} or {ok: false, error: {...}}
    PREDICT = 4    # gateway -> worker: one batch
    RESULT = 5     # worker -> gateway: the batch's answers, or an error for all of them
    PING = 6
    PONG = 7
    STREAM = 8     # worker -> gateway: an intermediate answer for one request of a batch
    SHUTDOWN = 9   # gateway -> worker: finish and exit


@dataclass(slots=True)
class Message:
    kind: Kind
    meta: dict[str, Any]
    blobs: list[Blob] = field(default_factory=list)


def encode(kind: Kind, meta: dict[str, Any], blobs: Sequence[Blob] = ()) -> list[Blob]:
    """The buffers of one frame, ready for `sendmsg`/`writelines` without joining them."""
    if blobs:
        meta["_b"] = [len(b) for b in blobs]
    raw = json.dumps(meta, separators=(",", ":")).encode()
    body_len = 5 + len(raw) + sum(len(b) for b in blobs)
    if body_len > MAX_FRAME:
        raise ValueError(f"message of {body_len} bytes is larger than a frame can carry")
    return [HEADER.pack(body_len, kind, len(raw)), raw, *blobs]


def decode_body(body: memoryview) -> Message:
    """Parse one frame body (everything after the length field)."""
    kind = Kind(body[0])
    meta_len = int.from_bytes(body[1:5], "little")
    meta: dict[str, Any] = json.loads(body[5:5 + meta_len].tobytes())
    blobs: list[Blob] = []
    offset = 5 + meta_len
    for size in meta.pop("_b", ()):
        blobs.append(body[offset:offset + size])
        offset += size
    return Message(kind, meta, blobs)


class FrameBuffer:
    """Reassembles frames from a byte stream fed in arbitrary pieces (the asyncio side)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        buf = self._buf
        buf += data
        start = 0
        end = len(buf)
        messages: list[Message] = []
        while end - start >= 4:
            body_len = int.from_bytes(buf[start:start + 4], "little")
            if end - start - 4 < body_len:
                break
            body = bytes(buf[start + 4:start + 4 + body_len])
            messages.append(decode_body(memoryview(body)))
            start += 4 + body_len
        if start:
            del buf[:start]
        return iter(messages)
