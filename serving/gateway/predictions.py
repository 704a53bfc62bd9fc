"""`POST /predictions/...` and `/explanations/...`: the hot path, as a raw ASGI endpoint.

It skips FastAPI's per-request machinery (dependency solving, Request objects) because every
microsecond here is paid by every inference; the routes around it are ordinary FastAPI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.errors import InternalError, ServingError
from serving.gateway.bodies import body_inputs, read_body
from serving.gateway.requestids import request_id_of
from serving.gateway.responses import send_answer, send_error
from serving.routing.manager import ModelManager
from serving.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def handler_headers(scope: Scope) -> dict[str, str]:
    """Request headers as the handler sees them through `context.get_request_header`."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def infer(manager: ModelManager, name: str, version: str | None,
                request: InferenceRequest, receive: Receive | None) -> InferenceResponse:
    """Submit and wait; if the client disconnects meanwhile, the job is withdrawn.

    `receive` is the ASGI receive of a request whose body was read already: uvicorn then
    returns from it only when the client goes away. None: do not watch.
    """
    job = manager.submit(name, version, request)
    future = job.future
    if receive is None:
        return await future
    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(lambda w: None if w.cancelled() else job.cancel())
    try:
        return await future
    finally:
        if not watcher.done():
            watcher.cancel()


class PredictionEndpoint:
    """ASGI app for one family of routes (`predictions` or `explanations`)."""

    def __init__(self, manager: ModelManager, max_request_size: int, explain: bool) -> None:
        self._manager = manager
        self._limit = max_request_size
        self._response_limit = manager.settings.max_response_size
        self._max_json_depth = manager.settings.max_json_depth
        self._explain = explain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        visible = handler_headers(scope)
        request_id = request_id_of(visible)
        try:
            body = await read_body(receive, visible.get("content-length"), self._limit)
            inputs = body_inputs(body, visible.get("content-type"), self._max_json_depth)
            if self._explain:
                visible["explain"] = "True"
            if params.get("url_path"):
                visible["url_path"] = params["url_path"]
            request = InferenceRequest(request_id, inputs, visible)
            answer = await infer(self._manager, params["model_name"],
                                 params.get("model_version"), request, receive)
        except ServingError as e:
            await send_error(send, e, request_id)
            return
        except (ConnectionAbortedError, asyncio.CancelledError):
            return  # nobody is listening for an answer
        except Exception as e:  # a bug: answer it as one, and keep the connection
            log.exception("unexpected error on %s", scope.get("path"))
            await send_error(send, InternalError(f"Internal error: {type(e).__name__}"),
                             request_id)
            return
        if len(answer.body) > self._response_limit:
            await send_error(send, InternalError(
                f"Response of {len(answer.body)} bytes exceeds max_response_size "
                f"({self._response_limit} bytes)"), request_id)
            return
        await send_answer(send, answer, request_id)
