"""The data plane: the one API every front end (REST, KServe v1, TorchServe gRPC, OIP) calls.

A front end turns its wire format into an `InferenceRequest`, calls `infer` (or `stream`), and
turns the answer, or the `ServingError` raised, back into its wire format with one table from
error codes to its statuses (`http_status`, `grpc_status_name` in serving/errors.py). The
inference semantics live here, once: request ids, size and JSON-depth limits, the explanation
flag, version resolution, queue deadlines, cancellation when the client goes away, and the
response size limit. Nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable

from serving.errors import (
    BadRequest,
    ClientCancelled,
    InternalError,
    PayloadTooLarge,
    ServiceUnavailable,
)
from serving.jsondepth import check_json_depth
from serving.routing.batcher import Job
from serving.routing.manager import ModelManager
from serving.routing.registry import ModelVersion
from serving.routing.requestids import normalise_request_id
from serving.types import InferenceRequest, InferenceResponse

# The request header through which a handler sees that it is asked for an explanation
# (TorchServe's `/explanations` sets it; `BaseHandler.handle` reads it).
EXPLAIN_HEADER = "explain"


class DataPlane:
    """Inference on the registered models, for any front end."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self._registry = manager.registry
        settings = manager.settings
        self.max_request_size = settings.max_request_size
        self.max_response_size = settings.max_response_size
        self.max_json_depth = settings.max_json_depth

    # -- requests ---------------------------------------------------------------------
    @staticmethod
    def request_id(given: str | None) -> str:
        """The id a request goes by: the client's if it is a sane one (1-200 characters from
        `!` to `~`), else a fresh one. Echo it back; the handler sees the same."""
        return normalise_request_id(given)

    def check_request_size(self, n_bytes: int, setting: str = "max_request_size") -> None:
        """413 for a request body (or a gRPC message) larger than `max_request_size`; a front
        end that reads bodies itself calls this as soon as it knows the size."""
        if n_bytes > self.max_request_size:
            raise PayloadTooLarge(f"Request body of {n_bytes} bytes exceeds {setting} "
                                  f"({self.max_request_size} bytes)")

    def submit(self, model: str, version: str | None, request: InferenceRequest, *,
               explain: bool = False, timeout_ms: int | None = None) -> Job:
        """Queue a request and return its job at once; raises ServingError instead of
        waiting (400, 404, 413, 503 queue full or no worker). Most callers want `infer`."""
        inputs = request.inputs
        # One input is the common case: no generator for it.
        size = len(inputs[0].value) if len(inputs) == 1 else sum(len(i.value) for i in inputs)
        if size > self.max_request_size:
            raise PayloadTooLarge(f"Request of {size} bytes exceeds max_request_size "
                                  f"({self.max_request_size} bytes)")
        for item in inputs:
            # The worker parses JSON inputs: nothing nested past its stack reaches it.
            if item.content_type == "application/json":
                check_json_depth(item.value, self.max_json_depth)
        if explain:
            request.headers[EXPLAIN_HEADER] = "True"
        manager = self._manager
        if not manager.accepting:
            raise ServiceUnavailable("Server is shutting down")
        mv = self._registry.get(model, version)
        if not mv.pool.accepting:
            detail = f" ({mv.pool.last_error})" if mv.pool.last_error else ""
            raise ServiceUnavailable(f"No worker is available to serve model: {model}{detail}")
        return mv.scheduler.submit(request, queue_timeout(mv.settings.client_timeout_ms,
                                                          timeout_ms))

    async def infer(self, model: str, version: str | None, request: InferenceRequest, *,
                    explain: bool = False, timeout_ms: int | None = None,
                    disconnected: Awaitable[object] | None = None) -> InferenceResponse:
        """Run one request and return its answer (the final one, for a streaming handler).

        `version` None: the model's default version. `timeout_ms`: how long the request may
        wait for a worker (capped by the model's `clientTimeoutInMills`); past it, 504 and it
        never runs. `disconnected`: completes when the client goes away; the work is then
        withdrawn (or its answer dropped if it runs) and ClientCancelled (499) is raised.
        Cancelling the calling task withdraws the work the same way.

        Raises ServingError: 400 bad input, 404 unknown model or version, 413 too large, 503
        queue full / no worker / shutting down, 504 queue deadline or response_timeout, 502
        worker died, 500 response larger than max_response_size, a handler's own code.
        """
        try:
            job = self.submit(model, version, request, explain=explain, timeout_ms=timeout_ms)
        except BaseException:
            if inspect.iscoroutine(disconnected):
                disconnected.close()  # never awaited: say so to nobody
            raise
        future = job.future
        if disconnected is None:
            try:
                answer = await future
            except asyncio.CancelledError:
                job.cancel()  # our caller was cancelled: the client is gone
                raise
        else:
            watcher = asyncio.ensure_future(disconnected)
            watcher.add_done_callback(lambda w: None if w.cancelled() else job.cancel())
            try:
                answer = await future
            except asyncio.CancelledError:
                job.cancel()
                if watcher.done() and not watcher.cancelled():
                    raise ClientCancelled("The client went away before its answer; the "
                                          "request was withdrawn") from None
                raise
            finally:
                if not watcher.done():
                    watcher.cancel()
        if len(answer.body) > self.max_response_size:
            raise InternalError(f"Response of {len(answer.body)} bytes exceeds "
                                f"max_response_size ({self.max_response_size} bytes)")
        return answer

    async def stream(self, model: str, version: str | None, request: InferenceRequest, *,
                     explain: bool = False, timeout_ms: int | None = None,
                     disconnected: Awaitable[object] | None = None
                     ) -> AsyncIterator[InferenceResponse]:
        """The handler's intermediate answers as they come, then its final one.

        Same arguments and errors as `infer` (raised from the iteration). Closing the
        iterator before its end (`aclose()`, or leaving an `async for` by an exception)
        means the client went away: the work is withdrawn and what it still sends dropped.
        """
        answer = await self.infer(model, version, request, explain=explain,
                                  timeout_ms=timeout_ms, disconnected=disconnected)
        yield answer

    # -- state ------------------------------------------------------------------------
    def server_live(self) -> bool:
        """The server process answers (it does, if this runs)."""
        return True

    def server_ready(self) -> bool:
        """Not shutting down, and every model has at least its minimum of workers (TorchServe's
        /ping rule)."""
        return self._manager.accepting and self._manager.healthy()

    @property
    def draining(self) -> bool:
        """Shutdown has started: new requests are refused (503)."""
        return not self._manager.accepting

    def model_ready(self, model: str, version: str | None) -> bool:
        """Whether a request to the model (version) would find a worker now; ModelNotFound or
        ModelVersionNotFound (404) for one that is not registered."""
        mv = self._registry.get(model, version)
        return self._manager.accepting and mv.pool.accepting and mv.pool.ready_count > 0

    def model_info(self, model: str, version: str | None) -> ModelVersion:
        """The registered version (the default one for None): name, version, settings, the
        archive's model-config.yaml (`model_yaml`); 404 errors as `infer`."""
        return self._registry.get(model, version)

    def model_versions(self, model: str) -> list[ModelVersion]:
        """Every registered version of a model, lowest first; ModelNotFound if none."""
        return self._registry.versions(model)

    def default_version(self, model: str) -> str:
        self._registry.get(model, None)
        return self._registry.default_version(model)

    def models(self) -> list[str]:
        """The registered model names, sorted."""
        return self._registry.names()


def queue_timeout(client_timeout_ms: int | None, timeout_ms: int | None) -> float | None:
    """Seconds a request may wait in the queue: the model's `clientTimeoutInMills` (0: no
    bound, as in TorchServe), lowered by the request's own bound (`timeout_ms`)."""
    if timeout_ms is not None:
        if timeout_ms < 1:
            raise BadRequest(f"request timeout: expected a whole number of milliseconds of "
                             f"at least 1, got {timeout_ms}")
        if client_timeout_ms:
            return min(client_timeout_ms, timeout_ms) / 1000
        return timeout_ms / 1000
    return client_timeout_ms / 1000 if client_timeout_ms else None
