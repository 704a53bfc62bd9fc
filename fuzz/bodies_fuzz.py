"""atheris harness: request bodies to handler inputs (`read_body`, `body_inputs` for multipart,
urlencoded, JSON and any other content type) and the worker's `decode_value` raise only the
documented errors: BadRequest (malformed form bodies), PayloadTooLarge (over the limit).

    python fuzz/bodies_fuzz.py fuzz/corpus/bodies -runs=5000
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import atheris

from fuzz.known import tolerate_known

with atheris.instrument_imports(include=["serving", "starlette.formparsers", "multipart",
                                         "python_multipart", "urllib.parse"]):
    from serving.errors import BadRequest, PayloadTooLarge
    from serving.gateway.bodies import body_inputs, read_body
    from serving.handlers.service import decode_value
    from serving.jsondepth import check_json_depth

CONTENT_TYPES = ("multipart/form-data; boundary=", "application/x-www-form-urlencoded",
                 "application/json", "text/plain; charset=", "application/octet-stream",
                 "Multipart/Form-Data;boundary=\"", "")
LOOP = asyncio.new_event_loop()


async def read(chunks: list[bytes], declared: str | None, limit: int) -> bytes:
    messages = iter([{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                     for i, c in enumerate(chunks)])

    async def receive() -> dict[str, Any]:
        return next(messages)

    return await read_body(receive, declared, limit)


DECLARED = (None, "", "12", "99999999", "-1", "1e3", "\u0661")


def layout(data: bytes) -> tuple[str, int, str | None, int, bytes]:
    """The input as (content type, limit, Content-Length, chunk size, body); the layout is
    explicit so that fuzz/make_corpus.py can write seeds that mean something:
    [type index][suffix length][suffix][limit: 2 bytes][declared index][chunk size][body].
    """
    kind = CONTENT_TYPES[data[0] % len(CONTENT_TYPES)] if data else ""
    n = data[1] if len(data) > 1 else 0
    suffix = data[2:2 + n].decode("latin-1")
    rest = data[2 + n:]
    limit = int.from_bytes(rest[:2], "big") if len(rest) >= 2 else 4096
    declared = DECLARED[rest[2] % len(DECLARED)] if len(rest) > 2 else None
    cut = max(1, rest[3]) if len(rest) > 3 else 1
    return kind + suffix, limit, declared, cut, rest[4:]


@tolerate_known
def test_one_input(data: bytes) -> None:
    content_type, limit, declared, cut, body = layout(data)
    chunks = [body[i:i + cut] for i in range(0, len(body), cut)] or [b""]
    try:
        read_back = LOOP.run_until_complete(read(chunks, declared, limit))
    except PayloadTooLarge:
        if len(body) <= limit and not (declared or "").isdigit():
            raise AssertionError(f"413 for {len(body)} bytes under a limit of {limit}") from None
    else:
        if read_back != body:
            raise AssertionError("read_body changed the body")
    try:
        inputs = body_inputs(body, content_type)
        for item in inputs:  # what the data plane checks before any worker parses it
            if item.content_type == "application/json":
                check_json_depth(item.value, 100)  # the default max_json_depth
    except BadRequest:
        return
    for item in inputs:
        if not isinstance(item.name, str) or not isinstance(item.value, bytes | bytearray):
            raise AssertionError(f"an input of the wrong type: {item!r:.200}")
        for decode in (True, False):
            decode_value(item.content_type, item.value, decode)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
