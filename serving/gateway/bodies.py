"""HTTP request bodies to handler inputs, by TorchServe's rules, within the size limit."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from serving.errors import BadRequest, PayloadTooLarge
from serving.gateway.multipart import multipart_inputs
from serving.types import Input

Receive = Any


def mime_type(content_type: str | None) -> str:
    """`Application/JSON; charset=utf-8` -> `application/json` (what handlers compare with)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


async def read_body(receive: Receive, declared: str | None, limit: int,
                    setting: str = "max_request_size") -> bytes:
    """The whole body; 413 before reading when Content-Length (`declared`) says it is too
    big, or as soon as a chunked body passes the limit (`setting` names it in the message)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds {setting} "
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
                raise PayloadTooLarge(f"Request body exceeds {setting} ({limit} bytes)")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def body_inputs(body: bytes, content_type: str | None) -> list[Input]:
    """Form fields become one input each, named by the field; any other body is `body`.

    (The data plane checks the JSON ones against `max_json_depth`, whatever front end.)
    """
    mime = mime_type(content_type)
    if mime == "multipart/form-data":
        return multipart_inputs(body, content_type or "")
    if mime == "application/x-www-form-urlencoded":
        try:
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("form body is not valid UTF-8") from None
        # TorchServe sends form attributes without a content type: the handler gets bytes.
        return [Input(name, "", value.encode("utf-8")) for name, value in fields]
    return [Input("body", mime, body)]
