"""The HTTP face of token authorization: an ASGI wrapper in front of each API, and the token
API (`/token?type=management|inference` on the management port), as in TorchServe 0.12."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from serving.errors import BadRequest, ServingError, http_status
from serving.gateway.auth import TokenAuthorization, TokenKind
from serving.gateway.observed import count_status
from serving.gateway.requestids import scope_request_id
from serving.gateway.responses import JSON, error_body, error_headers

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_PATH = "/token"
# The inference API's liveness route: it holds no data, and a Kubernetes probe has no key.
LIVENESS_PATH = "/live"
_REGENERABLE = {"management": TokenKind.MANAGEMENT, "inference": TokenKind.INFERENCE}


class Guarded:
    """Lets a request through to `app` only with the right key. Built only when token
    authorization is on, so a server without it pays nothing per request."""

    def __init__(self, app: ASGIApp, auth: TokenAuthorization, kind: TokenKind) -> None:
        self.app = app
        self.auth = auth
        self.kind = kind
        self.token_api = kind is TokenKind.MANAGEMENT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.token_api and path == TOKEN_PATH:
            await self._token_api(scope, send)
            return
        open_route = _is_api_description(path, scope["method"]) or (
            self.kind is TokenKind.INFERENCE and path == LIVENESS_PATH)
        if not open_route:
            try:
                self.auth.check(self.kind, first_header(scope["headers"], b"authorization"))
            except ServingError as e:
                await _send_error(scope, send, e)
                return
        await self.app(scope, receive, send)

    async def _token_api(self, scope: Scope, send: Send) -> None:
        """Needs the API key; regenerates one key, which the caller then reads from the file
        (the answer does not carry it: holding the API key is not holding the others)."""
        try:
            self.auth.check(TokenKind.API, first_header(scope["headers"], b"authorization"))
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            wanted = query.get("type", [""])[0]
            kind = _REGENERABLE.get(wanted)
            if kind is None:
                raise BadRequest(f"type: expected management or inference, got {wanted!r}"
                                 if wanted else "type: parameter is required "
                                 "(management or inference)")
            self.auth.regenerate(kind)
        except ServingError as e:
            await _send_error(scope, send, e)
            return
        body = json.dumps({"status": f"{kind.value} key regenerated; read it from "
                                     f"{self.auth.key_file}"}, indent=2).encode() + b"\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", JSON),
                                (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", scope_request_id(scope).encode("latin-1"))]})
        await send({"type": "http.response.body", "body": body})


def _is_api_description(path: str, method: str) -> bool:
    """TorchServe answers these before it checks keys: they describe the API, hold no data."""
    return path == "/api-description" or (path == "/" and method == "OPTIONS")


def first_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case) in a request's raw header list."""
    for key, value in headers:  # ASGI (and uvicorn's parser) give names in lower case
        if key == name:
            return bytes(value)
    return None


async def _send_error(scope: Scope, send: Send, error: ServingError) -> None:
    body = error_body(error)
    headers = [*error_headers(error, scope_request_id(scope)),
               (b"content-length", str(len(body)).encode())]
    if error.code == 401:
        headers.append((b"www-authenticate", b'Bearer realm="serving"'))
    count_status(scope, error.code)  # a refusal on a route whose app counts its answers
    await send({"type": "http.response.start", "status": http_status(error.code),
                "headers": headers})
    await send({"type": "http.response.body", "body": body})
