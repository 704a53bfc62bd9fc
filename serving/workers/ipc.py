"""The gateway <-> worker wire format: length-prefixed frames of JSON metadata plus raw blobs.

A frame is `<u32 body length><u8 kind><u32 meta length><meta JSON><blob 0><blob 1>...`, with
the blob lengths listed in the metadata under `"_b"`. Request and response bodies travel as
raw blobs, copied into the socket once, never encoded; errors travel as plain JSON data.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct("<IBI")
MAX_FRAME = 2**32 - 1
# Sent in HELLO; the gateway refuses a worker that speaks another version (a worker started
# from another installation of this package) instead of misreading its frames.
PROTOCOL_VERSION = 3  # 2: STREAM answers are delivered, CANCEL added; 3: FLUSH, METRICS

Blob = bytes | bytearray | memoryview


class Kind(enum.IntEnum):
    HELLO = 1      # worker -> gateway: {worker_id, pid, protocol}
    LOAD = 2       # gateway -> worker: what to load and how
    LOADED = 3     # worker -> gateway: {ok: true, ...} or {ok: false, error: {...}}
    PREDICT = 4    # gateway -> worker: one batch
    RESULT = 5     # worker -> gateway: the batch's answers, or an error for all of them
    PING = 6
    PONG = 7
    STREAM = 8     # worker -> gateway: an intermediate answer for one request of a batch
    SHUTDOWN = 9   # gateway -> worker: finish and exit
    CANCEL = 10    # gateway -> worker: {batch, i}: the client of that request went away
    FLUSH = 11     # gateway -> worker: send the handler metrics recorded so far (a scrape)
    METRICS = 12   # worker -> gateway: {m: [update, ...], flush: true if FLUSH asked for it}


# The kind byte to its Kind without the enum's call machinery (every frame pays it).
_KINDS: dict[int, Kind] = {k.value: k for k in Kind}
# Built once: `json.dumps` with any option builds a new encoder on every call, and
# `json.loads` of bytes first sniffs their encoding.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_DECODE = json.JSONDecoder().decode


@dataclass(slots=True)
class Message:
    kind: Kind
    meta: dict[str, Any]
    blobs: list[Blob] = field(default_factory=list)


def encode(kind: Kind, meta: dict[str, Any], blobs: Sequence[Blob] = ()) -> list[Blob]:
    """The buffers of one frame, ready for `sendmsg`/`writelines` without joining them."""
    if blobs:
        meta["_b"] = [len(b) for b in blobs]
    raw = _ENCODE(meta).encode()
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
    kind = _KINDS.get(body[0])
    if kind is None:
        raise ProtocolError(f"unknown message kind {body[0]}")
    meta_end = 5 + int.from_bytes(body[1:5], "little")
    if meta_end > len(body):
        raise ProtocolError(f"metadata runs past the end of a {len(body)}-byte frame")
    try:
        meta = _DECODE(str(body[5:meta_end], "utf-8"))
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


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame whose header declares more bytes than its reader allows: its body is skipped
    as it arrives, never held in memory."""

    kind: int  # the kind byte, which may not be a known Kind
    size: int  # the declared body length
    limit: int


class FrameBuffer:
    """Reassembles frames from a byte stream fed in arbitrary pieces (the asyncio side).

    `limit(kind)` bounds the body of a frame of that kind; it is asked when the frame's header
    arrives, before any of its body is kept, and a larger frame comes out as `Oversize` while
    its bytes are discarded piece by piece.
    """

    def __init__(self, limit: Callable[[int], int] | None = None) -> None:
        self._buf = bytearray()
        self._start = 0  # bytes of _buf already handed out
        self._skip = 0  # bytes still to discard of an oversize frame
        self.limit = limit

    def feed(self, data: bytes) -> Iterator[Message | Oversize]:
        """Add bytes and take every complete frame (eagerly: `limit` is asked for each)."""
        self.append(data)
        return iter(list(iter(self.next, None)))

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        if self._skip:
            dropped = min(self._skip, len(view))
            self._skip -= dropped
            view = view[dropped:]
        if self._start:
            del self._buf[:self._start]
            self._start = 0
        self._buf += view

    def next(self) -> Message | Oversize | None:
        """The next complete frame, None until more bytes arrive; ProtocolError if malformed."""
        buf, start = self._buf, self._start
        available = len(buf) - start
        if available < 4:
            return None
        body_len = int.from_bytes(buf[start:start + 4], "little")
        if self.limit is not None and available >= 5:
            limit = self.limit(buf[start + 4])
            if body_len > limit:
                taken = min(available, 4 + body_len)
                self._skip = 4 + body_len - taken
                self._start += taken
                return Oversize(buf[start + 4], body_len, limit)
        elif self.limit is not None and body_len:
            return None  # the kind byte decides the limit
        if available - 4 < body_len:
            return None
        body = bytes(buf[start + 4:start + 4 + body_len])
        self._start += 4 + body_len
        if self._start == len(buf):
            buf.clear()
            self._start = 0
        return decode_body(memoryview(body))
