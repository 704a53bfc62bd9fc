"""atheris harness: the worker wire format raises only ProtocolError on any bytes, whether a
frame body is decoded alone or a stream is fed to FrameBuffer in pieces.

    python fuzz/ipc_fuzz.py fuzz/corpus/ipc -runs=5000
"""

from __future__ import annotations

import sys

import atheris

from fuzz.known import tolerate_known

with atheris.instrument_imports(include=["serving"]):
    from serving.workers.ipc import FrameBuffer, ProtocolError, decode_body, encode


@tolerate_known
def test_one_input(data: bytes) -> None:
    # [chunk size][the stream]: each frame is also decoded alone, without its length field.
    cut = max(1, data[0] % 64) if data else 1
    stream = data[1:]
    try:
        message = decode_body(memoryview(stream[4:]))
    except ProtocolError:
        pass
    else:  # what decodes must encode back to the same frame
        blobs = list(message.blobs)
        again = b"".join(bytes(b) for b in encode(message.kind, dict(message.meta), blobs))
        if decode_body(memoryview(again[4:])).meta != message.meta:
            raise AssertionError("a decoded frame does not round-trip")
    frames = FrameBuffer()
    try:
        for i in range(0, len(stream), cut):
            for msg in frames.feed(stream[i:i + cut]):
                if not isinstance(msg.meta, dict):
                    raise AssertionError("metadata that is not an object was accepted")
    except ProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
