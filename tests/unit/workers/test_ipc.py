"""The worker wire format: frames round-trip, and malformed bytes raise only ProtocolError."""

from __future__ import annotations

import json
import struct

import pytest

from serving.workers.ipc import FrameBuffer, Kind, ProtocolError, decode_body, encode


def frame_body(kind: int, meta: bytes, *blobs: bytes) -> memoryview:
    return memoryview(struct.pack("<BI", kind, len(meta)) + meta + b"".join(blobs))


def test_round_trip_in_pieces() -> None:
    wire = b"".join(bytes(b) for b in encode(Kind.PREDICT, {"ids": ["a"]}, [b"xy", b""]))
    wire += b"".join(bytes(b) for b in encode(Kind.PING, {}))
    frames = FrameBuffer()
    got = [m for i in range(len(wire)) for m in frames.feed(wire[i:i + 1])]
    assert [m.kind for m in got] == [Kind.PREDICT, Kind.PING]
    assert got[0].meta == {"ids": ["a"]} and [bytes(b) for b in got[0].blobs] == [b"xy", b""]


@pytest.mark.parametrize("body", [
    memoryview(b""),                                     # shorter than the header
    memoryview(b"\x04\x00"),
    frame_body(0, b"{}"),                                # unknown kind
    frame_body(4, b"{}")[:-1],                           # metadata past the end
    frame_body(4, b"{\"a\": "),                          # not JSON
    frame_body(4, b"\xff\xfe\x00"),                      # not UTF-8
    frame_body(4, b"[" * 100_000 + b"]" * 100_000),      # nesting too deep
    frame_body(4, b"[]"),                                # not an object
    frame_body(4, b"{\"_b\": 3}"),                       # sizes not a list
    frame_body(4, b"{\"_b\": [-1]}", b"x"),              # negative size
    frame_body(4, b"{\"_b\": [true]}", b"x"),            # a bool is not a size
    frame_body(4, b"{\"_b\": [5]}", b"abc"),             # blobs shorter than declared
    frame_body(4, b"{}", b"trailing"),                   # bytes nobody declared
])
def test_malformed_frames_raise_protocol_error(body: memoryview) -> None:
    with pytest.raises(ProtocolError):
        decode_body(body)


def test_frame_buffer_raises_protocol_error() -> None:
    meta = json.dumps({"_b": [9]}).encode()
    bad = frame_body(4, meta, b"x")
    with pytest.raises(ProtocolError):
        list(FrameBuffer().feed(struct.pack("<I", len(bad)) + bytes(bad)))
