"""Sending answers and errors over raw ASGI: the one place errors become HTTP responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.errors import ServingError, http_status
from serving.types import InferenceResponse

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = b"application/json"


def error_body(error: ServingError) -> bytes:
    return json.dumps(error.to_dict(), indent=2).encode() + b"\n"


def error_headers(error: ServingError, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", JSON), (b"x-request-id", request_id.encode("latin-1"))]
    retry_after = error.extra.get("retry_after")
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    allow = error.extra.get("allow")
    if allow is not None:  # a 405 names the methods the path answers (RFC 9110)
        headers.append((b"allow", ", ".join(allow).encode("latin-1")))
    return headers


def error_response(error: ServingError, request_id: str
                   ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as an HTTP answer: status, headers, body."""
    body = error_body(error)
    return (http_status(error.code),
            [*error_headers(error, request_id), (b"content-length", str(len(body)).encode())],
            body)


async def send_error(send: Send, error: ServingError, request_id: str) -> None:
    status, headers, body = error_response(error, request_id)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def answer_headers(answer: InferenceResponse, request_id: str, more: bool = False
                   ) -> list[tuple[bytes, bytes]]:
    """The headers of a handler's answer; `more`: of the first chunk of a chunked one (no
    content-length)."""
    headers = [(b"x-request-id", request_id.encode("latin-1"))]
    if not more:
        headers.append((b"content-length", str(len(answer.body)).encode()))
    if answer.content_type:
        headers.append((b"content-type", answer.content_type.encode("latin-1")))
    for key, value in answer.headers.items():
        lowered = key.lower()
        if lowered in ("content-length", "transfer-encoding", "x-request-id"):
            continue  # framing is ours to decide
        headers.append((lowered.encode("latin-1"), str(value).encode("latin-1")))
    return headers


async def send_answer(send: Send, answer: InferenceResponse, request_id: str,
                      more: bool = False) -> None:
    """The answer as a whole response; `more`: as the first chunk of a chunked one."""
    await send({"type": "http.response.start", "status": http_status(answer.status),
                "headers": answer_headers(answer, request_id, more)})
    await send({"type": "http.response.body", "body": answer.body, "more_body": more})
