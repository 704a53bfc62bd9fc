"""Open Inference Protocol v2 over REST, under `/v2` on the inference address, as a raw ASGI
endpoint (inference is a hot path, as `/predictions` is).

Wire format only: JSON tensors and the binary tensor data extension in, the data plane called,
the worker's answer (already in the REST body layout) out, errors as `{"error": "..."}`.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

from serving import __version__
from serving.errors import (
    BadRequest,
    ClientCancelled,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServingError,
    http_status,
)
from serving.gateway.bodies import read_body
from serving.gateway.clientgone import gone_future
from serving.gateway.cork import send_whole
from serving.gateway.predictions import (
    Receive,
    Scope,
    Send,
    handler_headers,
    request_timeout_ms,
)
from serving.jsondepth import loads
from serving.oip.metadata import model_metadata_dict
from serving.oip.requests import HEADER_LENGTH, parse_request, worker_inputs
from serving.routing.dataplane import DataPlane
from serving.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

PREFIX = "/v2"
SERVER_NAME = "serving"
EXTENSIONS = ["binary_tensor_data"]
JSON = b"application/json"


def error_body(error: ServingError) -> bytes:
    return json.dumps({"error": error.message}).encode()


class OipEndpoint:
    """Every `/v2` route: health, metadata, readiness and inference."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._limit = plane.max_request_size
        self._max_json_depth = plane.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        visible = handler_headers(scope)
        request_id = self._plane.request_id(visible.get("x-request-id"))
        try:
            await self._route(scope, receive, send, visible, request_id)
        except ClientCancelled:
            return  # nobody is listening for an answer
        except ServingError as e:
            await send_whole(scope, _send_json(send, http_status(e.code), error_body(e),
                                               request_id, e.extra.get("retry_after"),
                                               e.extra.get("allow")))
        except ConnectionAbortedError:
            return  # gone while sending its body
        except Exception as e:  # a bug: answer it as one, and keep the connection
            log.exception("unexpected error on %s", scope.get("path"))
            await _send_json(send, 500, error_body(InternalError(
                f"Internal error: {type(e).__name__}")), request_id)

    async def _route(self, scope: Scope, receive: Receive, send: Send,
                     visible: dict[str, str], request_id: str) -> None:
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        parts = path[len(PREFIX):].split("/")[1:]  # "/v2/models/m/infer" -> models, m, infer
        if parts and parts[0] == "models" and len(parts) >= 2 and parts[-1] == "infer":
            name, version = _model_path(parts[1:-1], path)
            _allow(method, "POST", path)
            await self._infer(name, version, scope, receive, send, visible, request_id)
            return
        _allow(method, "GET", path)
        if not parts:
            body = {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
            await _send_json(send, 200, json.dumps(body).encode(), request_id)
        elif parts == ["health", "live"]:
            await _send_json(send, 200, b'{"live":true}', request_id)
        elif parts == ["health", "ready"]:
            if not self._plane.server_ready():
                raise BadRequest("Server is not ready")
            await _send_json(send, 200, b'{"ready":true}', request_id)
        elif parts[0] == "models" and len(parts) >= 2 and parts[-1] == "ready":
            name, version = _model_path(parts[1:-1], path)
            if not self._plane.model_ready(name, version):
                raise BadRequest(f"Model {name} is not ready")
            await _send_json(send, 200, b'{"ready":true}', request_id)
        elif parts[0] == "models" and len(parts) >= 2:
            name, version = _model_path(parts[1:], path)
            await _send_json(send, 200, json.dumps(self._metadata(name, version)).encode(),
                             request_id)
        else:
            raise NotFound(f"Requested resource is not found: {path}")

    def _metadata(self, name: str, version: str | None) -> dict[str, Any]:
        mv = self._plane.model_info(name, version)
        versions = [v.version for v in self._plane.model_versions(name)]
        return model_metadata_dict(name, versions, mv.oip)

    async def _infer(self, name: str, version: str | None, scope: Scope, receive: Receive,
                     send: Send, visible: dict[str, str], request_id: str) -> None:
        mv = self._plane.model_info(name, version)  # an unknown model: 404 first
        body = await read_body(receive, visible.get("content-length"), self._limit)
        body = _decompressed(body, visible.get("content-encoding"), self._limit)
        header_bytes, binary = _split(body, visible.get(HEADER_LENGTH))
        header = loads(header_bytes, self._max_json_depth,
                       "inference request header is not valid JSON")
        request = parse_request(header, binary, mv.oip)
        timeout_ms = request.timeout_ms or request_timeout_ms(visible)
        inputs = worker_inputs(header_bytes, request)
        # The body is read: uvicorn's receive() now returns only when the client goes (our
        # HTTP protocol says so without a task per request: gone_future).
        answer = await self._plane.infer(name, mv.version,
                                         InferenceRequest(request_id, inputs, visible),
                                         timeout_ms=timeout_ms,
                                         disconnected=gone_future(scope, receive))
        await send_whole(scope, self._send_answer(send, answer, request_id))

    async def _send_answer(self, send: Send, answer: InferenceResponse,
                           request_id: str) -> None:
        if answer.status >= 400:
            message = answer.body.decode("utf-8", "replace")
            if answer.content_type and answer.content_type.startswith("application/json"):
                message = _error_message(answer.body) or message
            raise ServingError(message, answer.status)
        headers = [(b"content-type", (answer.content_type or "application/json").encode()),
                   (b"content-length", str(len(answer.body)).encode()),
                   (b"x-request-id", request_id.encode("latin-1"))]
        length = answer.headers.get(HEADER_LENGTH)
        if length is not None:
            headers.append((HEADER_LENGTH.encode(), length.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


def _model_path(parts: list[str], path: str) -> tuple[str, str | None]:
    """`m` or `m/versions/v` -> (name, version)."""
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    raise NotFound(f"Requested resource is not found: {path}")


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}",
                               allow=[allowed])


def _split(body: bytes, declared: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it."""
    view = memoryview(body)
    if declared is None:
        return body, view[len(view):]
    if not declared.isdigit() or int(declared) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length: expected a byte count of at most "
                         f"the body's {len(body)}, got {declared!r:.40}")
    n = int(declared)
    return bytes(view[:n]), view[n:]


def _decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip or deflate body (tritonclient's request compression), within the size limit."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {encoding!r:.40} is not supported; use gzip or "
                         "deflate")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"the {kind} body cannot be decompressed: {e}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"Decompressed request body exceeds max_request_size "
                              f"({limit} bytes)")
    return out


def _error_message(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else None


async def _send_json(send: Send, status: int, body: bytes, request_id: str,
                     retry_after: Any = None, allow: list[str] | None = None) -> None:
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode("latin-1"))]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if allow is not None:
        headers.append((b"allow", ", ".join(allow).encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
