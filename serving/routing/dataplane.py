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
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable
from typing import Any

from serving.errors import (
    BadRequest,
    ClientCancelled,
    InternalError,
    PayloadTooLarge,
    ServiceUnavailable,
    ServingError,
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

    def check_answer_size(self, answer: InferenceResponse) -> None:
        """500 for an answer larger than `max_response_size`, for a front end that takes
        answers from `submit`'s job itself."""
        if len(answer.body) > self.max_response_size:
            raise _too_large(answer, self.max_response_size)

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
            error = ServiceUnavailable("Server is shutting down")
            with contextlib.suppress(ServingError):  # counted for the model, if it is one
                self._registry.get(model, version).scheduler.refused(error)
            raise error
        mv = self._registry.get(model, version)
        if not mv.pool.accepting:
            detail = f" ({mv.pool.last_error})" if mv.pool.last_error else ""
            raise mv.scheduler.refused(ServiceUnavailable(
                f"No worker is available to serve model: {model}{detail}"))
        try:
            deadline = queue_timeout(mv.settings.client_timeout_ms, timeout_ms)
        except BadRequest as e:
            raise mv.scheduler.refused(e) from None
        return mv.scheduler.submit(request, deadline)

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
                    raise _cancelled() from None
                raise
            finally:
                if not watcher.done():
                    watcher.cancel()
        if len(answer.body) > self.max_response_size:
            raise _too_large(answer, self.max_response_size)
        return answer

    def stream(self, model: str, version: str | None, request: InferenceRequest, *,
               explain: bool = False, timeout_ms: int | None = None,
               disconnected: Awaitable[object] | None = None) -> ResponseStream:
        """The handler's intermediate answers as they come (`final` False), then its final
        one (`final` True), after which the iteration ends.

        Same arguments as `infer`; its errors are raised by the iteration (an error after
        intermediate answers ends the stream with it). `aclose()` before the end means the
        client went away: the work is withdrawn (or, if it runs, what it still sends is
        dropped); so does cancelling the task that iterates.
        """
        try:
            job = self.submit(model, version, request, explain=explain, timeout_ms=timeout_ms)
        except ServingError as e:
            if inspect.iscoroutine(disconnected):
                disconnected.close()
            return ResponseStream(None, e, None, self.max_response_size)
        return ResponseStream(job, None, disconnected, self.max_response_size)

    # -- state ------------------------------------------------------------------------
    def server_live(self) -> bool:
        """The server process answers (it does, if this runs)."""
        return True

    def server_ready(self) -> bool:
        """Not shutting down, the start-up models loaded, and every model has at least its
        minimum of workers READY."""
        return self._manager.accepting and self._manager.healthy()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The readiness verdict with its reason, as REST's /ping gives it: 200, or 503 with
        Draining / Loading / the models short of workers."""
        return self._manager.readiness()

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


def _cancelled() -> ClientCancelled:
    return ClientCancelled("The client went away before its answer; the request was "
                           "withdrawn")


def _too_large(answer: InferenceResponse, limit: int) -> InternalError:
    return InternalError(f"Response of {len(answer.body)} bytes exceeds max_response_size "
                         f"({limit} bytes)")


class ResponseStream:
    """The answers of one request as they come: an async iterator (and async context manager
    that closes it). Made by `DataPlane.stream`."""

    __slots__ = ("_error", "_items", "_job", "_left", "_limit", "_over", "_signal", "_watcher")

    def __init__(self, job: Job | None, error: BaseException | None,
                 disconnected: Awaitable[object] | None, limit: int) -> None:
        self._job = job
        self._error = error  # raised by the first step: the request was refused
        self._limit = limit
        self._items: deque[InferenceResponse] = deque()
        self._signal: asyncio.Future[None] | None = None
        self._over = False
        self._left = False  # the front end said the client went away (client_gone)
        self._watcher: asyncio.Future[object] | None = None
        if job is not None:
            job.listener = self._push
            if disconnected is not None:
                watcher = asyncio.ensure_future(disconnected)
                watcher.add_done_callback(self._gone)
                self._watcher = watcher

    def _push(self, answer: InferenceResponse | None) -> None:
        """The job's listener: an intermediate answer, or None when the final one is set."""
        if answer is not None:
            self._items.append(answer)
        signal = self._signal
        if signal is not None and not signal.done():
            signal.set_result(None)

    def _gone(self, watcher: asyncio.Future[object]) -> None:
        if not watcher.cancelled():
            self.client_gone()

    def client_gone(self) -> None:
        """The client went away: the same as `disconnected` completing, for a front end
        that learns it another way. The work is withdrawn (or its answer dropped) and the
        iteration raises ClientCancelled."""
        if self._job is None or self._over:
            return
        self._left = True
        self._job.cancel()
        self._push(None)

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> InferenceResponse:
        if self._over:
            raise StopAsyncIteration
        job = self._job
        if job is None:
            self._over = True
            assert self._error is not None
            raise self._error
        future = job.future
        items = self._items
        if self._client_gone():  # while the caller was busy with the previous answer
            self._finish()
            raise _cancelled()
        try:
            while not items and not future.done():
                # (the future's own loop: get_running_loop() is a getpid() syscall on 3.11)
                self._signal = future.get_loop().create_future()
                await self._signal
        except asyncio.CancelledError:
            self._finish()  # the task iterating was cancelled: the client is gone
            raise
        if items:
            answer = items.popleft()
        else:
            self._finish()
            if future.cancelled():  # withdrawn: the client went away
                raise _cancelled()
            answer = future.result()  # the final answer, or its error raised
        if len(answer.body) > self._limit:
            self._finish()
            raise _too_large(answer, self._limit)
        return answer

    def _client_gone(self) -> bool:
        if self._left:
            return True
        watcher = self._watcher
        return watcher is not None and watcher.done() and not watcher.cancelled()

    def _finish(self) -> None:
        """Over: withdraw the work if it is not done, stop watching the client."""
        self._over = True
        self._items.clear()
        job = self._job
        if job is not None:
            job.listener = None
            if not job.future.done():
                job.cancel()
        watcher = self._watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()

    def close(self) -> None:
        """Stop: the client went away or the front end gave up on the answers."""
        if not self._over:
            self._finish()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
