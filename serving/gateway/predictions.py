"""`POST /predictions/...` and `/explanations/...`: the hot path, as a raw ASGI endpoint.

It skips FastAPI's per-request machinery (dependency solving, Request objects) because every
microsecond here is paid by every inference; the routes around it are ordinary FastAPI. It
only translates: HTTP request -> `DataPlane.infer` -> HTTP response (errors by `http_status`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from serving.errors import BadRequest, ClientCancelled, InternalError, ServingError
from serving.gateway.bodies import body_inputs, read_body
from serving.gateway.clientgone import client_gone
from serving.gateway.cork import send_whole
from serving.gateway.observed import count_status
from serving.gateway.responses import error_body, send_answer, send_error
from serving.routing.dataplane import DataPlane, ResponseStream
from serving.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# A client's own bound on how long its request may wait for a worker, in ms (capped by the
# model's clientTimeoutInMills). TorchServe has no such header.
REQUEST_TIMEOUT_HEADER = "x-request-timeout-ms"


def handler_headers(scope: Scope) -> dict[str, str]:
    """Request headers as the handler sees them through `context.get_request_header`."""
    return decoded_headers(scope["headers"])


def decoded_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """A raw header list as the handler sees it (a later header of a name wins)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}


def request_timeout_ms(headers: Mapping[str, str]) -> int | None:
    """`x-request-timeout-ms` as whole milliseconds of at least 1; None when absent."""
    raw = headers.get(REQUEST_TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        asked = int(raw)
    except ValueError:
        asked = 0
    if asked < 1:
        raise BadRequest(f"{REQUEST_TIMEOUT_HEADER}: expected a whole number of "
                         f"milliseconds of at least 1, got {raw!r:.40}")
    return asked


def split_target(path: str) -> tuple[str, str, str | None, str | None]:
    """`/predictions/{model}[/{version}[/{url_path}]]` (or `/explanations/...`): the family,
    the model name ("" when missing), the version and the rest of the path (None if absent)."""
    family, _, rest = path[1:].partition("/")
    parts = rest.split("/", 2)
    return (family, parts[0], parts[1] if len(parts) > 1 and parts[1] else None,
            parts[2] if len(parts) > 2 else None)


def prediction_request(request_id: str, visible: dict[str, str], body: bytes,
                       url_path: str | None) -> tuple[InferenceRequest, int | None]:
    """The request the handler sees (inputs from the body by TorchServe's rules, headers,
    `url_path` among them when the path has one) and the client's own queue bound in ms."""
    inputs = body_inputs(body, visible.get("content-type"))
    if url_path:
        visible["url_path"] = url_path
    return InferenceRequest(request_id, inputs, visible), request_timeout_ms(visible)


class PredictionEndpoint:
    """ASGI app for one family of routes (`predictions` or `explanations`)."""

    def __init__(self, plane: DataPlane, explain: bool) -> None:
        self._plane = plane
        self._limit = plane.max_request_size
        self._explain = explain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        visible = handler_headers(scope)
        plane = self._plane
        request_id = plane.request_id(visible.get("x-request-id"))
        try:
            body = await read_body(receive, visible.get("content-length"), self._limit)
            request, timeout_ms = prediction_request(request_id, visible, body,
                                                     params.get("url_path"))
            gone = client_gone(scope)
            # The body is read: uvicorn's receive() now returns only when the client goes;
            # our HTTP protocol says so more cheaply, through `gone`.
            answers = plane.stream(params["model_name"], params.get("model_version"),
                                   request, explain=self._explain, timeout_ms=timeout_ms,
                                   disconnected=receive() if gone is None else None)
            if gone is not None:
                gone.on_fire(answers.client_gone)
            answer = await answers.__anext__()
        except ClientCancelled:
            return  # nobody is listening for an answer
        except ServingError as e:
            count_status(scope, e.code)
            await send_whole(scope, send_error(send, e, request_id))
            return
        except ConnectionAbortedError:
            return  # gone while sending its body
        except Exception as e:  # a bug: answer it as one, and keep the connection
            log.exception("unexpected error on %s", scope.get("path"))
            count_status(scope, 500)
            await send_error(send, InternalError(f"Internal error: {type(e).__name__}"),
                             request_id)
            return
        # Observed leaves the count of Requests2XX/4XX/5XX on this route to this endpoint.
        count_status(scope, answer.status)
        if answer.final:
            await send_whole(scope, send_answer(send, answer, request_id))
        else:
            await self._send_stream(send, answer, answers, request_id)

    @staticmethod
    async def _send_stream(send: Send, first: InferenceResponse, answers: ResponseStream,
                           request_id: str) -> None:
        """A streaming handler's answers as one chunked response, as TorchServe sends them:
        the first answer's status and headers, then each answer's body as a chunk.

        A client that does not read chunks gets the bodies one after the other. An error
        after the first chunk cannot change the status any more: its JSON body is the last
        chunk and the connection is closed without the end of the chunked body, so that no
        client takes the truncated answer for a whole one.
        """
        await send_answer(send, first, request_id, more=True)
        try:
            async for answer in answers:
                await send({"type": "http.response.body", "body": answer.body,
                            "more_body": not answer.final})
        except ClientCancelled:
            return
        except ServingError as e:
            log.warning("request %s: the stream failed after it started: %s", request_id,
                        e.message)
            await send({"type": "http.response.body", "body": error_body(e),
                        "more_body": True})
            # Returning with the response incomplete: uvicorn closes the connection.
        finally:
            answers.close()
