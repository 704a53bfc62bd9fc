"""HTTP request bodies to handler inputs, by TorchServe's rules, within the size limit."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serving.errors import BadRequest, PayloadTooLarge
from serving.types import Input

Receive = Any


def mime_type(content_type: str | None) -> str:
    """`Application/JSON; charset=utf-8` -> `application/json` (what handlers compare with)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body; 413 before reading when Content-Length (`declared`) says it is too
    big, or as soon as a chunked body passes the limit."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds max_request_size "
                              f"({limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds max_request_size ({limit} bytes)")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def body_inputs(body: bytes, content_type: str | None) -> list[Input]:
    """Form fields become one input each, named by the field; any other body is `body`."""
    mime = mime_type(content_type)
    if mime == "multipart/form-data":
        return await _multipart(body, content_type or "")
    if mime == "application/x-www-form-urlencoded":
        try:
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("form body is not valid UTF-8") from None
        # TorchServe sends form attributes without a content type: the handler gets bytes.
        return [Input(name, "", value.encode("utf-8")) for name, value in fields]
    return [Input("body", mime, body)]


async def _multipart(body: bytes, content_type: str) -> list[Input]:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type}), stream(),
                             max_files=1000, max_fields=1000, max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise BadRequest(f"malformed multipart body: {e.message}") from None
    inputs = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            inputs.append(Input(name, mime_type(value.content_type), data))
        else:
            inputs.append(Input(name, "", value.encode("utf-8")))
    await form.close()
    return inputs
