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


class ProtocolError(ValueError):
    """Bytes that are not a frame of this format: a bug or a corrupt stream on the other end."""


def decode_body(body: memoryview) -> Message:
    """Parse one frame body (everything after the length field); ProtocolError if malformed."""
    if len(body) < 5:
        raise ProtocolError(f"frame body of {len(body)} bytes is shorter than its header")
    try:
        kind = Kind(body[0])
    except ValueError:
        raise ProtocolError(f"unknown message kind {body[0]}") from None
    meta_end = 5 + int.from_bytes(body[1:5], "little")
    if meta_end > len(body):
        raise ProtocolError(f"metadata runs past the end of a {len(body)}-byte frame")
    try:
        meta = json.loads(body[5:meta_end].tobytes())
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8; nesting too deep
        raise ProtocolError(f"metadata is not JSON: {type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"metadata is a JSON {type(meta).__name__}, not an object")
    sizes = meta.pop("_b", ())
    if not isinstance(sizes, list | tuple) or not all(
            type(size) is int and size >= 0 for size in sizes):
        raise ProtocolError(f"blob lengths are not a list of sizes: {sizes!r:.100}")
    if meta_end + sum(sizes) != len(body):
        raise ProtocolError(f"blob lengths {sizes!r:.100} do not fill a {len(body)}-byte frame")
    blobs: list[Blob] = []
    offset = meta_end
    for size in sizes:
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
